"""VGG-16 convolutional trunk (Simonyan & Zisserman 2015) for the perceptual loss (eq. 7).

The 13 3x3 convolutions of configuration D in torchvision's ``features`` layout
(64, 64, M, 128, 128, M, 256, 256, 256, M, 512 x3, M, 512 x3, M); the classifier head is not
part of it. Parameters are named ``conv1_1`` ... ``conv5_3`` (each ``kernel`` HWIO and
``bias``), 14,714,688 in all. Any image size works: the convolutions are 'same' padded and
the 2x2 max pools floor odd sizes, as in torchvision and Keras.

Callers pass RGB images in [0, 1], NHWC; the module converts them to what the weights were
trained on (``input_convention``):

* ``'torch'``: RGB, ImageNet mean/std normalisation (torchvision's VGG-16);
* ``'caffe'``: BGR, 0-255, minus the per-channel means [103.939, 116.779, 123.68] (the
  original VGG release and Keras' ``VGG16``, i.e. the stored ``vgg16_imagenet`` weights).

The stored weights' metadata (``sdgan_jax.weights.load_metadata(name)['input_convention']``)
says which one a converted file needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Dtype, imagenet_normalize, max_pool2

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
INPUT_CONVENTIONS = ('torch', 'caffe')

# (block, number of convs, width) of VGG-16; every block ends with a 2x2 max pool.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))

# The layer sequence as (tap name, conv name or None for a pool, width).
LAYERS: tuple[tuple[str, str | None, int], ...] = tuple(
  item
  for block, n, width in _BLOCKS
  for item in (
    *((f'relu{block}_{i}', f'conv{block}_{i}', width) for i in range(1, n + 1)),
    (f'pool{block}', None, width),
  )
)
TAPS: tuple[str, ...] = tuple(name for name, _, _ in LAYERS)
CONV_NAMES: tuple[str, ...] = tuple(conv for _, conv, _ in LAYERS if conv)

Taps = str | Sequence[str]


def _as_taps(taps: Taps) -> tuple[str, ...]:
  taps = (taps,) if isinstance(taps, str) else tuple(taps)
  if not taps:
    raise ValueError('Request at least one tap.')
  unknown = [t for t in taps if t not in TAPS]
  if unknown:
    raise ValueError(f'Unknown VGG-16 taps {unknown}; choose from {list(TAPS)}.')
  return taps


def preprocess(images: jax.Array, input_convention: str) -> jax.Array:
  """Maps RGB [0, 1] NHWC images to the network's input space (see the module docstring)."""
  if input_convention == 'torch':
    return imagenet_normalize(images, images.dtype)
  if input_convention == 'caffe':
    return images[..., ::-1] * 255.0 - jnp.asarray(CAFFE_BGR_MEAN, images.dtype)
  raise ValueError(f'input_convention must be one of {INPUT_CONVENTIONS}, got {input_convention!r}')


class VGG16(nn.Module):
  """VGG-16 feature extractor returning named intermediate maps.

  Attributes:
    input_convention: 'torch' or 'caffe' (how the weights expect their input).
    dtype: compute dtype (None: the input's, float32 for integer input).
    param_dtype: parameter dtype.
  """

  input_convention: str = 'caffe'
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, taps: Taps = ('relu3_3',)) -> dict[str, jax.Array]:
    """Returns ``{tap: feature map}`` (NHWC) for each requested tap.

    Taps are ``relu1_1`` ... ``relu5_3`` and ``pool1`` ... ``pool5``. Layers after the last
    requested tap are not computed (nor created by ``init``: initialise with
    ``taps='pool5'`` to get every parameter).
    """
    taps = _as_taps(taps)
    last = max(TAPS.index(t) for t in taps)
    images = jnp.asarray(images)
    dtype = self.dtype or (
      images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32
    )
    x = preprocess(images.astype(dtype), self.input_convention)
    out = {}
    for name, conv, width in LAYERS[: last + 1]:
      if conv is None:
        x = max_pool2(x)
      else:
        x = nn.Conv(
          width,
          (3, 3),
          padding=((1, 1), (1, 1)),
          dtype=dtype,
          param_dtype=self.param_dtype,
          name=conv,
        )(x)
        x = nn.relu(x)
      if name in taps:
        out[name] = x
    return out


def trim_variables(variables: Any, taps: Taps) -> dict:
  """Keeps only the parameters the given taps need (less to capture in a jitted closure)."""
  taps = _as_taps(taps)
  last = max(TAPS.index(t) for t in taps)
  needed = {conv for _, conv, _ in LAYERS[: last + 1] if conv}
  params = variables['params']
  return {'params': {k: v for k, v in params.items() if k in needed}}


def vgg_features_fn(
  variables: Any, tap: Taps = 'relu3_3', *, input_convention: str = 'caffe', dtype: Dtype = None
) -> Callable[[jax.Array], Any]:
  """Returns ``images -> features`` for ``losses.perceptual_loss`` (eq. 7 uses relu3_3).

  Args:
    variables: VGG16 variables, e.g. ``sdgan_jax.weights.load_weights('vgg16_imagenet')``.
    tap: one tap name (the closure returns that map) or a sequence (it returns a list).
    input_convention: what the weights expect; 'caffe' for ``vgg16_imagenet``, in general
      ``load_metadata(name)['input_convention']``.
    dtype: compute dtype of the network.

  The weights are closed over as constants, so ``jax.grad`` of a loss built on the closure
  reaches the images only, never the (frozen) VGG parameters.
  """
  single = isinstance(tap, str)
  taps = _as_taps(tap)
  model = VGG16(input_convention=input_convention, dtype=dtype)
  trimmed = trim_variables(variables, taps)

  def features(images: jax.Array):
    out = model.apply(trimmed, images, taps=taps)
    return out[taps[0]] if single else [out[t] for t in taps]

  return features
