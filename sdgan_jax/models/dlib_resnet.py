"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``) in Flax.

The 29-conv ResNet-34 variant dlib trained with a metric loss (99.38% on LFW), laid out as
face-api.js's ``FaceRecognitionNet`` port so its tfjs weights convert 1:1
(``sdgan_jax.converters.dlib_resnet``):

* stem: conv 7x7/2 'valid' (32) + scale + ReLU, max-pool 3x3/2 'valid';
* residual blocks (conv 3x3 + scale + ReLU, conv 3x3 + scale, add, ReLU): 3 x 32,
  down + 3 x 64, down + 2 x 128, down + 2 x 256, down (256);
* downsampling blocks: first conv 3x3/2 'valid'; the shortcut is a 2x2/2 average pool and
  the two branches are added dlib-style: the smaller one zero-padded at the end (bottom,
  right, extra channels);
* global average pool, fully connected 256 -> 128 without bias.

dlib's batch norms were folded into per-channel "scale layers" (``y * scale + bias``) after
each conv. On a 150x150 input the maps are 72 -> 35 -> 17 -> 8 -> 4 -> 2 (the 8 -> 3 and
4 -> 1 convs are padded to the shortcut's 4 and 2).

Input: aligned face chips in [0, 1], NHWC RGB, as ``dlib.get_face_chip(img, shape5, 150,
0.25)`` makes them; other sizes are resized (bilinear) to 150x150. Inside, dlib's
``input_rgb_image_sized<150>`` convention: ``(255 * x - mean_rgb) / 256``.

Output: the raw 128-d descriptor, as dlib returns it (not L2-normalised; norms are close
to but not exactly 1). Two faces are the same person when the Euclidean distance of their
descriptors is below 0.6 (dlib's threshold).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Dtype
from sdgan_jax.perf import xla_options

INPUT_SIZE = 150
MEAN_RGB = (122.782, 117.001, 104.298)
# dlib's input layer divides by 256 (face-api.js uses 255; the 256 matches dlib better).
INPUT_DIVISOR = 256.0
SAME_PERSON_THRESHOLD = 0.6

# (name, features, downsample) of each residual block, in order.
BLOCKS = (
  ('conv32_1', 32, False),
  ('conv32_2', 32, False),
  ('conv32_3', 32, False),
  ('conv64_down', 64, True),
  ('conv64_1', 64, False),
  ('conv64_2', 64, False),
  ('conv64_3', 64, False),
  ('conv128_down', 128, True),
  ('conv128_1', 128, False),
  ('conv128_2', 128, False),
  ('conv256_down', 256, True),
  ('conv256_1', 256, False),
  ('conv256_2', 256, False),
  ('conv256_down_out', 256, True),
)


class Scale(nn.Module):
  """Per-channel affine ``x * scale + bias`` (dlib's ``affine_`` = frozen batch norm)."""

  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    dtype = self.dtype or x.dtype
    return x * scale.astype(dtype) + bias.astype(dtype)


class ConvScale(nn.Module):
  """Conv (with bias) -> scale layer -> optional ReLU; stride 2 convs are unpadded."""

  features: int
  kernel_size: int = 3
  strides: int = 1
  relu: bool = True
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    # dlib pads only stride-1 convs (by k // 2).
    padding = 'VALID' if self.strides != 1 else ((k // 2, k // 2), (k // 2, k // 2))
    x = nn.Conv(
      self.features,
      (k, k),
      self.strides,
      padding=padding,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='conv',
    )(x)
    x = Scale(self.dtype, self.param_dtype, name='scale')(x)
    return nn.relu(x) if self.relu else x


def _add_zero_padded(a: jax.Array, b: jax.Array) -> jax.Array:
  """Adds two NHWC maps of different sizes, padding each at the end (dlib's add_prev)."""
  shape = [max(p, q) for p, q in zip(a.shape, b.shape)]

  def pad(x):
    return jnp.pad(x, [(0, s - d) for s, d in zip(shape, x.shape)])

  return pad(a) + pad(b)


class ResidualBlock(nn.Module):
  """Two 3x3 conv+scale layers with an identity or average-pool shortcut."""

  features: int
  downsample: bool = False
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = ConvScale(self.features, strides=2 if self.downsample else 1, name='conv1', **kw)(x)
    y = ConvScale(self.features, relu=False, name='conv2', **kw)(y)
    if self.downsample:
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return nn.relu(_add_zero_padded(y, x.astype(y.dtype)))


def preprocess(images: jax.Array) -> jax.Array:
  """[0, 1] RGB NHWC face chips -> dlib's network input at 150x150."""
  n, h, w, c = images.shape
  if c != 3:
    raise ValueError(f'expected RGB images (3 channels), got shape {images.shape}')
  x = images.astype(jnp.float32)
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, c), method='linear')
  return (x * 255.0 - jnp.asarray(MEAN_RGB, jnp.float32)) / INPUT_DIVISOR


class DlibResNet(nn.Module):
  """dlib's 128-d face descriptor network (face-api.js ``FaceRecognitionNet`` layout).

  ``__call__(images)`` takes [0, 1] RGB NHWC aligned face chips and returns raw [N, 128]
  descriptors (see the module docstring). Inference only: there are no batch statistics.
  """

  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = preprocess(images)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = ConvScale(32, kernel_size=7, strides=2, name='conv32_down', **kw)(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    for name, features, down in BLOCKS:
      x = ResidualBlock(features, down, name=name, **kw)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(128, use_bias=False, name='fc', **kw)(x)
    return x.astype(jnp.float32)


@functools.cache
def jitted_apply() -> Callable:
  """One jitted ``DlibResNet().apply`` per process: the identity bank, the anonymizer's
  identity check and the evaluation share its compiled programs."""
  return xla_options.jit_network(DlibResNet().apply)
