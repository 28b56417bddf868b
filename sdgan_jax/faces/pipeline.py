"""From a photo to prepared face records (DESIGN §3): detect, landmark, align, mask, parse.

``prepare_faces`` returns, per detected face, exactly what the data preparation stores for
one example (``sdgan_jax.datasets.features``: image as ``crop``, mask, semantic, landmarks)
plus what the anonymizer needs to put a generated face back (``matrix``, ``box``) and to
decide whether it can (``too_small``: such faces are returned, flagged, never dropped, so a
caller can fail closed on them, e.g. blur them instead).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sdgan_jax.datasets import features
from sdgan_jax.faces import align, detect, masks

# Below about this box size dlib's 68 landmarks get unreliable (its HOG model sees faces of
# ~80 px) and a 128-px crop would be an upsampling of 1.5x or more.
DEFAULT_MIN_FACE_PX = 40


@dataclasses.dataclass(frozen=True)
class PreparedFace:
  """One face of a photo, in the record format of ``sdgan_jax.datasets.features``.

  Attributes:
    crop: uint8 [R, R, 3] eye-aligned RGB crop (the record's ``image``).
    mask: uint8 [R, R, 1] face mask, 0 or 255 (the record's ``mask``).
    semantic: uint8 [R, R, 1] class ids of ``features.SEMANTIC_CLASSES``.
    landmarks: float32 [68, 2] (x, y) in crop pixels.
    matrix: float64 [2, 3] image -> crop similarity (for ``paste_back``).
    box: float32 [4] detector box (x0, y0, x1, y1) in image pixels, dlib's convention.
    score: detector score (see ``detect.Detections``).
    too_small: the box's shorter side is under ``min_face_px``.
  """

  crop: np.ndarray
  mask: np.ndarray
  semantic: np.ndarray
  landmarks: np.ndarray
  matrix: np.ndarray
  box: np.ndarray
  score: float
  too_small: bool

  def record(self) -> dict[str, np.ndarray]:
    """The image/mask/semantic/landmarks part of a ``features.tfds_features`` example."""
    return {'image': self.crop, 'mask': self.mask, 'semantic': self.semantic,
            'landmarks': self.landmarks}


def prepare_face(image, landmarks, resolution: int = features.DEFAULT_RESOLUTION):
  """Aligned crop, mask (0/255), semantic map and crop landmarks for one face's landmarks.

  Returns:
    (AlignedFace, mask uint8 [R, R, 1], semantic uint8 [R, R, 1]).
  """
  aligned = align.align_face(image, landmarks, resolution)
  mask = masks.face_mask(aligned.landmarks, resolution)
  semantic = masks.semantic_map(aligned.landmarks, resolution, mask)
  return aligned, mask * np.uint8(255), semantic[..., None]


def prepare_faces(image, resolution: int = features.DEFAULT_RESOLUTION,
                  detector: detect.FaceDetector | None = None,
                  predictor: detect.LandmarkPredictor | None = None,
                  min_face_px: float = DEFAULT_MIN_FACE_PX) -> list[PreparedFace]:
  """Detects every face in a uint8 RGB ``image`` [H, W, 3] and prepares it (best score first).

  Args:
    image: uint8 RGB [H, W, 3] (convert grayscale/RGBA first, see ``detect``).
    resolution: crop size R (128 for training data, DESIGN §3).
    detector: defaults to ``FaceDetector('hog', upsample=1)``.
    predictor: defaults to ``LandmarkPredictor()``.
    min_face_px: faces whose box is smaller get ``too_small=True``.
  """
  image = detect.check_image(image)
  detector = detector or detect.FaceDetector('hog', upsample=1)
  predictor = predictor or detect.LandmarkPredictor()
  found = detector(image)
  faces = []
  for box, score in zip(found.boxes, found.scores):
    landmarks = predictor(image, box)
    aligned, mask, semantic = prepare_face(image, landmarks, resolution)
    size = min(box[2] - box[0], box[3] - box[1]) + 1
    faces.append(PreparedFace(
        crop=aligned.crop, mask=mask, semantic=semantic, landmarks=aligned.landmarks,
        matrix=aligned.matrix, box=np.asarray(box, np.float32), score=float(score),
        too_small=bool(size < min_face_px)))
  return faces
