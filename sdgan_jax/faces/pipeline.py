"""From a photo to prepared faces: detect, fit landmarks, check, align, mask (docs/data.md).

One preparation path for the data preparation and the anonymizer (``prepare_detected``):
take a detected face's 68 landmarks from its face mesh (``faces.mesh``, any pose; the
default) or fit them with dlib's shape predictor (turned upright first when the detector
gave keypoints, ``faces.upright``), check that they belong to its box, align the crop, draw its
face mask
and semantic map (``prepare_face``) and check that the mask covers the box's centre. A step
that fails is recorded on the face (``Face.reason``), never raised, so that a caller can
fail closed on it (the anonymizer covers such faces) or skip it.

``Face`` is the one record of a face, from its detection to the anonymizer's report row
(``Face.to_json``); its prepared part is the record format of ``sdgan_jax.datasets.features``
(``Face.record``). ``prepare_faces`` prepares every face a detector finds in a photo.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sdgan_jax.faces import align, detect, masks, upright
from sdgan_jax.faces import landmarks as scheme
from sdgan_jax.faces import mesh as face_mesh

# Below about this box size dlib's 68 landmarks get unreliable (its HOG model sees faces of
# ~80 px) and a 128-px crop would be an upsampling of 1.5x or more.
DEFAULT_MIN_FACE_PX = 40


@dataclasses.dataclass(eq=False)
class Face:
  """One face of a photo: its detection, its preparation and what became of it.

  Preparation (``datasets.features``' record format; None until prepared):
    crop: uint8 [R, R, 3] eye-aligned RGB crop (the record's ``image``).
    mask: uint8 [R, R, 1] face mask, 0 or 255 (the record's ``mask``).
    semantic: uint8 [R, R, 1] class ids of ``masks.SEMANTIC_CLASSES``.
    landmarks: float32 [68, 2] (x, y) in crop pixels.
    matrix: float64 [2, 3] image -> crop similarity (for ``paste_back``).

  Detection:
    box: [4] detector box (x0, y0, x1, y1) in image pixels, dlib's convention.
    score: detector score (see ``detect.Detections``).
    too_small: the box's shorter side is under ``min_face_px``.
    keypoints: the detector's six keypoints [6, 2] (BlazeFace), or None.
    detectors: the detectors that found the face (an ensemble's merge).
    presence: the face mesh's presence score (None: not judged, ``faces.verify``).
    decided_by: who kept the face (``faces.verify.DECIDERS``: 'mesh', 'agreement' of the
      detectors, 'unjudged' for a box too small to judge), or None without a second stage.
    mesh: its ``faces.mesh.MeshFit``, or None.
    index: detection order in its image.
    image_landmarks: float32 [68, 2] in image pixels (dlib's face chip is cut from them).

  Outcome:
    reason, detail: the first step that failed and why (None: every step passed).
    output: float [R, R, 3] in [0, 1]: the anonymizer's generated (or baseline) crop.
    identity_distance: descriptor distance of the output face to the source face.
    target: the identity bank index the face was generated towards.
    track: the video track of the face.
    region: the face region a fallback covers (x0, y0, x1, y1, rounded to 0.1 px).
    cover: the fallback applied ('pixelate8', 'fill'...), None for anonymized faces.
  """

  crop: np.ndarray | None = None
  mask: np.ndarray | None = None
  semantic: np.ndarray | None = None
  landmarks: np.ndarray | None = None
  matrix: np.ndarray | None = None
  box: np.ndarray | None = None
  score: float | None = None
  too_small: bool = False
  keypoints: np.ndarray | None = None
  detectors: tuple[str, ...] = ()
  presence: float | None = None
  decided_by: str | None = None
  mesh: face_mesh.MeshFit | None = None
  index: int = 0
  image_landmarks: np.ndarray | None = None
  reason: str | None = None
  detail: str | None = None
  output: np.ndarray | None = None
  identity_distance: float | None = None
  target: int | None = None
  track: int | None = None
  region: list[float] | None = None
  cover: str | None = None

  @property
  def status(self) -> str:
    """The anonymizer's verdict: 'anonymized', or 'fallback' once a step failed."""
    return 'anonymized' if self.reason is None else 'fallback'

  @property
  def size(self) -> float:
    """The box's shorter side in pixels (dlib's inclusive convention)."""
    box = self.box  # in the box's dtype (float32): a face at a size limit stays on its side
    return float(min(box[2] - box[0], box[3] - box[1]) + 1)

  def fail(self, reason: str, detail: str | None = None) -> None:
    """Records a failed step; the first one is the face's reason."""
    if self.reason is None:
      self.reason, self.detail = reason, detail

  def record(self) -> dict[str, np.ndarray]:
    """The image/mask/semantic/landmarks part of a ``datasets.builder.tfds_features`` example."""
    return {
      'image': self.crop,
      'mask': self.mask,
      'semantic': self.semantic,
      'landmarks': self.landmarks,
    }

  def release_pixels(self) -> None:
    """Drops the crop-sized arrays once the face is done: a video's faces stay small."""
    self.crop = self.mask = self.semantic = self.output = None

  def to_json(self) -> dict:
    """The face's row of the anonymizer's report (fields that are None left out)."""
    row = {
      'box': [float(v) for v in self.box],
      'status': self.status,
      'reason': self.reason,
      'detail': self.detail,
      'score': None if self.score is None else round(self.score, 4),
      'presence': None if self.presence is None else round(self.presence, 4),
      'decided_by': self.decided_by,
      'identity_distance': self.identity_distance,
      'target': self.target,
      'track': self.track,
      'detectors': list(self.detectors) or None,
      'region': self.region,
      'cover': self.cover,
    }
    return {k: v for k, v in row.items() if v is not None}


def prepare_face(image, landmarks, resolution: int = align.DEFAULT_RESOLUTION):
  """Aligned crop, mask (0/255), semantic map and crop landmarks for one face's landmarks.

  Returns:
    (AlignedFace, mask uint8 [R, R, 1], semantic uint8 [R, R, 1]).
  """
  aligned = align.align_face(image, landmarks, resolution)
  mask = masks.face_mask(aligned.landmarks, resolution)
  semantic = masks.semantic_map(aligned.landmarks, resolution, mask)
  return aligned, mask * np.uint8(255), semantic[..., None]


def detected_faces(found: detect.Detections) -> list[Face]:
  """A ``Face`` per detection of one image, in detection order."""

  def presence(k):
    p = None if found.presence is None else float(found.presence[k])
    return p if p is not None and np.isfinite(p) else None

  return [
    Face(
      box=np.asarray(box, np.float32),
      score=float(found.scores[k]),
      keypoints=None if found.keypoints is None else found.keypoints[k],
      detectors=tuple(found.sources[k]) if found.sources else (),
      index=k,
      presence=presence(k),
      decided_by=None if found.decided_by is None else found.decided_by[k],
      mesh=None if found.meshes is None else found.meshes[k],
    )
    for k, box in enumerate(found.boxes)
  ]


def fit_landmarks(image: np.ndarray, face: Face, predictor) -> np.ndarray:
  """[68, 2] landmarks of ``face`` in image pixels.

  ``predictor`` is a ``faces.mesh.FaceMesh`` (the points come from the face's mesh, fitted
  now unless the second stage already did; raises when the mesh sees no face there) or
  dlib's ``detect.LandmarkPredictor`` (``upright.fit_landmarks``).
  """
  if not isinstance(predictor, face_mesh.FaceMesh):
    return upright.fit_landmarks(predictor, image, face.box, face.keypoints)
  if face.mesh is None:
    face.mesh = predictor(image, [(face.box, face.keypoints)])[0]
  if not face.mesh.presence >= face_mesh.PRESENCE_THRESHOLD:
    raise ValueError(
      f'the face mesh sees no face in the box (presence '
      f'{face.mesh.presence:.2f} < {face_mesh.PRESENCE_THRESHOLD:g})'
    )
  return scheme.from_mesh(face.mesh.points)


def face_region(face: Face) -> np.ndarray:
  """(x0, y0, x1, y1), inclusive: what the fallback covers of ``face``: its mesh's face
  oval with the hair above it (``faces.mesh.face_region``) where the mesh is sure of the
  face, else its box grown to the face box that its keypoints place
  (``faces.upright.face_region``)."""
  if face.mesh is not None and face.mesh.presence >= face_mesh.PRESENCE_THRESHOLD:
    return face_mesh.face_region(face.mesh.points)
  return upright.face_region(face.box, face.keypoints)


def check_landmarks(landmarks: np.ndarray, box) -> None:
  """Raises unless the 68 points plausibly belong to the face in ``box``."""
  points = np.asarray(landmarks, np.float64)
  if points.shape != (68, 2) or not np.all(np.isfinite(points)):
    raise ValueError('the shape predictor did not return 68 finite points')
  x0, y0, x1, y1 = (float(v) for v in box)
  w, h = x1 - x0 + 1, y1 - y0 + 1
  near = (
    (points[:, 0] >= x0 - 0.5 * w)
    & (points[:, 0] <= x1 + 0.5 * w)
    & (points[:, 1] >= y0 - 0.5 * h)
    & (points[:, 1] <= y1 + 0.5 * h)
  )
  if near.mean() < 0.9:
    raise ValueError(f'{(~near).sum()} of 68 landmarks lie far outside the face box')
  eyes = np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0))
  if not 0.15 * w <= eyes <= 1.0 * w:
    raise ValueError(f'eye distance {eyes:.1f} px is implausible for a {w:.0f}-px box')


def mask_coverage(mask: np.ndarray, matrix: np.ndarray, box) -> float:
  """Share of a grid over the central half of ``box`` that falls inside the crop's mask."""
  x0, y0, x1, y1 = (float(v) for v in box)
  cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0 + 1, y1 - y0 + 1
  gx, gy = np.meshgrid(
    np.linspace(cx - w / 4, cx + w / 4, 9), np.linspace(cy - h / 4, cy + h / 4, 9)
  )
  crop_xy = align.apply_matrix(matrix, np.stack([gx.ravel(), gy.ravel()], axis=1))
  r = mask.shape[0]
  cols = np.round(crop_xy[:, 0]).astype(int)
  rows = np.round(crop_xy[:, 1]).astype(int)
  valid = (cols >= 0) & (cols < r) & (rows >= 0) & (rows < r)
  hit = np.zeros(len(cols), bool)
  hit[valid] = mask.reshape(r, r)[rows[valid], cols[valid]] > 0
  return float(hit.mean())


def prepare_detected(
  image: np.ndarray,
  face: Face,
  predictor,
  resolution: int = align.DEFAULT_RESOLUTION,
  *,
  min_face_px: float = DEFAULT_MIN_FACE_PX,
  min_mask_coverage: float = 0.0,
  prepare_too_small: bool = False,
  check: bool = True,
) -> Face:
  """Prepares one detected face in place (module doc) and returns it.

  ``predictor``: a ``faces.mesh.FaceMesh`` or dlib's ``detect.LandmarkPredictor``
  (``fit_landmarks``).

  Reasons recorded: ``too_small`` (the box is under ``min_face_px``; such a face is only
  prepared with ``prepare_too_small``), ``landmarks_failed`` (implausible points, or no
  alignment) and ``mask_misses_face`` (the mask covers less than ``min_mask_coverage`` of
  the box's central half). ``check=False`` leaves out the landmark plausibility check
  (``check_landmarks``), as the training-data preparation does.
  """
  face.too_small = bool(face.size < min_face_px)
  if face.too_small:
    face.fail('too_small', f'{face.size:.0f} px < min_face_px {min_face_px:g}')
    if not prepare_too_small:
      return face
  try:
    landmarks = fit_landmarks(image, face, predictor)
    if check:
      check_landmarks(landmarks, face.box)
    aligned, mask, semantic = prepare_face(image, landmarks, resolution)
  except Exception as e:  # pylint: disable=broad-except
    face.fail('landmarks_failed', f'{type(e).__name__}: {e}')
    return face
  face.image_landmarks, face.matrix = landmarks, aligned.matrix
  face.crop, face.mask, face.semantic, face.landmarks = (
    aligned.crop,
    mask,
    semantic,
    aligned.landmarks,
  )
  if min_mask_coverage > 0:
    coverage = mask_coverage(mask, aligned.matrix, face.box)
    if coverage < min_mask_coverage:
      face.fail('mask_misses_face', f'the mask covers {coverage:.0%} of the box centre')
  return face


def prepare_faces(
  image,
  resolution: int = align.DEFAULT_RESOLUTION,
  detector: detect.FaceDetector | None = None,
  predictor=None,
  min_face_px: float = DEFAULT_MIN_FACE_PX,
) -> list[Face]:
  """Detects every face in a uint8 RGB ``image`` [H, W, 3] and prepares it (best score first).

  Args:
    image: uint8 RGB [H, W, 3] (convert grayscale/RGBA first, see ``detect``).
    resolution: crop size R (128 for training data, docs/data.md).
    detector: defaults to ``FaceDetector('hog', upsample=1)``.
    predictor: the face mesh (``faces.mesh.FaceMesh.load()``, the default) or dlib's
      ``LandmarkPredictor()``.
    min_face_px: faces whose box is smaller get ``too_small=True`` (and are prepared all
      the same, for the caller to decide); a face that cannot be prepared keeps its reason.
  """
  image = detect.check_image(image)
  detector = detector or detect.FaceDetector('hog', upsample=1)
  predictor = predictor or face_mesh.FaceMesh.load()
  return [
    prepare_detected(
      image, face, predictor, resolution, min_face_px=min_face_px, prepare_too_small=True
    )
    for face in detected_faces(detector(image))
  ]
