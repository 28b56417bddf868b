"""Detection rate (paper §4.2, Table 1): the share of anonymized crops a face detector finds.

The paper uses dlib's HOG detector and SSH. SSH's weights are not to be had (DESIGN §5), so
the deep detector here is dlib's MMOD CNN, and the tables name it as such.

dlib's detectors miss small faces (the HOG window is 80 px; MMOD's ~40 px at its native
scale), and the paper's numbers come from 64-px crops (§4.1) on which dlib finds nearly every
original (99.61%). So each crop is enlarged by ``scale`` (bicubic, default 4: 64 -> 256 px,
the face ~130 px wide) before the detector runs at ``upsample=0``; a crop counts as detected
when some box's centre lies in the bounding box of its face mask, so a stray hit in the
background does not count as finding the face.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sdgan_jax.faces import detect

DETECTOR_NAMES = {'hog': 'dlib HOG', 'cnn': 'dlib CNN (MMOD)'}
DEFAULT_SCALE = 4


def to_uint8(images) -> np.ndarray:
  """Float [..., 3] in [0, 1] -> uint8 (rounded)."""
  return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


class DetectionRate:
  """Counts, per crop, whether a dlib detector finds its face.

  Args:
    kind: 'hog' or 'cnn' (``sdgan_jax.faces.detect.FaceDetector``).
    scale: integer enlargement of the crop before detection (see the module docstring).
    upsample: dlib's own pyramid upsampling on top (0: none).
  """

  def __init__(self, kind: str, scale: int = DEFAULT_SCALE, upsample: int = 0):
    if int(scale) != scale or scale < 1:
      raise ValueError(f'scale must be a positive integer, got {scale!r}')
    self.kind = kind
    self.name = DETECTOR_NAMES[kind]
    self.scale = int(scale)
    self.detector = detect.FaceDetector(kind, upsample=upsample)

  def enlarge(self, image_u8: np.ndarray) -> np.ndarray:
    if self.scale == 1:
      return image_u8
    h, w = image_u8.shape[:2]
    return np.asarray(Image.fromarray(image_u8).resize((w * self.scale, h * self.scale),
                                                       Image.BICUBIC))

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
    for i, image in enumerate(images):
      boxes = self.detector(self.enlarge(image)).boxes / self.scale
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
