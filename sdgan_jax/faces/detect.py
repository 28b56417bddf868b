"""Face detection and 68-point landmarks with dlib (docs/data.md, docs/weights.md).

Detectors: dlib's HOG frontal face detector (``kind='hog'``, fast on CPU, the detector the
paper's detection rate uses) and dlib's MMOD CNN detector (``kind='cnn'``,
``mmod_human_face_detector.dat`` from ``face-recognition-models``; more robust to pose, but
seconds per megapixel on a CPU). Landmarks: dlib's 68-point shape predictor
(``shape_predictor_68_face_landmarks.dat``, trained on iBUG 300-W: research use only).

dlib is imported lazily (``pip install dlib-bin face-recognition-models``), so importing
``sdgan_jax.faces`` works without it. Loaded models are cached: the 68-point model (about
a second to load) once per process, since dlib documents it as safe to share between
threads; the detectors once per thread, since they are not: two threads running one HOG
detector crash the process. The HOG detector releases the GIL while it runs, so threads
with their own detectors find faces in parallel (``sdgan_jax.anonymize`` uses a pool of
them); the CNN detector holds it (``sdgan_jax.evaluation.detection`` uses processes).

Images are uint8 RGB arrays [H, W, 3]. Grayscale or RGBA inputs must be converted by the
caller (e.g. ``np.asarray(PIL.Image.open(path).convert('RGB'))``); they are rejected, not
guessed at.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
import threading

import numpy as np

from sdgan_jax.faces import landmarks as lm

_INSTALL_HINT = (
  'install them with `pip install dlib-bin face-recognition-models` '
  '(dlib-bin is the prebuilt dlib wheel; building `dlib` takes minutes)'
)


def _import_dlib():
  try:
    import dlib  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f'face detection needs dlib: {_INSTALL_HINT}') from e
  return dlib


def dlib_model_path(filename: str) -> str:
  """Path of a model file shipped by ``face-recognition-models``.

  The package is located, not imported: its ``__init__`` needs ``pkg_resources``, which
  recent setuptools no longer provide and fresh virtualenvs often lack.
  """
  spec = importlib.util.find_spec('face_recognition_models')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f'dlib model {filename} needs face-recognition-models: {_INSTALL_HINT}')
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'models' / filename
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: reinstall face-recognition-models')
  return str(path)


_THREAD_DETECTORS = threading.local()


def _thread_detector(kind: str):
  """This thread's dlib detector of ``kind`` ('hog' or 'cnn'), made on first use."""
  detectors = _THREAD_DETECTORS.__dict__.setdefault('detectors', {})
  if kind not in detectors:
    dlib = _import_dlib()
    detectors[kind] = (
      dlib.get_frontal_face_detector()
      if kind == 'hog'
      else dlib.cnn_face_detection_model_v1(dlib_model_path('mmod_human_face_detector.dat'))
    )
  return detectors[kind]


@functools.cache
def _shape_predictor_68():
  return _import_dlib().shape_predictor(dlib_model_path('shape_predictor_68_face_landmarks.dat'))


def check_image(image) -> np.ndarray:
  """Returns ``image`` as a C-contiguous uint8 [H, W, 3] array, or raises saying what to do."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(
      f'expected a uint8 RGB image, got dtype {image.dtype}; convert floats in '
      '[0, 1] with (x * 255).round().astype(np.uint8)'
    )
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(
      f'expected an RGB image of shape [H, W, 3], got {image.shape}; convert '
      "grayscale or RGBA first, e.g. PIL.Image.open(path).convert('RGB')"
    )
  return np.ascontiguousarray(image)


@dataclasses.dataclass(frozen=True)
class Detections:
  """Faces found in one image, best score first.

  Attributes:
    boxes: float32 [N, 4] (x0, y0, x1, y1) in image pixels, dlib's rectangle convention
      (x1, y1 are the last pixel column/row inside the box, so the width is x1 - x0 + 1).
      Boxes may reach outside the image for faces cut by its border.
    scores: float32 [N]: the HOG detector's SVM score (> 0 at its default threshold), the
      CNN detector's confidence or BlazeFace's probability. Not comparable between kinds.
    keypoints: float32 [N, 6, 2] (x, y) of BlazeFace's six keypoints (right eye, left eye,
      nose tip, mouth centre, right ear, left ear), or None for detectors without them.
    sources: per box, the detectors that found it (e.g. ``('hog', 'blazeface_full_range')``
      after an ensemble's merge), or None.

  After the face mesh's second stage (``faces.verify``; None before it):
    presence: float32 [N]: the mesh's face-presence score (NaN: too small to judge).
    decided_by: per box, 'mesh' (judged a face) or 'detector' (kept unjudged).
    meshes: per box, its ``faces.mesh.MeshFit``.
    rejected: the candidates judged not to be faces (their detector boxes and presence).
  """

  boxes: np.ndarray
  scores: np.ndarray
  keypoints: np.ndarray | None = None
  sources: tuple | None = None
  presence: np.ndarray | None = None
  decided_by: tuple | None = None
  meshes: tuple | None = None
  rejected: Detections | None = None

  def __len__(self) -> int:
    return len(self.scores)


class FaceDetector:
  """dlib face detector: ``FaceDetector('hog')(image) -> Detections``.

  Args:
    kind: 'hog' (frontal HOG + linear SVM, ~80 px smallest face at ``upsample=0``) or
      'cnn' (MMOD CNN, more robust to pose and light; seconds per megapixel on CPU).
    upsample: how many times dlib doubles the image before detecting; each step halves the
      smallest detectable face and roughly quadruples the time.
    threshold: added to the HOG detector's decision threshold (0 = dlib's default; raise it
      to trade recall for fewer false positives). For 'cnn', the minimum confidence kept.
  """

  def __init__(self, kind: str = 'hog', upsample: int = 1, threshold: float = 0.0):
    if kind not in ('hog', 'cnn'):
      raise ValueError(f"detector kind must be 'hog' or 'cnn', got {kind!r}")
    if int(upsample) != upsample or upsample < 0:
      raise ValueError(f'upsample must be a non-negative integer, got {upsample!r}')
    self.kind = kind
    self.upsample = int(upsample)
    self.threshold = float(threshold)
    # Loads this thread's model now, so a missing dlib or model file fails at construction.
    _thread_detector(kind)

  def __call__(self, image) -> Detections:
    """Faces in ``image``; safe to call from several threads at once (module doc)."""
    image = check_image(image)
    model = _thread_detector(self.kind)
    if self.kind == 'hog':
      rects, scores, _ = model.run(image, self.upsample, self.threshold)
      rows = [(r.left(), r.top(), r.right(), r.bottom(), s) for r, s in zip(rects, scores)]
    else:
      rows = [
        (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence)
        for d in model(image, self.upsample)
        if d.confidence >= self.threshold
      ]
    rows.sort(key=lambda row: -row[4])
    table = np.array(rows, np.float32).reshape(-1, 5)
    return Detections(boxes=table[:, :4], scores=table[:, 4])


class LandmarkPredictor:
  """dlib's 68-point shape predictor: ``LandmarkPredictor()(image, box) -> [68, 2]``.

  The result is float32 (x, y) in image pixels, pixel centres at integer coordinates,
  indexed as in ``sdgan_jax.faces.landmarks``. ``box`` is one row of ``Detections.boxes``
  (dlib's convention); the predictor was trained on HOG detector boxes and works with CNN
  boxes too.
  """

  def __init__(self):
    self._dlib = _import_dlib()
    self._model = _shape_predictor_68()

  def __call__(self, image, box) -> np.ndarray:
    image = check_image(image)
    x0, y0, x1, y1 = (int(round(float(v))) for v in np.asarray(box).reshape(4))
    shape = self._model(image, self._dlib.rectangle(x0, y0, x1, y1))
    if shape.num_parts != lm.NUM_LANDMARKS:
      raise RuntimeError(f'shape predictor returned {shape.num_parts} points, expected 68')
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)
