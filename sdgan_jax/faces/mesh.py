"""MediaPipe's 468-point face mesh fitted to face candidates in a photo.

The network (``sdgan_jax.models.face_mesh``, weights ``'face_mesh'``) sees one face at a
time, upright in a 192x192 crop. For each candidate -- a box and, from BlazeFace, its six
keypoints -- the crop is the region of interest MediaPipe builds from a face detection
(``docs/detection.md``, "Face mesh"):

1. the roll: the crop is turned so that the line from the right eye keypoint to the left
   eye keypoint is horizontal (no turn without keypoints);
2. the square: centred on the box's centre, side 1.5 times the box's longer side (the box
   as the detector gave it, axis-aligned in the photo). MediaPipe's own rule, kept because
   the network was trained behind BlazeFace's boxes, which reach the forehead: a box placed
   lower (dlib's landmarks' box, brows to chin) cost accuracy on the sample faces;
3. the square, turned upright, is resampled to 192x192 (bilinear, Gaussian prefilter when
   shrinking, edge pixels repeated beyond the photo), scaled to [0, 1] and run through the
   network; all candidates of a call go in fixed-size batches (one compiled program, the
   last batch padded);
4. the 468 points are mapped back into the photo; z is scaled like x and y (photo pixels,
   relative to the face, smaller nearer the camera).

API::

  mesh = FaceMesh.load()                      # or FaceMesh(variables)
  fits = mesh(image, candidates)              # -> list[MeshFit], one per candidate
  fits = mesh(image, detections)              # a detect.Detections (boxes + keypoints)
  fits[0].points, fits[0].presence, fits[0].roll, fits[0].matrix, fits[0].box()

``fit_many(..., crop='keypoints')`` places the square from BlazeFace's keypoints instead of
the box (``keypoint_roi``), for a box much larger than its face (``faces.verify``).

``candidates``: a ``detect.Detections``, or a sequence of ``Candidate`` / ``(box,
keypoints)`` pairs / boxes. Boxes are (x0, y0, x1, y1) in photo pixels, inclusive (dlib's
convention, as ``detect.Detections``); keypoints are BlazeFace's [6, 2] (right eye, left
eye, nose tip, mouth centre, right ear, left ear; ``faces.blazeface_detector``) or None.

Landmark indices (``FACE_OVAL``, ``RIGHT_EYE``, ...) follow the mesh's fixed topology. As
in MediaPipe and BlazeFace, "right" and "left" are the *subject's*: ``RIGHT_EYE`` is on the
image left of a frontal face (the 68-point scheme's ``landmarks.LEFT_EYE``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from sdgan_jax import batching
from sdgan_jax.faces import align, blazeface_detector, detect, upright

NAME = 'face_mesh'
NUM_POINTS = 468
INPUT_SIZE = 192
ROI_SCALE = 1.5  # side of the square region: ROI_SCALE x the box's longer side
PRESENCE_THRESHOLD = 0.5  # MediaPipe's: a face is there when the score reaches it

# Contours, each in order around its closed curve (indices into the 468 points).
# The face's outline: from the top of the forehead down the subject's left side (image
# right of a frontal face), round the chin (152) and up the right side.
FACE_OVAL = np.array(
  [
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
  ]
)
# Eyes: outer corner, the lower lid to the inner corner, back along the upper lid.
RIGHT_EYE = np.array([33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246])
LEFT_EYE = np.array(
  [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
)
# Brows: the lower edge from the outer to the inner end, back along the upper edge.
RIGHT_BROW = np.array([46, 53, 52, 65, 55, 107, 66, 105, 63, 70])
LEFT_BROW = np.array([276, 283, 282, 295, 285, 336, 296, 334, 293, 300])
# Lips: from the right mouth corner along the lower lip (middle: 17 outer, 14 inner) to
# the left corner, back along the upper lip (middle: 0 outer, 13 inner).
LIPS_OUTER = np.array(
  [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
)
LIPS_INNER = np.array(
  [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191]
)
# The nose's midline from between the eyes down to the tip and the base (subnasale, 2).
NOSE_MIDLINE = np.array([168, 6, 197, 195, 5, 4, 1, 19, 94, 2])
NOSE_TIP = 1
CHIN = 152
FOREHEAD = 10
# The fallback's cover above the face oval, for the hair: a share of the oval's height
# (forehead top to chin). The oval's top (10) sits at the hairline of a frontal face.
HAIR_MARGIN = 0.25
# The oval grown about its centre by this share: dlib's jaw line, which follows the visible
# outline, lies up to ~5% of the face width outside the mesh's oval on the sample faces.
OVAL_MARGIN = 0.12
# Outer eye corners: the points MediaPipe takes a tracked face's roll from.
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
# The region placed from a candidate's keypoints instead of its box (``keypoint_roi``), in
# eye-to-mouth distances: its centre this far below the eyes' midpoint, its side this long.
# Medians of the region of sure meshes (``points_roi``, presence 0.9 and more) relative to
# BlazeFace's keypoints over 125 faces of the photo set's tuning split and the recall set of
# seed 0 (quartiles 0.37-0.47 and 3.37-3.85; docs/detection.md, "A second crop from the
# keypoints").
KEYPOINT_DROP = 0.43
KEYPOINT_SIDE = 3.6


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A face to fit: ``box`` (x0, y0, x1, y1), inclusive, and optional BlazeFace
  ``keypoints`` [6, 2]."""

  box: np.ndarray
  keypoints: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class MeshFit:
  """The mesh fitted to one candidate.

  Attributes:
    points: float32 [468, 3]: x, y in photo pixels (pixel centres at integers), z in the
      same unit, relative to the face (smaller: nearer the camera).
    presence: the network's face-presence score, sigmoid of its logit; MediaPipe keeps a
      face at ``PRESENCE_THRESHOLD`` and above.
    roll: the region's turn in degrees, counter-clockwise as seen (``upright.roll_degrees``;
      0 without keypoints).
    matrix: float64 [2, 3], photo -> 192x192 network input (pixel centres), the region of
      interest; ``align.invert_matrix`` maps back.
  """

  points: np.ndarray
  presence: float
  roll: float
  matrix: np.ndarray

  def box(self) -> np.ndarray:
    """float32 (x0, y0, x1, y1): the tight axis-aligned box of the points, inclusive."""
    return points_box(self.points)

  def centre(self, indices) -> np.ndarray:
    """[2]: mean (x, y) of the points ``indices`` (e.g. ``RIGHT_EYE``)."""
    return self.points[np.asarray(indices), :2].mean(0)


def points_box(points) -> np.ndarray:
  """float32 (x0, y0, x1, y1) of the [N, 2+] points' x and y, inclusive (dlib's convention:
  a point at pixel centre 9.0 makes 9 the last column inside)."""
  xy = np.asarray(points, np.float64)[:, :2]
  return np.concatenate([xy.min(0), xy.max(0)]).astype(np.float32)


def face_region(points) -> np.ndarray:
  """float32 (x0, y0, x1, y1), inclusive: the box of the face oval (grown by
  ``OVAL_MARGIN``) and of the same oval shifted ``HAIR_MARGIN`` of its height towards the top
  of the head, turned with the face: what the fail-closed fallback covers
  (``anonymize.fallback``)."""
  xy = np.asarray(points, np.float64)[:, :2]
  oval = xy[FACE_OVAL]
  oval = oval + OVAL_MARGIN * (oval - oval.mean(0))
  up = xy[FOREHEAD] - xy[CHIN]
  return points_box(np.concatenate([oval, oval + HAIR_MARGIN * up]))


def roi_matrix(box, keypoints=None) -> tuple[np.ndarray, float]:
  """(matrix [2, 3] photo -> 192-px network input, roll in degrees) of one candidate: the
  square of ``ROI_SCALE`` times the box's longer side centred on the box, turned by the
  eyes' roll (module doc)."""
  x0, y0, x1, y1 = np.asarray(box, np.float64).reshape(4)
  side = ROI_SCALE * max(x1 - x0 + 1.0, y1 - y0 + 1.0, 1.0)
  centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
  roll = (
    upright.roll_degrees(np.asarray(keypoints, np.float64))
    if (upright.has_keypoints(keypoints))
    else 0.0
  )
  return _region(centre, side, roll), roll


def keypoint_roi(keypoints) -> tuple[np.ndarray, float]:
  """(matrix, roll) of the region placed from BlazeFace's ``keypoints`` [6, 2] alone: turned
  by the eyes' roll, centred ``KEYPOINT_DROP`` eye-to-mouth distances below the eyes'
  midpoint along the face's down, ``KEYPOINT_SIDE`` such distances wide. Unlike
  ``roi_matrix`` it does not grow with a loose box (an ensemble's box enclosing a larger
  detection of the same face), which leaves the face a third of the crop."""
  kp = np.asarray(keypoints, np.float64).reshape(blazeface_detector.NUM_KEYPOINTS, 2)
  eyes = (kp[blazeface_detector.RIGHT_EYE] + kp[blazeface_detector.LEFT_EYE]) / 2
  eye_to_mouth = float(np.linalg.norm(kp[blazeface_detector.MOUTH] - eyes))
  roll = upright.roll_degrees(kp)
  theta = math.radians(roll)
  down = np.array([math.sin(theta), math.cos(theta)])  # the face's down (y grows downwards)
  centre = eyes + KEYPOINT_DROP * eye_to_mouth * down
  return _region(centre, KEYPOINT_SIDE * max(eye_to_mouth, 1.0), roll), roll


def _region(centre, side: float, roll: float) -> np.ndarray:
  """[2, 3] photo -> network input: the square of ``side`` around ``centre``, turned by
  ``roll`` degrees (counter-clockwise as seen; turning by it undoes the face's turn)."""
  theta = math.radians(roll)
  c, s = math.cos(theta), math.sin(theta)
  linear = (INPUT_SIZE / max(side, 1.0)) * np.array([[c, -s], [s, c]])
  offset = np.full(2, INPUT_SIZE / 2 - 0.5) - linear @ np.asarray(centre, np.float64)
  return np.concatenate([linear, offset[:, None]], axis=1)


def points_roi(points) -> tuple[np.ndarray, float]:
  """(matrix, roll) of the region MediaPipe fits a face in again from its mesh: turned by
  the outer eye corners, the square of ``ROI_SCALE`` times the longer side of the points'
  box in that turned frame, centred on that box."""
  xy = np.asarray(points, np.float64)[:, :2]
  eyes = xy[LEFT_EYE_OUTER] - xy[RIGHT_EYE_OUTER]
  roll = math.degrees(math.atan2(-eyes[1], eyes[0]))
  theta = math.radians(roll)
  turn = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
  upright_xy = xy @ turn.T
  lo, hi = upright_xy.min(0), upright_xy.max(0)
  centre = turn.T @ ((lo + hi) / 2)
  return _region(centre, ROI_SCALE * float(np.max(hi - lo)), roll), roll


def _as_candidates(candidates: detect.Detections | Sequence) -> list[Candidate]:
  if isinstance(candidates, detect.Detections):
    kps = candidates.keypoints
    return [
      Candidate(np.asarray(b), None if kps is None else np.asarray(kps[i]))
      for i, b in enumerate(candidates.boxes)
    ]
  out = []
  for c in candidates:
    if isinstance(c, Candidate):
      out.append(c)
    elif isinstance(c, tuple) and len(c) == 2:
      out.append(Candidate(np.asarray(c[0]), None if c[1] is None else np.asarray(c[1])))
    else:
      out.append(Candidate(np.asarray(c)))
  for c in out:
    if c.box.shape != (4,) or not np.all(np.isfinite(c.box)):
      raise ValueError(f'a candidate box is (x0, y0, x1, y1), got {c.box!r}')
    if c.keypoints is not None and c.keypoints.shape != (blazeface_detector.NUM_KEYPOINTS, 2):
      raise ValueError(f"candidate keypoints are BlazeFace's [6, 2], got {c.keypoints.shape}")
  return out


@functools.cache
def _jitted_apply():
  from sdgan_jax.models import face_mesh  # pylint: disable=import-outside-toplevel
  from sdgan_jax.perf import xla_options  # pylint: disable=import-outside-toplevel

  model = face_mesh.FaceMeshNet()

  def apply(variables, crops):
    return model.apply(variables, crops.astype('float32') / 255.0)

  # The same layers as BlazeFace's networks, which ran faster without YNNPACK's fusions.
  return xla_options.jit_network(apply, cpu_options=xla_options.CPU_NO_YNNPACK)


class FaceMesh:
  """``FaceMesh(variables)(image, candidates) -> list[MeshFit]`` (module doc).

  Args:
    variables: the converted weights (``load`` reads them by name).
    batch_size: crops per network call, one compiled shape (default 8 on a CPU, 64 on
      accelerators).
    antialias: Gaussian prefilter before shrinking a region to 192 px (``align.warp_affine``);
      MediaPipe resamples without one. Off, the crop of a 240-px face took 3.5 ms instead of
      16 ms on a 2-core CPU (``docs/detection.md``).
  """

  def __init__(self, variables, batch_size: int | None = None, antialias: bool = True):
    import jax  # pylint: disable=import-outside-toplevel

    batch_size = batch_size or (8 if jax.default_backend() == 'cpu' else 64)
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.variables = variables
    self.batch_size = int(batch_size)
    self.antialias = bool(antialias)
    from sdgan_jax import cpu_export  # pylint: disable=import-outside-toplevel

    self._apply = cpu_export.network(NAME, 'detector', _jitted_apply())

  @classmethod
  def load(cls, weights_dir: str | os.PathLike | None = None, **kwargs) -> FaceMesh:
    """The mesh with the converted ``'face_mesh'`` weights (``make weights``)."""
    from sdgan_jax import weights  # pylint: disable=import-outside-toplevel

    return cls(weights.load_weights(NAME, weights_dir), **kwargs)

  def crops(
    self, image, candidates: detect.Detections | Sequence
  ) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """(uint8 [N, 192, 192, 3] network inputs, their matrices, rolls) of the candidates."""
    regions = [roi_matrix(c.box, c.keypoints) for c in _as_candidates(candidates)]
    return self._cut(image, regions)

  def _cut(self, image, regions) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """The network inputs of ``regions`` [(matrix, roll)] of one image."""
    image = detect.check_image(image)
    crops = [
      np.clip(
        np.round(
          align.warp_affine(
            image, m, (INPUT_SIZE, INPUT_SIZE), mode='edge', antialias=self.antialias
          )
        ),
        0,
        255,
      ).astype(np.uint8)
      for m, _ in regions
    ]
    stacked = np.stack(crops) if crops else np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    return stacked, [m for m, _ in regions], [r for _, r in regions]

  def raw(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's (landmarks [N, 468, 3] in input pixels, logits [N]) for uint8 crops,
    in batches of ``batch_size`` (the last one padded)."""
    b = self.batch_size
    points, logits = [np.zeros((0, NUM_POINTS, 3), np.float32)], [np.zeros(0, np.float32)]
    for lo in range(0, len(crops), b):
      chunk = crops[lo : lo + b]
      p, s = self._apply(self.variables, batching.pad_rows(chunk, b))
      points.append(np.asarray(p)[: len(chunk)])
      logits.append(np.asarray(s)[: len(chunk)])
    return np.concatenate(points), np.concatenate(logits)

  def __call__(self, image, candidates: detect.Detections | Sequence) -> list[MeshFit]:
    return self.fit_many([image], [candidates])[0]

  def fit_many(
    self,
    images: Sequence[np.ndarray],
    candidates: Sequence,
    map_fn: Callable = lambda fn, items: list(map(fn, items)),
    *,
    refine: bool = True,
    crop: str = 'box',
  ) -> list[list[MeshFit]]:
    """Fits per image of every image's ``candidates``, all crops of a pass in shared
    batches (cut per image through ``map_fn``, e.g. a thread pool's map).

    ``crop``: 'box', MediaPipe's region from the detection box (``roi_matrix``), or
    'keypoints', the region placed from BlazeFace's keypoints (``keypoint_roi``; a
    candidate without keypoints keeps its box's region).

    With ``refine``, a candidate that the mesh judged a face (presence at least
    ``PRESENCE_THRESHOLD``) is fitted a second time in the region its first mesh gives
    (``points_roi``), as MediaPipe tracks a face: a detection box twice the face leaves the
    face a third of the first crop, where the points come out loose. The second fit is kept
    where it still sees the face.
    """
    if len(images) != len(candidates):
      raise ValueError(f'{len(candidates)} candidate lists for {len(images)} images')
    if crop not in ('box', 'keypoints'):
      raise ValueError(f"crop is 'box' or 'keypoints', got {crop!r}")

    def region(c: Candidate):
      if crop == 'keypoints' and upright.has_keypoints(c.keypoints):
        return keypoint_roi(c.keypoints)
      return roi_matrix(c.box, c.keypoints)

    regions = [[region(c) for c in _as_candidates(found)] for found in candidates]
    fits = self._fit_regions(images, regions, map_fn)
    if not refine:
      return fits
    again = [
      [k for k, f in enumerate(image_fits) if f.presence >= PRESENCE_THRESHOLD]
      for image_fits in fits
    ]
    refits = self._fit_regions(
      images,
      [[points_roi(image_fits[k].points) for k in ks] for image_fits, ks in zip(fits, again)],
      map_fn,
    )
    for image_fits, ks, new in zip(fits, again, refits):
      for k, fit in zip(ks, new):
        if fit.presence >= PRESENCE_THRESHOLD:
          image_fits[k] = fit
    return fits

  def _fit_regions(self, images, regions, map_fn) -> list[list[MeshFit]]:
    """The fits of ``regions`` [(matrix, roll)] per image, in shared batches."""
    cut = map_fn(lambda pair: self._cut(*pair), list(zip(images, regions)))
    crops = (
      np.concatenate([c[0] for c in cut])
      if cut
      else np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    )
    points, logits = self.raw(crops)
    presence = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))
    fits, k = [], 0
    for _, matrices, rolls in cut:
      fits.append([])
      for matrix, roll in zip(matrices, rolls):
        # Network x, y count from the crop's edge; the matrices map pixel centres.
        xy = align.apply_matrix(align.invert_matrix(matrix), points[k, :, :2] - 0.5)
        z = points[k, :, 2:] / align.matrix_scale(matrix)
        fits[-1].append(
          MeshFit(
            points=np.concatenate([xy, z], axis=1).astype(np.float32),
            presence=float(presence[k]),
            roll=float(roll),
            matrix=matrix,
          )
        )
        k += 1
    return fits
