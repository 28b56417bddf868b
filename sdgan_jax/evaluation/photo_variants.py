"""The photo set's variants: each photo as users' photos come (scaled down, turned, grey,
JPEG quality 10, dark, over-exposed, colour cast), with the [2, 3] matrix that carries the
ground truth along (``evaluation.photo_set``; docs/detection.md).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np

ANGLE = 28.0  # degrees, counter-clockwise as seen ('turn+') and clockwise ('turn-')
FILL = (118, 118, 118)  # the plain colour a turned photo's new corners are filled with
VARIANTS = (
  'original',
  'scale1/2',
  'scale1/4',
  'scale1/8',
  f'turn+{ANGLE:.0f}',
  f'turn-{ANGLE:.0f}',
  'grey',
  'jpeg10',
  'dark',
  'bright',
  'cast',
)


def _scaled(image: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
  from PIL import Image  # pylint: disable=import-outside-toplevel

  h, w = image.shape[:2]
  nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
  out = np.asarray(Image.fromarray(image).resize((nw, nh), Image.LANCZOS))
  # PIL maps output pixel centre i + 0.5 to input (i + 0.5) * w / nw.
  sx, sy = nw / w, nh / h
  return out, np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])


def _turned(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
  """``image`` turned counter-clockwise (as seen) on a canvas expanded to hold it all."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  h, w = image.shape[:2]
  theta = math.radians(degrees)
  c, s = math.cos(theta), math.sin(theta)
  nw, nh = math.ceil(abs(w * c) + abs(h * s)), math.ceil(abs(w * s) + abs(h * c))
  # Image y points down: counter-clockwise as seen is [[c, s], [-s, c]] on (x, y), as in
  # recall_set; pixel centres are turned about the centre of the frame.
  linear = np.array([[c, s], [-s, c]])
  centre, new_centre = np.array([w - 1, h - 1]) / 2, np.array([nw - 1, nh - 1]) / 2
  matrix = np.concatenate([linear, (new_centre - linear @ centre)[:, None]], axis=1)
  inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  # PIL's AFFINE samples the input at coefficients @ (x + 0.5, y + 0.5) in pixel-corner
  # coordinates; ours map pixel centres.
  corner = inv.copy()
  corner[:, 2] = inv[:, 2] - inv[:, :2] @ [0.5, 0.5] + 0.5
  out = Image.fromarray(image).transform(
    (nw, nh), Image.AFFINE, tuple(corner.ravel()), Image.BICUBIC, fillcolor=FILL
  )
  return np.asarray(out), matrix


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel

  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', quality=quality)
  with Image.open(io.BytesIO(buffer.getvalue())) as im:
    return np.asarray(im.convert('RGB'))


def _tone(image: np.ndarray, curve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  x = image.astype(np.float64) / 255.0
  return np.clip(np.round(curve(x) * 255.0), 0, 255).astype(np.uint8)


def variant_image(image: np.ndarray, variant: str) -> tuple[np.ndarray, np.ndarray]:
  """(the ``variant`` of ``image``, [2, 3] photo -> variant pixel coordinates)."""
  same = np.array([[1.0, 0, 0], [0, 1.0, 0]])
  if variant == 'original':
    return image, same
  if variant.startswith('scale1/'):
    return _scaled(image, 1.0 / int(variant[len('scale1/') :]))
  if variant.startswith('turn'):
    return _turned(image, float(variant[len('turn') :]))
  if variant == 'grey':  # luma (ITU-R 601, as PIL's 'L'), kept as three channels
    luma = np.round(image.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=2), same
  if variant == 'jpeg10':
    return _jpeg(image, 10), same
  if variant == 'dark':  # an under-exposed photo: gamma 2.2 on top of the encoding's
    return _tone(image, lambda x: x**2.2), same
  if variant == 'bright':  # over-exposed: 1.8x the light, highlights clipped
    return _tone(image, lambda x: 1.8 * x), same
  if variant == 'cast':  # a warm (tungsten) white balance
    return _tone(image, lambda x: x * [1.2, 1.0, 0.65]), same
  raise ValueError(f'unknown variant {variant!r}; choose from {", ".join(VARIANTS)}')


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  return points @ matrix[:2, :2].T + matrix[:, 2]


def transform_region(region, matrix: np.ndarray) -> np.ndarray:
  x0, y0, x1, y1 = (float(v) for v in region)
  corners = transform_points(matrix, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
  return np.concatenate([corners.min(0), corners.max(0)])
