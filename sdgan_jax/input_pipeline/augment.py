"""One decoded record -> model inputs, with a training augmentation (docs/training.md
"Augmentation"), one of ``PRESETS``:

* 'shift_flip' (the paper recipe): resize the R-px record to 144/128 R, a random R crop,
  resize to the training resolution, a random horizontal flip;
* 'authors' (their data loader): LANCZOS resize to 144/128 R, a random box whose four edges
  are drawn independently (72-108 px a side at R = 128: a 1.33-2x zoom with aspect jitter),
  LANCZOS resize of the box to the training resolution, no flip. The mask, the semantic map
  and the landmarks follow the image (their loader leaves the map uncropped:
  docs/deviations.md).

Landmarks are (x, y) with pixel centres at integer coordinates (``sdgan_jax.faces``);
"left"/"right" are image left/right, so a horizontal flip swaps the left/right semantic
classes and the left/right landmark indices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from sdgan_jax.datasets.features import NUM_LANDMARKS
from sdgan_jax.faces.masks import MIRROR_CLASSES

# The authors resize the 128-px crops to 144 before a random crop (docs/training.md).
AUTHORS_RESIZE_SCALE = 144 / 128
CROPS = ('shift', 'zoom')


def _mirror_landmarks() -> np.ndarray:
  """Landmark index -> index of its mirror image in the 68-point iBUG scheme."""
  pairs = [(i, 16 - i) for i in range(8)]  # jaw
  pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
  pairs += [(31, 35), (32, 34)]  # nose base
  pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
  pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
  pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
  table = np.arange(NUM_LANDMARKS, dtype=np.int32)
  for a, b in pairs:
    table[a], table[b] = b, a
  return table


MIRROR_LANDMARKS = _mirror_landmarks()


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training augmentation (docs/network.md: "resize 144, random crop, resize 128").

  Attributes:
    flip_prob: probability of a horizontal flip (image, mask, semantic map and landmarks
      together; left/right classes and landmarks swapped).
    resize_scale: the record (R px) is resized to ``round(R * resize_scale)`` px and a
      random crop taken before the resize to the output resolution; None or 1 for no crop
      jitter. The authors' value is 144/128.
    crop: 'shift' (an R x R crop at a random offset, bilinear resizes) or 'zoom' (the
      authors': a box with independently drawn edges, ``_zoom_box``, LANCZOS resizes).
  """

  flip_prob: float = 0.5
  resize_scale: float | None = AUTHORS_RESIZE_SCALE
  crop: str = 'shift'

  def __post_init__(self):
    if self.crop not in CROPS:
      raise ValueError(f'crop must be one of {CROPS}, got {self.crop!r}')
    if self.crop == 'zoom' and not self.resize_scale:
      raise ValueError("crop='zoom' cuts its box from the resized record: set resize_scale")
    if not 0.0 <= self.flip_prob <= 1.0:
      raise ValueError(f'flip_prob must be in [0, 1], got {self.flip_prob}')
    if self.resize_scale is not None and self.resize_scale < 1.0:
      raise ValueError(
        f'resize_scale must be >= 1 (the crop is the record size), got {self.resize_scale}'
      )


NO_AUGMENTATION = Augmentation(flip_prob=0.0, resize_scale=None)
# The choices of ``config.data.augmentation``.
PRESETS = {'shift_flip': Augmentation(), 'authors': Augmentation(flip_prob=0.0, crop='zoom')}


def stateless_seed(seed: int, counter) -> tf.Tensor:
  """The int64 [2] seed of TensorFlow's stateless random ops for sample ``counter``."""
  return tf.stack([tf.constant(seed % (1 << 63), tf.int64), tf.cast(counter, tf.int64)])


def _resize(x, size: int, method: str):
  if x.shape[0] == size:
    return tf.cast(x, tf.float32) if method == 'bilinear' else x
  if method == 'nearest':
    return tf.image.resize(x, [size, size], method='nearest')
  # Antialiased bilinear: a triangle filter as wide as the scale when shrinking (area-like).
  return tf.image.resize(tf.cast(x, tf.float32), [size, size], method='bilinear', antialias=True)


def _scale_points(points, scale: float):
  """Maps (x, y) under a resize by ``scale`` (pixel centres at integer coordinates)."""
  return points if scale == 1 else (points + 0.5) * scale - 0.5


def _random_crop(image, planes: dict, points, size: int, crop_seed):
  """Resizes the R-px record to ``size`` px and cuts a random R x R crop of it."""
  r = int(image.shape[0])
  image = _resize(image, size, 'bilinear')
  planes = {k: _resize(v, size, 'nearest') for k, v in planes.items()}
  offset = tf.random.stateless_uniform([2], crop_seed, 0, size - r + 1, dtype=tf.int32)
  image = tf.slice(image, [offset[0], offset[1], 0], [r, r, 3])
  planes = {k: tf.slice(v, [offset[0], offset[1], 0], [r, r, 1]) for k, v in planes.items()}
  if points is not None:
    points = _scale_points(points, size / r) - tf.cast(offset[::-1], tf.float32)
  return image, planes, points


def _zoom_box(size: int, crop_seed) -> tuple[tf.Tensor, tf.Tensor]:
  """The authors' random box in a ``size``-px image: ``(top-left, bottom-right)`` as int32
  (y, x) corners, the bottom-right exclusive. Each edge lies between a quarter and three
  eighths of the side from the centre, drawn independently: 72-108 px a side when
  ``size`` is 144, truncated to whole pixels as their PIL box is."""
  u = tf.random.stateless_uniform([4], crop_seed)  # left, top, right, bottom
  centre, inner, spread = size / 2, size / 4, size / 8
  low = tf.cast(tf.floor(centre - inner - spread * u[:2]), tf.int32)[::-1]
  high = tf.cast(tf.floor(centre + inner + spread * u[2:]), tf.int32)[::-1]
  return low, high


def _lanczos(x, height_width):
  """PIL's LANCZOS: Lanczos-3, its support widened when shrinking (``antialias``)."""
  return tf.image.resize(tf.cast(x, tf.float32), height_width, method='lanczos3', antialias=True)


def _zoom_crop(image, planes: dict, points, size: int, resolution: int, crop_seed):
  """The authors' crop: LANCZOS resize of the R-px record to ``size`` px, a ``_zoom_box``,
  LANCZOS resize of the box to ``resolution``. The mask takes their path (LANCZOS both
  times, face where above 0.2 of full scale); the semantic map is cut from the same box
  with nearest-neighbour resizes (class ids cannot be interpolated)."""
  r = int(image.shape[0])
  low, high = _zoom_box(size, crop_seed)
  extent = high - low
  cut = lambda x: tf.slice(x, [low[0], low[1], 0], [extent[0], extent[1], -1])
  image = _lanczos(cut(_lanczos(image, [size, size])), [resolution, resolution])
  if planes:
    mask = _lanczos(cut(_lanczos(planes['mask'], [size, size])), [resolution, resolution])
    semantic = tf.image.resize(
      cut(_resize(planes['semantic'], size, 'nearest')), [resolution, resolution], method='nearest'
    )
    planes = {'mask': tf.cast(tf.where(mask > 0.2 * 255, 255, 0), tf.uint8), 'semantic': semantic}
  if points is not None:
    scale = tf.cast(resolution, tf.float32) / tf.cast(extent[::-1], tf.float32)  # (x, y)
    points = (_scale_points(points, size / r) - tf.cast(low[::-1], tf.float32) + 0.5) * scale - 0.5
  return image, planes, points


def _random_flip(image, planes: dict, points, flip_prob: float, flip_seed):
  """Mirrors everything with probability ``flip_prob``, left/right classes and landmarks
  swapped."""
  r = int(image.shape[0])
  flip = tf.random.stateless_uniform([], flip_seed) < flip_prob
  image = tf.where(flip, image[:, ::-1], image)
  if planes:
    semantic = planes['semantic']
    mirrored = tf.gather(
      tf.constant(MIRROR_CLASSES, tf.uint8), tf.cast(semantic[:, ::-1], tf.int32)
    )
    planes = {
      'mask': tf.where(flip, planes['mask'][:, ::-1], planes['mask']),
      'semantic': tf.where(flip, mirrored, semantic),
    }
  if points is not None:
    # x -> r - 1 - x, and each point takes the place of its mirror image.
    mirrored = tf.gather(points, MIRROR_LANDMARKS) * [-1.0, 1.0] + [r - 1.0, 0.0]
    points = tf.where(flip, mirrored, points)
  return image, planes, points


def preprocess(
  example: Mapping[str, tf.Tensor],
  seed: tf.Tensor | None,
  resolution: int,
  augmentation: Augmentation = NO_AUGMENTATION,
  image_only: bool = False,
) -> dict[str, tf.Tensor]:
  """One decoded record -> model inputs at ``resolution`` (paper §4.1, docs/network.md).

  Args:
    example: 'image' uint8 [R,R,3], and unless ``image_only`` 'mask' uint8 [R,R,1] (0/255),
      'semantic' uint8 [R,R,1], 'landmarks' float32 [68,2].
    seed: int64 [2] stateless seed of this example's augmentation (unused without one).
    resolution: output size.
    augmentation: ``NO_AUGMENTATION`` for evaluation.
    image_only: process only the image (the contrastive pair).

  Returns:
    'image' float32 [r,r,3] in [0,1]; 'mask' float32 [r,r,1] in {0,1}; 'semantic' uint8
    [r,r]; 'landmarks' float32 [68,2] in output pixels.
  """
  r = int(example['image'].shape[0])
  image = tf.cast(example['image'], tf.float32) / 255.0
  planes = {} if image_only else {'mask': example['mask'], 'semantic': example['semantic']}
  points = None if image_only else tf.cast(example['landmarks'], tf.float32)
  augmented = (
    augmentation.flip_prob > 0
    or (augmentation.resize_scale or 1) > 1
    or augmentation.crop == 'zoom'
  )
  if augmented and seed is None:
    raise ValueError('augmentation needs a stateless seed; pass seed=, or NO_AUGMENTATION')
  if augmented:
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  scale = augmentation.resize_scale
  if augmentation.crop == 'zoom':
    image, planes, points = _zoom_crop(
      image, planes, points, round(r * scale), resolution, crop_seed
    )
  elif scale is not None and round(r * scale) > r:
    image, planes, points = _random_crop(image, planes, points, round(r * scale), crop_seed)
  if augmentation.flip_prob > 0:
    image, planes, points = _random_flip(image, planes, points, augmentation.flip_prob, flip_seed)
  # (LANCZOS overshoots: the clip keeps [0, 1] as PIL's uint8 output does)
  out = {'image': tf.clip_by_value(_resize(image, resolution, 'bilinear'), 0.0, 1.0)}
  if not image_only:
    out['mask'] = tf.cast(_resize(planes['mask'], resolution, 'nearest') > 127, tf.float32)
    out['semantic'] = _resize(planes['semantic'], resolution, 'nearest')[..., 0]
    # the image's size now: R, or the resolution after a 'zoom' crop
    out['landmarks'] = _scale_points(points, resolution / int(image.shape[0]))
  return out
