"""Detection rate (paper §4.2, Table 1): the share of anonymized crops a face detector finds.

The paper uses dlib's HOG detector and SSH, a deep single-shot detector. SSH's weights are
not to be had, so its column is taken by another deep detector, named as such in the tables:
by default the anonymizer's BlazeFace ensemble (``'blazeface'``: MediaPipe's short- and
full-range single-shot networks, ``faces.ensemble``), or dlib's MMOD CNN (``'cnn'``).

dlib's detectors miss small faces (the HOG window is 80 px; MMOD's ~40 px at its native
scale), and the paper's numbers come from 64-px crops (§4.1) on which dlib finds nearly every
original (99.61%). So each crop is enlarged by an integer ``scale`` (bicubic) before the
detector runs at ``upsample=0``: the evaluation runner picks it so crops reach
``EvalOptions.detection_size`` (128 px by default: 2x for 64-px crops). A crop counts as
detected when some box's centre lies in the bounding box of its face mask, so a stray hit in the
background does not count as finding the face.

dlib's CNN detector runs on one core and holds the GIL (threads gain nothing), so the
dlib detectors can run in worker processes (``detector_pool``): one crop per task, the same
results as in this process. BlazeFace runs in this process, all crops of a batch through
the network together (on the accelerator when there is one).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

from sdgan_jax.faces import detect

DETECTOR_NAMES = {
  'hog': 'dlib HOG',
  'cnn': 'dlib CNN (MMOD)',
  'blazeface': 'BlazeFace (short + full range)',
}
# The detectors that take the column of the paper's deep detector, SSH.
DEEP_DETECTORS = ('blazeface', 'cnn')
DEFAULT_SCALE = 4


@contextlib.contextmanager
def detector_pool(processes: int = 0) -> Iterator[multiprocessing.pool.Pool | None]:
  """Worker processes for ``DetectionRate(..., pool=)``; None (detect in this process)
  for ``processes`` 1. 0: one per CPU core. Spawned, not forked: the parent runs JAX,
  whose threads do not survive a fork."""
  processes = processes or os.cpu_count() or 1
  if processes <= 1:
    yield None
    return
  with multiprocessing.get_context('spawn').Pool(processes) as pool:
    yield pool


def _enlarge(image_u8: np.ndarray, scale: int) -> np.ndarray:
  if scale == 1:
    return image_u8
  h, w = image_u8.shape[:2]
  return np.asarray(Image.fromarray(image_u8).resize((w * scale, h * scale), Image.BICUBIC))


def _detect_boxes(task: tuple[str, int, int, np.ndarray]) -> np.ndarray:
  """Boxes in crop pixels of one crop: ``(kind, upsample, scale, uint8 crop)``; runs in the
  worker processes too (the dlib model is made once per process, ``detect``'s cache)."""
  kind, upsample, scale, crop = task
  return detect.FaceDetector(kind, upsample=upsample)(_enlarge(crop, scale)).boxes / scale


def to_uint8(images) -> np.ndarray:
  """Float [..., 3] in [0, 1] -> uint8 (rounded)."""
  return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


class DetectionRate:
  """Counts, per crop, whether a detector finds its face.

  Args:
    kind: 'hog' or 'cnn' (``sdgan_jax.faces.detect.FaceDetector``), or 'blazeface' (the
      ``faces.ensemble`` default ensemble).
    scale: integer enlargement of the crop before detection (see the module docstring).
    upsample: dlib's own pyramid upsampling on top (0: none).
    pool: worker processes from ``detector_pool`` to run a dlib detector in, or None.
    weights_dir: BlazeFace's converted weights.
  """

  def __init__(
    self,
    kind: str,
    scale: int = DEFAULT_SCALE,
    upsample: int = 0,
    pool: multiprocessing.pool.Pool | None = None,
    weights_dir=None,
  ):
    if int(scale) != scale or scale < 1:
      raise ValueError(f'scale must be a positive integer, got {scale!r}')
    if kind not in DETECTOR_NAMES:
      raise ValueError(f'unknown detector {kind!r}; choose from {sorted(DETECTOR_NAMES)}')
    self.kind = kind
    self.name = DETECTOR_NAMES[kind]
    self.scale = int(scale)
    self.upsample = int(upsample)
    self.pool = pool
    self._ensemble = None
    if kind == 'blazeface':  # missing weights fail here
      from sdgan_jax.faces import ensemble  # pylint: disable=import-outside-toplevel

      self._ensemble = ensemble.EnsembleDetector(weights_dir=weights_dir)
    else:
      detect.FaceDetector(kind, upsample=upsample)  # a missing dlib or model fails here

  def __call__(self, images, masks=None) -> np.ndarray:
    """bool [N]: whether the face of each crop is detected.

    Args:
      images: float [N, R, R, 3] in [0, 1] (or uint8).
      masks: [N, R, R(, 1)] face masks (nonzero = face), or None to accept any detection.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
      images = to_uint8(images)
    found = np.zeros(len(images), bool)
    if self._ensemble is not None:
      detections = self._ensemble.detect_many([_enlarge(im, self.scale) for im in images])
      per_crop = [d.boxes / self.scale for d in detections]
    else:
      tasks = [(self.kind, self.upsample, self.scale, image) for image in images]
      per_crop = (
        self.pool.map(_detect_boxes, tasks) if self.pool is not None else map(_detect_boxes, tasks)
      )
    for i, (image, boxes) in enumerate(zip(images, per_crop)):
      if not len(boxes):
        continue
      if masks is None:
        found[i] = True
        continue
      ys, xs = np.nonzero(np.asarray(masks[i]).reshape(image.shape[:2]))
      if not len(ys):  # no mask to check against: any face counts
        found[i] = True
        continue
      # dlib boxes are inclusive: (x0 + x1) / 2 is the centre in the crop's pixel coordinates
      # (up to the enlargement's half-pixel shift, far below the box size).
      cx = (boxes[:, 0] + boxes[:, 2]) / 2
      cy = (boxes[:, 1] + boxes[:, 3]) / 2
      inside = (cx >= xs.min()) & (cx <= xs.max()) & (cy >= ys.min()) & (cy <= ys.max())
      found[i] = bool(inside.any())
    return found
