"""Eye-aligned face crops (docs/data.md).

A similarity transform (rotation, uniform scale, translation) maps three points of the
68-point landmarks -- the two eye centres (means of 36-41 and 42-47) and the mouth centre
(mean of 48-67) -- onto canonical positions in an R x R crop, fitted by least squares
(Umeyama 1991, without reflection). The canonical positions, as fractions of R:

  image-left eye centre   (0.3875, 0.42)
  image-right eye centre  (0.6125, 0.42)    eye distance 0.225 R, eyes level
  mouth centre            (0.5,    0.67)    1.11 eye distances below the eyes

This is the framing of CelebA's aligned images centre-cropped to a square (eye distance
~0.21 of the crop, mouth ~1.08 eye distances below the eyes): the whole face from chin to
brows, the forehead and some hair and background fit, with the jaw line at about 0.2-0.8 R
and the chin at about 0.87 R for a frontal face.

Coordinates: (x, y) with pixel centres at integer values, in the image and in the crop; a
canonical fraction u maps to crop pixel u * R - 0.5, so the 64-px framing is exactly the
128-px one halved. ``matrix`` is [2, 3] and maps image points to crop points:
``crop_xy = matrix[:, :2] @ image_xy + matrix[:, 2]``.

Resampling is bilinear. Where the crop reaches past the image border the image's edge pixels
are repeated (``mode='edge'``; 'reflect' and 'constant' are options). When the face is
shrunk (scale s < 1 crop px per image px) the source is first blurred with a Gaussian of
sigma (1/s - 1)/2 image px, as ``skimage.transform.rescale(anti_aliasing=True)`` does, so
large faces do not alias.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sdgan_jax.faces import landmarks as lm

# The side of an aligned crop in px unless asked otherwise (prepared datasets, the paper's
# qualitative setting; training resizes to 64 for the quantitative one, §4.1).
DEFAULT_RESOLUTION = 128
# (x, y) as fractions of the crop size R: image-left eye, image-right eye, mouth centre.
CANONICAL_POINTS = np.array([[0.3875, 0.42], [0.6125, 0.42], [0.5, 0.67]])


def canonical_points(resolution: int) -> np.ndarray:
  """[3, 2] crop-pixel positions of the left eye, right eye and mouth centres."""
  return CANONICAL_POINTS * resolution - 0.5


def anchor_points(landmarks) -> np.ndarray:
  """[3, 2]: image-left eye centre, image-right eye centre, mouth centre."""
  return np.concatenate([lm.eye_centres(landmarks), lm.mouth_centre(landmarks)[None]])


def umeyama(src, dst) -> np.ndarray:
  """Least-squares similarity [2, 3] mapping points ``src`` [N, 2] onto ``dst`` [N, 2].

  Umeyama (1991), "Least-squares estimation of transformation parameters between two point
  patterns", with the reflection excluded (det of the rotation is +1).
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
    raise ValueError(f'need matching [N >= 2, 2] point sets, got {src.shape} and {dst.shape}')
  mu_src, mu_dst = src.mean(0), dst.mean(0)
  src_c, dst_c = src - mu_src, dst - mu_dst
  var_src = (src_c**2).sum() / len(src)
  if var_src <= 1e-12:
    raise ValueError('the source points coincide: no transform can be fitted')
  cov = dst_c.T @ src_c / len(src)
  u, s, vt = np.linalg.svd(cov)
  d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
  rotation = (u * d) @ vt
  scale = (s * d).sum() / var_src
  translation = mu_dst - scale * rotation @ mu_src
  return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def apply_matrix(matrix, points) -> np.ndarray:
  """Maps [..., 2] (x, y) points with a [2, 3] affine matrix."""
  matrix = np.asarray(matrix, np.float64)
  return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def invert_matrix(matrix) -> np.ndarray:
  """The inverse [2, 3] of an invertible [2, 3] affine matrix."""
  full = np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
  return np.linalg.inv(full)[:2]


def matrix_scale(matrix) -> float:
  """Output pixels per input pixel of a similarity (sqrt of the determinant)."""
  return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix, np.float64)[:, :2]))))


def alignment_matrix(landmarks, resolution: int) -> np.ndarray:
  """[2, 3] image -> crop similarity for 68 ``landmarks`` at crop size ``resolution``."""
  return umeyama(anchor_points(landmarks), canonical_points(resolution))


def warp_affine(
  image, matrix, output_shape, *, mode: str = 'edge', cval: float = 0.0, antialias: bool = True
) -> np.ndarray:
  """Resamples ``image`` [H, W, C] so that input point p lands at ``matrix @ p``.

  Bilinear; float32 output of shape ``output_shape + (C,)`` in the input's value range.
  Only the part of ``image`` the output sees is converted and (when ``antialias`` and the
  transform shrinks) Gaussian-prefiltered, so a small crop of a large photo stays cheap.
  """
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  from skimage import transform  # pylint: disable=import-outside-toplevel

  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  out_h, out_w = output_shape
  matrix = np.asarray(matrix, np.float64)
  inverse = invert_matrix(matrix)
  scale = matrix_scale(matrix)
  sigma = (1.0 / scale - 1.0) / 2.0 if antialias and scale < 1.0 else 0.0
  # The source window the output samples, padded for the blur and the bilinear taps.
  corners = apply_matrix(
    inverse, [[-0.5, -0.5], [out_w - 0.5, -0.5], [-0.5, out_h - 0.5], [out_w - 0.5, out_h - 0.5]]
  )
  pad = int(np.ceil(4 * sigma)) + 2
  x0 = int(np.clip(np.floor(corners[:, 0].min()) - pad, 0, image.shape[1] - 1))
  y0 = int(np.clip(np.floor(corners[:, 1].min()) - pad, 0, image.shape[0] - 1))
  x1 = int(np.clip(np.ceil(corners[:, 0].max()) + pad + 1, x0 + 1, image.shape[1]))
  y1 = int(np.clip(np.ceil(corners[:, 1].max()) + pad + 1, y0 + 1, image.shape[0]))
  window = image[y0:y1, x0:x1].astype(np.float32)
  if sigma > 0.05:
    window = ndimage.gaussian_filter(window, sigma=(sigma, sigma, 0), mode='nearest')
  # Output pixel -> window pixel: the inverse, then shift by the window's origin.
  to_window = inverse.copy()
  to_window[:, 2] -= (x0, y0)
  inverse_map = transform.AffineTransform(matrix=np.vstack([to_window, [0.0, 0.0, 1.0]]))
  out = transform.warp(
    window,
    inverse_map,
    output_shape=(out_h, out_w),
    order=1,
    mode=mode,
    cval=cval,
    preserve_range=True,
  )
  return out.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AlignedFace:
  """An eye-aligned face crop.

  Attributes:
    crop: uint8 [R, R, 3] RGB crop.
    matrix: float64 [2, 3] image -> crop similarity (invert with ``invert_matrix``).
    landmarks: float32 [68, 2] (x, y) landmarks in crop pixels (may fall outside the crop).
  """

  crop: np.ndarray
  matrix: np.ndarray
  landmarks: np.ndarray


def align_face(image, landmarks, resolution: int = 128, *, mode: str = 'edge') -> AlignedFace:
  """Crops the face with 68 image ``landmarks`` out of uint8 ``image`` [H, W, 3], eye-aligned."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}')
  if int(resolution) != resolution or resolution < 8:
    raise ValueError(f'resolution must be an integer >= 8, got {resolution!r}')
  matrix = alignment_matrix(landmarks, resolution)
  crop = warp_affine(image, matrix, (resolution, resolution), mode=mode)
  crop = np.clip(np.round(crop), 0, 255).astype(np.uint8)
  return AlignedFace(
    crop=crop, matrix=matrix, landmarks=apply_matrix(matrix, landmarks).astype(np.float32)
  )
