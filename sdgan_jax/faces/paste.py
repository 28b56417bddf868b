"""Pasting a (generated) face crop back into the full image (the anonymizer's last step).

The crop is warped back with the inverse of the alignment similarity (bilinear), and blended
with a feathered face mask: alpha is 1 on the warped mask, so the face region is replaced
entirely, and falls off outside it with the profile of a Gaussian-blurred edge (an erf of the
distance to the mask, centred ``feather_px / 2`` outside it, sigma ``feather_px / 6``), cut to
0 beyond the mask dilated by ``feather_px``. Pixels further than ``feather_px`` from the
warped mask are returned bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from sdgan_jax.faces.align import apply_matrix, invert_matrix, warp_affine


def feather_alpha(inside: np.ndarray, feather_px: float) -> np.ndarray:
  """float32 blend weights for a boolean face region ``inside`` [H, W] (see module doc)."""
  from scipy import ndimage, special  # pylint: disable=import-outside-toplevel

  inside = np.asarray(inside, bool)
  if feather_px <= 0 or not inside.any():
    return inside.astype(np.float32)
  distance = ndimage.distance_transform_edt(~inside)  # 0 inside, px to the region outside
  sigma = feather_px / 6.0
  alpha = 0.5 * special.erfc((distance - feather_px / 2.0) / (sigma * math.sqrt(2.0)))
  alpha = np.where(distance > feather_px, 0.0, alpha)
  return np.where(inside, 1.0, alpha).astype(np.float32)


def paste_back(image, crop, matrix, mask, feather_px: float = 4.0) -> np.ndarray:
  """Returns a copy of ``image`` with ``crop`` warped back into the face region.

  Args:
    image: uint8 [H, W, 3], the full image the crop was aligned from. Not modified.
    crop: [R, R, 3] face crop, uint8 or float in [0, 1] (a generator's output).
    matrix: [2, 3] image -> crop similarity (``AlignedFace.matrix`` / ``Face.matrix``).
    mask: [R, R] or [R, R, 1] face mask in crop space, nonzero = face ({0, 1} or {0, 255}).
    feather_px: width of the soft edge outside the mask, in image pixels (0 = hard edge).

  Returns:
    uint8 [H, W, 3]: the blended image.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}')
  crop = np.asarray(crop)
  if crop.ndim != 3 or crop.shape[-1] != 3 or crop.shape[0] != crop.shape[1]:
    raise ValueError(f'expected a square RGB crop [R, R, 3], got {crop.shape}')
  r = crop.shape[0]
  mask = np.asarray(mask)
  if mask.reshape(mask.shape[0], -1).shape != (r, r):
    raise ValueError(f'mask {mask.shape} does not match the crop {crop.shape}: pass [R, R(, 1)]')
  if feather_px < 0:
    raise ValueError(f'feather_px must be >= 0, got {feather_px}')
  if crop.dtype == np.uint8:
    crop = crop.astype(np.float32)
  else:
    crop = np.clip(crop.astype(np.float32), 0.0, 1.0) * 255.0
  face = (mask.reshape(r, r, 1) > 0).astype(np.float32)
  matrix = np.asarray(matrix, np.float64)
  inverse = invert_matrix(matrix)

  # Work only on the image window that the crop (plus the feather band) covers.
  h, w = image.shape[:2]
  corners = apply_matrix(
    inverse, [[-0.5, -0.5], [r - 0.5, -0.5], [-0.5, r - 0.5], [r - 0.5, r - 0.5]]
  )
  pad = int(math.ceil(feather_px)) + 2
  x0 = int(max(math.floor(corners[:, 0].min()) - pad, 0))
  y0 = int(max(math.floor(corners[:, 1].min()) - pad, 0))
  x1 = int(min(math.ceil(corners[:, 0].max()) + pad + 1, w))
  y1 = int(min(math.ceil(corners[:, 1].max()) + pad + 1, h))
  out = image.copy()
  if x1 <= x0 or y1 <= y0:
    return out  # the crop lies entirely outside the image
  # Crop pixel -> window pixel: the inverse alignment, then shift to the window's origin.
  to_window = inverse.copy()
  to_window[:, 2] -= (x0, y0)
  shape = (y1 - y0, x1 - x0)
  pixels = warp_affine(crop, to_window, shape, mode='edge', antialias=False)
  inside = warp_affine(face, to_window, shape, mode='constant', antialias=False)[..., 0] >= 0.5
  alpha = feather_alpha(inside, feather_px)[..., None]
  window = image[y0:y1, x0:x1].astype(np.float32)
  blended = np.clip(np.round(window * (1.0 - alpha) + pixels * alpha), 0, 255).astype(np.uint8)
  out[y0:y1, x0:x1] = np.where(alpha > 0, blended, image[y0:y1, x0:x1])
  return out
