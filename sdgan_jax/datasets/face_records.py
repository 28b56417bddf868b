"""One image -> one face record (docs/data.md), in this process or in a pool's workers.

The face itself is prepared by ``sdgan_jax.faces.pipeline.prepare_face`` (the anonymizer's
preparation too); here only what a dataset adds: one face per image, the largest detected
(CelebA's aligned images hold one subject), and a reason for every image that yields none
(``SKIP_REASONS``). No TensorFlow: the workers import numpy, PIL, dlib and (for the face
mesh) JAX.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from sdgan_jax.datasets import features
from sdgan_jax.datasets.image_sources import Payload

SKIP_REASONS = ('missing', 'unreadable', 'no_face', 'too_small', 'failed')
LANDMARK_SOURCES = ('mesh', 'dlib')


@dataclasses.dataclass(frozen=True)
class FaceOptions:
  """How each image is turned into a face record (stored in the manifest).

  Attributes:
    resolution: crop size R (128, docs/data.md).
    detector: 'hog' or 'cnn' (``sdgan_jax.faces.detect.FaceDetector``).
    upsample: detector upsampling steps (1: faces down to ~40 px; CelebA's are ~100 px).
    min_face_px: a largest face with a shorter box side under this is skipped as too_small.
    landmarks: 'mesh' (MediaPipe's face mesh, as the anonymizer's default: training and
      anonymization see one geometry) or 'dlib' (dlib's 68-point shape predictor).
  """

  resolution: int = features.DEFAULT_RESOLUTION
  detector: str = 'hog'
  upsample: int = 1
  min_face_px: float = 40.0
  landmarks: str = 'mesh'

  def __post_init__(self):
    if self.landmarks not in LANDMARK_SOURCES:
      raise ValueError(f'landmarks must be one of {LANDMARK_SOURCES}, got {self.landmarks!r}')


def decode_image(payload: Payload) -> np.ndarray:
  """uint8 RGB [H, W, 3] from a path or encoded bytes; raises OSError if unreadable."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  source = io.BytesIO(payload) if isinstance(payload, (bytes, bytearray)) else payload
  with Image.open(source) as im:
    im.load()  # decodes now: a truncated JPEG raises here, not later
    return np.asarray(im.convert('RGB'))


def _skipped(reason: str, detail: str, num_faces: int = 0) -> dict:
  return {'record': None, 'reason': reason, 'detail': detail, 'num_faces': num_faces}


def _largest(boxes: np.ndarray) -> int:
  sides = boxes[:, 2:] - boxes[:, :2] + 1
  return int(np.argmax(sides[:, 0] * sides[:, 1]))


def _face_record(image: np.ndarray, options: FaceOptions, detector, predictor) -> dict:
  """The record of the largest face of a decoded image, or why there is none; the face is
  prepared by the anonymizer's path, ``faces.pipeline.prepare_detected``."""
  from sdgan_jax.faces import pipeline  # pylint: disable=import-outside-toplevel

  found = detector(image)
  if not len(found):
    return _skipped('no_face', f'{image.shape[1]}x{image.shape[0]} image')
  index = _largest(found.boxes)
  box = found.boxes[index]
  size = float(min(box[2] - box[0], box[3] - box[1]) + 1)
  if size < options.min_face_px:
    return _skipped(
      'too_small', f'largest face {size:.0f} px < {options.min_face_px:g} px', len(found)
    )
  face = pipeline.prepare_detected(
    image,
    pipeline.detected_faces(found)[index],
    predictor,
    options.resolution,
    min_face_px=0.0,
    check=False,
  )
  if face.reason is not None:  # as an exception here always was: a failed image, 0 faces
    return _skipped('failed', face.detail, 0)
  record = {
    'image': face.crop,
    'mask': face.mask,
    'semantic': face.semantic,
    'landmarks': face.landmarks.astype(np.float32),
    'box': face.box,
  }
  return {'record': record, 'reason': None, 'detail': '', 'num_faces': len(found)}


def prepare_image(payload: Payload, options: FaceOptions, detector=None, predictor=None) -> dict:
  """Prepares the largest face of one image.

  Returns:
    {'record': {image, mask, semantic, landmarks, box} or None, 'reason': a
    ``SKIP_REASONS`` entry or None, 'detail': str, 'num_faces': int}.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from sdgan_jax.faces import detect  # pylint: disable=import-outside-toplevel

  try:
    image = decode_image(payload)
  except FileNotFoundError as e:
    return _skipped('missing', str(e))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    return _skipped('unreadable', f'{type(e).__name__}: {e}')
  detector = detector or detect.FaceDetector(options.detector, upsample=options.upsample)
  predictor = predictor or landmark_predictor(options)
  try:
    return _face_record(image, options, detector, predictor)
  except Exception as e:  # pylint: disable=broad-except
    # One bad image must not stop hours of work; it is reported, never dropped silently.
    return _skipped('failed', f'{type(e).__name__}: {e}', 0)


def landmark_predictor(options: FaceOptions):
  """The face mesh or dlib's shape predictor, as ``options.landmarks`` says."""
  if options.landmarks == 'mesh':
    from sdgan_jax.faces import mesh  # pylint: disable=import-outside-toplevel

    return mesh.FaceMesh.load()
  from sdgan_jax.faces import detect  # pylint: disable=import-outside-toplevel

  return detect.LandmarkPredictor()


# The face models of this worker process (``init_worker``), or the error loading them.
_WORKER = {}


def init_worker(options: FaceOptions) -> None:
  """A pool initializer: loads the face models once per worker process."""
  # The 68-point model is slow to load: once per worker, not per image.
  # A failing pool initializer makes multiprocessing respawn workers forever, so the error
  # is kept and raised by the first task instead, which ends the run with its message.
  try:
    from sdgan_jax.faces import detect  # pylint: disable=import-outside-toplevel

    _WORKER['detector'] = detect.FaceDetector(options.detector, upsample=options.upsample)
    _WORKER['predictor'] = landmark_predictor(options)
    _WORKER['options'] = options
    _WORKER.pop('error', None)
  except Exception as e:  # pylint: disable=broad-except
    _WORKER['error'] = f'{type(e).__name__}: {e}'


def work(task: tuple) -> dict:
  """A pool task: (file name, identity, payload) -> ``prepare_image``'s result, named."""
  if 'error' in _WORKER:
    raise RuntimeError(f'could not load the face models in a worker: {_WORKER["error"]}')
  filename, identity, payload = task
  result = prepare_image(payload, _WORKER['options'], _WORKER['detector'], _WORKER['predictor'])
  result['filename'] = filename
  result['identity'] = identity
  return result
