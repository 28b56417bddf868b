"""Building blocks shared by the SDGAN networks.

Conventions for every module in ``sdgan_jax.models``:

* tensors are NHWC; images are float in [0, 1] unless a docstring says otherwise;
* ``dtype`` is the compute dtype (``None`` keeps the input's, ``jnp.bfloat16`` for mixed
  precision) while parameters stay in ``param_dtype`` (float32);
* ``__call__(..., train: bool)``: with ``train=True`` the spectral-norm power iteration and
  batch statistics are updated, so ``apply`` must be given ``mutable=['batch_stats']``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class Conv(nn.Module):
  """2-D convolution with optional spectral norm and reflection padding.

  Spectral normalisation (Miyato et al. 2018) uses Flax's ``nn.SpectralNorm``, one power
  iteration per training step; its state lives in the ``batch_stats`` collection.
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  groups: int = 1
  use_bias: bool = True
  spectral_norm: bool = False
  padding_mode: str = 'zeros'  # 'zeros' | 'reflect'
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.padding_mode not in ('zeros', 'reflect'):
      raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {self.padding_mode!r}")
    pad = self.dilation * (self.kernel_size - 1) // 2
    if self.padding_mode == 'reflect' and pad:
      x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
      padding = 'VALID'
    else:
      padding = ((pad, pad), (pad, pad))
    conv = nn.Conv(
      self.features,
      (self.kernel_size, self.kernel_size),
      strides=self.strides,
      padding=padding,
      kernel_dilation=self.dilation,
      feature_group_count=self.groups,
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    if self.spectral_norm:
      # No compute dtype on the wrapper: it writes the normalised kernel back into the
      # params at init, which must stay in param_dtype; the inner conv casts for compute.
      return nn.SpectralNorm(conv, param_dtype=self.param_dtype)(x, update_stats=train)
    return conv(x)


class Dense(nn.Module):
  """Dense layer with optional spectral norm (same state handling as ``Conv``)."""

  features: int
  use_bias: bool = True
  spectral_norm: bool = False
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dense = nn.Dense(
      self.features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype
    )
    if self.spectral_norm:
      return nn.SpectralNorm(dense, param_dtype=self.param_dtype)(x, update_stats=train)
    return dense(x)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2 (the encoders' downsampling)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, VALID (VGG's pools) as a reshape and a max.

  The values are ``nn.max_pool``'s, but the gradient is an elementwise mask of each window's
  maxima, where a max reduce-window's gradient (select-and-scatter) runs on XLA's CPU backend
  as index tensors, a variadic reduce-window and a scatter, and the demo train step
  differentiates VGG-16 three times. Where a window holds several equal
  maxima the gradient is split among them instead of going to one; behind VGG's ReLUs those
  are zeros, whose gradient the ReLU stops anyway.
  """
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]  # VALID: an odd last row or column is dropped
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def upsample_nearest2(x: jax.Array) -> jax.Array:
  """2x nearest-neighbour upsampling (the decoder's upsampling)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def resize_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
  """Nearest-neighbour resize of an NHWC map, e.g. a one-hot semantic map to a feature size.

  Integer factors use strided slicing / repetition so that one-hot maps stay exactly one-hot;
  downsampling takes the top-left pixel of each cell, as PyTorch's ``interpolate(mode='nearest')``
  in the authors' SPADE code does.
  """
  _, h, w, _ = x.shape
  if (h, w) == (height, width):
    return x
  if h % height == 0 and w % width == 0:
    return x[:, :: h // height, :: w // width, :]
  if height % h == 0 and width % w == 0:
    return jnp.repeat(jnp.repeat(x, height // h, axis=1), width // w, axis=2)
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method='nearest')


def identity_to_grid(identity: jax.Array, size: int) -> jax.Array:
  """Reshapes identity vectors [B, D] to an NHWC grid [B, size, size, D / size^2].

  The vector is read channel-major ([B, C, H, W], like a PyTorch ``view``) so that the
  authors' weights map onto ours unchanged (paper §3.3-3.4: the identity feature joins the
  generator at its bottleneck).
  """
  batch, dim = identity.shape
  if dim % (size * size):
    raise ValueError(
      f'identity feature size {dim} is not divisible by the bottleneck grid {size}x{size}; '
      f'choose the config key identity_dim as a multiple of {size * size} or change '
      'the number of downsampling blocks'
    )
  grid = identity.reshape(batch, dim // (size * size), size, size)
  return grid.transpose(0, 2, 3, 1)


def norm_layer(
  kind: str,
  dtype: Dtype = None,
  train: bool = False,
  name: str | None = None,
  use_affine: bool = True,
):
  """Returns a normalisation callable: 'instance', 'batch' or 'none'.

  Instance norm is per sample (no running statistics), which keeps inference independent of
  the batch; 'batch' keeps running averages in ``batch_stats``.
  """
  if kind == 'instance':
    return nn.InstanceNorm(use_bias=use_affine, use_scale=use_affine, dtype=dtype, name=name)
  if kind == 'batch':
    return nn.BatchNorm(
      use_running_average=not train,
      use_bias=use_affine,
      use_scale=use_affine,
      momentum=0.9,
      dtype=dtype,
      name=name,
    )
  if kind == 'none':
    return lambda x: x
  raise ValueError(f"unknown norm {kind!r}: use 'instance', 'batch' or 'none'")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images: jax.Array, dtype: Dtype = None) -> jax.Array:
  """[0, 1] RGB -> ImageNet mean/std normalised, in ``dtype`` (default: float32)."""
  dtype = dtype or jnp.float32
  mean = jnp.asarray(IMAGENET_MEAN, dtype)
  std = jnp.asarray(IMAGENET_STD, dtype)
  return (images.astype(dtype) - mean) / std


def count_params(variables) -> int:
  """Number of trainable parameters (the ``params`` collection) in a variable tree."""
  params = variables.get('params', variables) if hasattr(variables, 'get') else variables
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
