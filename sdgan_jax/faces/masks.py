"""Face masks and landmark semantic maps (docs/data.md).

Face mask: the filled polygon of the jaw line (points 0-16) closed above the brows: the
brow points 26..17 are moved "up" the face (against the eyes -> mouth direction) by
``FOREHEAD_MARGIN`` = 0.3 of the face height (mean brow point to chin, point 8), which
reaches about the hairline, so the forehead is inside the mask.

Semantic map: the 11 Helen-style classes of ``SEMANTIC_CLASSES`` (which the record format
of ``sdgan_jax.datasets.features`` stores) drawn from landmark polygons (the default when no
face parser is at hand):

  skin         the face mask
  nose         27-35: the bridge (widened by 0.1 eye distance each side of 27) to the base
  upper_lip    outer 48-54 closed by inner 64-60
  lower_lip    outer 54-59, 48 closed by inner 60, 67-64
  inner_mouth  60-67
  left/right_brow  17-21 / 22-26 (the upper brow contour) thickened downward by 0.15 eye
               distance
  left/right_eye   36-41 / 42-47

"left"/"right" are image left/right (see ``sdgan_jax.faces.landmarks``): 'left_eye' is
36-41 and 'left_brow' is 17-21, the brow above it. Parts are painted in that order, so the
small parts (eyes, brows, inner mouth) win where polygons overlap, and then clipped to the
mask: every pixel of classes 1-9 lies inside the mask. 'hair' (10) is never drawn (left as
background): landmarks say nothing about hair.

Polygons are rasterised as their interior (pixel centres inside, ``skimage.draw.polygon``)
plus their outline (lines between the rounded vertices), so thin parts -- a closed mouth's
inner lip line, the eyes at 64 px -- still get pixels, and every vertex pixel is covered.
"""

from __future__ import annotations

import numpy as np

from sdgan_jax.faces import landmarks as lm

# Helen-style 11 classes (docs/data.md). The face mask covers classes 1-9.
SEMANTIC_CLASSES = (
  'background',
  'skin',
  'left_brow',
  'right_brow',
  'left_eye',
  'right_eye',
  'nose',
  'upper_lip',
  'inner_mouth',
  'lower_lip',
  'hair',
)
NUM_CLASSES = len(SEMANTIC_CLASSES)
MASKED_CLASSES = tuple(range(1, 10))

FOREHEAD_MARGIN = 0.3  # of the face height (mean brow point -> chin)
BROW_THICKNESS = 0.15  # of the eye distance
NOSE_HALF_WIDTH = 0.1  # of the eye distance, at the top of the bridge

CLASS_IDS = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}


def _mirror_classes() -> np.ndarray:
  """Class id -> class id of the same part after a horizontal flip (left_x <-> right_x)."""
  table = np.arange(NUM_CLASSES, dtype=np.int32)
  for name, i in CLASS_IDS.items():
    for a, b in (('left_', 'right_'), ('right_', 'left_')):
      if name.startswith(a):
        table[i] = CLASS_IDS[b + name[len(a) :]]
  return table


# What a horizontal flip does to a semantic map's classes: the flip augmentations of the
# input pipeline and of the face-parsing batches share it.
MIRROR_CLASSES = _mirror_classes()
# Painting order after skin: later parts win where polygons overlap.
_PAINT_ORDER = (
  'nose',
  'upper_lip',
  'lower_lip',
  'inner_mouth',
  'left_brow',
  'right_brow',
  'left_eye',
  'right_eye',
)


def _face_axes(points: np.ndarray):
  """Unit vectors along the eye line (left -> right) and down the face, and the eye distance."""
  left, right = lm.eye_centres(points)
  across = right - left
  iod = float(np.linalg.norm(across))
  if iod < 1e-6:
    raise ValueError('the two eye centres coincide: these are not 68-point face landmarks')
  across /= iod
  down = np.array([-across[1], across[0]])
  if (lm.mouth_centre(points) - (left + right) / 2) @ down < 0:
    down = -down  # a mirrored landmark set: keep "down" towards the mouth
  return across, down, iod


def _rasterise(canvas: np.ndarray, polygon: np.ndarray, value: int) -> None:
  """Paints the interior and the outline of ``polygon`` [N, 2] (x, y) into ``canvas``."""
  from skimage import draw  # pylint: disable=import-outside-toplevel

  h, w = canvas.shape
  rr, cc = draw.polygon(polygon[:, 1], polygon[:, 0], shape=(h, w))
  canvas[rr, cc] = value
  vertices = np.round(polygon).astype(np.int64)
  for (c0, r0), (c1, r1) in zip(vertices, np.roll(vertices, -1, axis=0)):
    rr, cc = draw.line(r0, c0, r1, c1)
    keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    canvas[rr[keep], cc[keep]] = value


def _check_resolution(resolution) -> int:
  if int(resolution) != resolution or resolution < 8:
    raise ValueError(f'resolution must be an integer >= 8, got {resolution!r}')
  return int(resolution)


def face_mask_polygon(landmarks) -> np.ndarray:
  """[27, 2] (x, y): the jaw line 0-16, then the brows 26..17 raised by the forehead margin."""
  points = lm.check_landmarks(landmarks)
  _, down, _ = _face_axes(points)
  brows = points[np.concatenate([lm.LEFT_BROW, lm.RIGHT_BROW])]
  height = (points[lm.CHIN] - brows.mean(0)) @ down
  raised = brows[::-1] - FOREHEAD_MARGIN * max(height, 0.0) * down
  return np.concatenate([points[lm.JAW], raised])


def face_mask(landmarks, resolution: int) -> np.ndarray:
  """uint8 {0, 1} [R, R, 1] face mask for crop-space ``landmarks``."""
  r = _check_resolution(resolution)
  canvas = np.zeros((r, r), np.uint8)
  _rasterise(canvas, face_mask_polygon(landmarks), 1)
  return canvas[..., None]


def part_polygons(landmarks) -> dict[str, np.ndarray]:
  """Class name -> [N, 2] (x, y) polygon of each landmark-drawn face part."""
  p = lm.check_landmarks(landmarks)
  across, down, iod = _face_axes(p)
  half = NOSE_HALF_WIDTH * iod
  thick = BROW_THICKNESS * iod * down

  def brow(idx):
    return np.concatenate([p[idx], p[idx][::-1] + thick])

  return {
    'nose': np.concatenate([[p[27] - half * across], p[lm.NOSE_BASE], [p[27] + half * across]]),
    'upper_lip': np.concatenate([p[48:55], p[[64, 63, 62, 61, 60]]]),
    'lower_lip': np.concatenate([p[[54, 55, 56, 57, 58, 59, 48]], p[[60, 67, 66, 65, 64]]]),
    'inner_mouth': p[lm.INNER_LIPS],
    'left_brow': brow(lm.LEFT_BROW),
    'right_brow': brow(lm.RIGHT_BROW),
    'left_eye': p[lm.LEFT_EYE],
    'right_eye': p[lm.RIGHT_EYE],
  }


def semantic_map(landmarks, resolution: int, mask=None) -> np.ndarray:
  """uint8 [R, R] class ids (``SEMANTIC_CLASSES``) from crop-space 68 ``landmarks``.

  Args:
    landmarks: [68, 2] (x, y) in crop pixels.
    resolution: crop size R.
    mask: the face mask [R, R(, 1)] (nonzero = face); computed from ``landmarks`` if None.
  """
  r = _check_resolution(resolution)
  inside = (face_mask(landmarks, r) if mask is None else np.asarray(mask)).reshape(r, r) > 0
  canvas = np.zeros((r, r), np.uint8)
  canvas[inside] = CLASS_IDS['skin']
  polygons = part_polygons(landmarks)
  for name in _PAINT_ORDER:
    _rasterise(canvas, polygons[name], CLASS_IDS[name])
  canvas[~inside] = CLASS_IDS['background']
  return canvas
