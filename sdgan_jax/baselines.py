"""The classic de-identification baselines of the paper's tables (docs/evaluation.md).

Pixelization to 16x16 and 8x8 blocks and Gaussian blur with 9x9 and 17x17 kernels, applied
to face crops (optionally only inside a mask), plus a solid fill. The anonymizer uses them
as ``--baseline`` methods and as its fail-closed fallback; ``tools/eval.py`` as table rows.

Images are float [N, H, W, C] in [0, 1] (or one [H, W, C] image).
"""

from __future__ import annotations

import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np


def opencv_sigma(kernel_size: int) -> float:
  """The sigma OpenCV derives for a k x k Gaussian kernel (its sigma <= 0 convention)."""
  return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


@functools.partial(jax.jit, static_argnums=1)
def _blur(images: jax.Array, kernel_size: int) -> jax.Array:
  blur = functools.partial(
    dm_pix.gaussian_blur, sigma=opencv_sigma(kernel_size), kernel_size=kernel_size, padding='SAME'
  )
  # SAME zero padding darkens the border: normalise by the blurred all-ones image.
  ones = jnp.ones(images.shape[1:3] + (1,), images.dtype)
  return jax.vmap(blur)(images) / blur(ones)


def gaussian_blur(images, kernel_size: int) -> np.ndarray:
  """Gaussian blur with a ``kernel_size`` x ``kernel_size`` kernel (paper: 9x9, 17x17)."""
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f'kernel_size must be odd and positive, got {kernel_size}')
  images, single = _batch(images)
  out = np.asarray(_blur(jnp.asarray(images), kernel_size))
  return out[0] if single else out


def pixelate(images, blocks: int) -> np.ndarray:
  """Mosaic: each image averaged over a ``blocks`` x ``blocks`` grid (paper: 16x16, 8x8).

  Block edges are spread evenly when the size is not a multiple of ``blocks``, so any
  region size works (the anonymizer pixelates face boxes of any size).
  """
  images, single = _batch(images)
  n, h, w, c = images.shape
  if blocks < 1 or blocks > min(h, w):
    raise ValueError(f'blocks must be in [1, {min(h, w)}] for {h}x{w} images, got {blocks}')
  rows = np.linspace(0, h, blocks + 1).round().astype(int)
  cols = np.linspace(0, w, blocks + 1).round().astype(int)
  out = np.empty_like(images)
  for r0, r1 in zip(rows[:-1], rows[1:]):
    for c0, c1 in zip(cols[:-1], cols[1:]):
      out[:, r0:r1, c0:c1] = images[:, r0:r1, c0:c1].mean(axis=(1, 2), keepdims=True)
  return out[0] if single else out


def solid_fill(images, value: float = 0.5) -> np.ndarray:
  """Every pixel set to ``value`` (the strongest fallback: nothing of the face remains)."""
  return np.full_like(np.asarray(images, np.float32), value)


# Table rows, in the paper's order.
BASELINES = {
  'pixelate16': functools.partial(pixelate, blocks=16),
  'pixelate8': functools.partial(pixelate, blocks=8),
  'blur9': functools.partial(gaussian_blur, kernel_size=9),
  'blur17': functools.partial(gaussian_blur, kernel_size=17),
  'mask': solid_fill,
}


def apply_baseline(name: str, images, mask=None) -> np.ndarray:
  """Runs baseline ``name`` on ``images``; with ``mask`` ([.., H, W, 1], nonzero = face) only
  the masked pixels change."""
  if name not in BASELINES:
    raise ValueError(f'unknown baseline {name!r}; choose from {sorted(BASELINES)}')
  images = np.asarray(images, np.float32)
  out = BASELINES[name](images)
  if mask is None:
    return out
  inside = np.asarray(mask) > 0
  return np.where(inside, out, images)


def _batch(images) -> tuple[np.ndarray, bool]:
  images = np.asarray(images, np.float32)
  if images.ndim == 3:
    return images[None], True
  if images.ndim != 4:
    raise ValueError(f'images must be [N, H, W, C] or [H, W, C], got shape {images.shape}')
  return images, False
