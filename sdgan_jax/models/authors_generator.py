"""The SDGAN generator as the authors' released network builds it (paper §3.4, Fig. 3).

``generator_from_config`` picks ``AuthorsGenerator`` for ``model.generator.preset:
authors``. Where the released network differs from the paper's description (``Generator``,
preset 'paper'), this module follows the released network:

* a 3x3 conv maps the masked image to as many channels as the semantic map has classes;
* encoder: five SPADE ResBlks 11->32->64->128->256->256 whose SPADE normalises with batch
  statistics; a 2x average pool follows every block but the first (128 px -> 8x8);
* identity branch: the identity vector, read channel-major as a grid of the bottleneck's
  size, goes through a reflect-padded conv and two selective-kernel units (``SKUnit``) to
  256 channels;
* fusion: concatenation -> reflect-padded spectral-norm conv -> affine instance norm (no
  activation), then 4 residual blocks of reflect-padded spectral-norm convs;
* decoder: five SPADE ResBlks 256->256->128->64->32->16; a 2x nearest upsampling precedes
  all but the last two and one follows the last; then a spatial attention gate
  (``SpatialAttention``, 3x3), LeakyReLU(0.2) and a 3x3 conv to RGB, with no output
  activation (the output is composited into the image outside the network, paper §3.4).

At 128 px and 11 classes it has 16.88 M trainable parameters and does 41.2 GFLOP per image
forward (multiply-add = 2 FLOP, convolutions and dense layers only; see
``sdgan_jax.perf.flops.network_flops``). It runs at any side divisible by 16: at 64 px
the bottleneck is 4x4 and the identity grid has ``identity_dim / 16`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import (
  Conv,
  Dtype,
  avg_pool2,
  identity_to_grid,
  norm_layer,
  upsample_nearest2,
)
from sdgan_jax.models.spade import SPADEResBlock

LRELU_SLOPE = 0.2
NORM_EPS = 1e-5  # PyTorch's InstanceNorm2d / BatchNorm2d epsilon


def _instance_norm(affine: bool, dtype: Dtype, name: str | None = None) -> nn.Module:
  return nn.InstanceNorm(
    epsilon=NORM_EPS, use_bias=affine, use_scale=affine, dtype=dtype, name=name
  )


def _reflect_conv(
  features: int, kernel_size: int, spectral_norm: bool, dtype: Dtype, name: str
) -> Conv:
  """Reflection padding + (spectral-norm) conv with bias: the fusion, residual and
  identity-stem conv of the authors' network."""
  return Conv(
    features,
    kernel_size,
    spectral_norm=spectral_norm,
    padding_mode='reflect',
    dtype=dtype,
    name=name,
  )


class SelectiveKernelConv(nn.Module):
  """Selective-kernel convolution (Li et al., CVPR 2019) of the identity branch.

  Branch ``i`` is a grouped ``(3 + 2i) x (3 + 2i)`` conv (zero padding ``1 + i``, bias) ->
  BatchNorm -> ReLU. The branch sum is averaged over space and mapped linearly (no
  activation) to ``max(features // reduction, min_dim)`` values; one linear map per branch
  back to ``features`` and a softmax across branches give per-channel branch weights.
  """

  features: int
  branches: int = 2
  groups: int = 8
  reduction: int = 2
  min_dim: int = 32
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.features % self.groups:
      raise ValueError(
        f'selective-kernel width {self.features} is not divisible by its '
        f'{self.groups} groups; change the identity widths or sk_groups'
      )
    outs = []
    for i in range(self.branches):
      y = Conv(self.features, 3 + 2 * i, groups=self.groups, dtype=self.dtype, name=f'branch_{i}')(
        x
      )
      y = norm_layer('batch', self.dtype, train, name=f'branch_{i}_bn')(y)
      outs.append(nn.relu(y))
    pooled = jnp.mean(sum(outs), axis=(1, 2))
    z = nn.Dense(
      max(self.features // self.reduction, self.min_dim), dtype=self.dtype, name='squeeze'
    )(pooled)
    logits = jnp.stack(
      [
        nn.Dense(self.features, dtype=self.dtype, name=f'select_{i}')(z)
        for i in range(self.branches)
      ],
      axis=1,
    )
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=1).astype(outs[0].dtype)
    return sum(weights[:, i, None, None, :] * outs[i] for i in range(self.branches))


class SKUnit(nn.Module):
  """Selective-kernel bottleneck unit: 1x1 conv -> IN -> SK conv -> IN -> 1x1 conv -> IN.

  The middle width is ``features // 2``; instance norms carry no affine parameters. The
  shortcut is a 1x1 conv + IN where the width changes, else the input; the output is the
  plain sum (no activation).
  """

  features: int
  branches: int = 2
  groups: int = 8
  reduction: int = 2
  min_dim: int = 32
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    mid = self.features // 2
    y = _instance_norm(False, self.dtype)(Conv(mid, 1, dtype=self.dtype, name='reduce')(x))
    y = SelectiveKernelConv(
      mid, self.branches, self.groups, self.reduction, self.min_dim, self.dtype, name='sk'
    )(y, train)
    y = _instance_norm(False, self.dtype)(y)
    y = _instance_norm(False, self.dtype)(
      Conv(self.features, 1, dtype=self.dtype, name='expand')(y)
    )
    if x.shape[-1] != self.features:
      x = _instance_norm(False, self.dtype)(
        Conv(self.features, 1, dtype=self.dtype, name='shortcut')(x)
      )
    return x + y


class IdentityEncoder(nn.Module):
  """Encodes the identity grid: reflect-padded conv (``features[0]``) -> LeakyReLU -> affine
  IN, then one ``SKUnit`` -> LeakyReLU per further width (64, 128, 256 in the authors'
  network)."""

  features: Sequence[int] = (64, 128, 256)
  spectral_norm: bool = True
  branches: int = 2
  groups: int = 8
  reduction: int = 2
  min_dim: int = 32
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = _reflect_conv(self.features[0], 3, self.spectral_norm, self.dtype, 'conv')(x, train)
    x = _instance_norm(True, self.dtype, 'norm')(nn.leaky_relu(x, LRELU_SLOPE))
    for i, features in enumerate(self.features[1:]):
      x = SKUnit(
        features,
        self.branches,
        self.groups,
        self.reduction,
        self.min_dim,
        self.dtype,
        name=f'sk_{i}',
      )(x, train)
      x = nn.leaky_relu(x, LRELU_SLOPE)
    return x


class SpatialAttention(nn.Module):
  """Spatial attention gate (CBAM, Woo et al. 2018): ``x * sigmoid(conv([mean_c, max_c]))``
  with a bias-free, zero-padded ``kernel_size`` conv from the channel mean and max."""

  kernel_size: int = 3
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    stats = jnp.concatenate(
      [jnp.mean(x, -1, keepdims=True), jnp.max(x, -1, keepdims=True)], axis=-1
    )
    gate = nn.sigmoid(
      Conv(1, self.kernel_size, use_bias=False, dtype=self.dtype, name='conv')(stats)
    )
    return x * gate


class ResidualBlock(nn.Module):
  """Bottleneck residual block: (reflect-padded SN conv -> affine IN) -> ReLU ->
  (reflect-padded SN conv -> affine IN), plus the input."""

  features: int
  spectral_norm: bool = True
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = _reflect_conv(self.features, 3, self.spectral_norm, self.dtype, 'conv_0')(x, train)
    y = nn.relu(_instance_norm(True, self.dtype, 'norm_0')(y))
    y = _reflect_conv(self.features, 3, self.spectral_norm, self.dtype, 'conv_1')(y, train)
    return x + _instance_norm(True, self.dtype, 'norm_1')(y)


class AuthorsGenerator(nn.Module):
  """The authors' SDGAN generator (module docstring; paper §3.4).

  Fields:
    align_features: width of the first conv on the masked image (None: the semantic map's
      number of classes, 11).
    encoder_features: SPADE ResBlk widths; a 2x average pool follows all but the first.
    identity_features: the identity branch's conv width, then one SK unit per width.
    bottleneck_features / bottleneck_blocks: the fusion conv's width and the residual blocks.
    decoder_features: SPADE ResBlk widths; a 2x nearest upsampling precedes all but the last
      two, and one follows the last. There must be as many upsamplings as poolings.
    attention_kernel: the spatial attention conv's kernel size.
    sk_*: the SK convs' branches (kernels 3, 5, ...), groups, reduction and minimum width.
  """

  align_features: int | None = None
  encoder_features: Sequence[int] = (32, 64, 128, 256, 256)
  identity_features: Sequence[int] = (64, 128, 256)
  bottleneck_features: int = 256
  bottleneck_blocks: int = 4
  decoder_features: Sequence[int] = (256, 128, 64, 32, 16)
  attention_kernel: int = 3
  spade_hidden: int = 128
  spade_norm: str = 'batch'
  spade_fused: bool = True
  spectral_norm: bool = True
  sk_branches: int = 2
  sk_groups: int = 8
  sk_reduction: int = 2
  sk_min_dim: int = 32
  dtype: Dtype = None

  @property
  def num_downsamplings(self) -> int:
    return len(self.encoder_features) - 1

  def _check(self, masked_image: jax.Array, semantic: jax.Array):
    if len(self.encoder_features) < 2 or len(self.decoder_features) < 2:
      raise ValueError(
        'model.generator.encoder_features and decoder_features need at least two blocks each'
      )
    downs, ups = self.num_downsamplings, len(self.decoder_features) - 1
    if downs != ups:
      raise ValueError(
        f'the generator downsamples {downs} times but upsamples {ups} times; '
        'give encoder_features and decoder_features the same length'
      )
    _, height, width, _ = masked_image.shape
    if height != width or height % 2**downs:
      raise ValueError(
        f'input of {height}x{width} px: the generator needs square images whose '
        f'side is a multiple of {2**downs}'
      )
    if semantic.shape[1:3] != (height, width):
      raise ValueError(
        f'semantic map of {semantic.shape[1]}x{semantic.shape[2]} px does not '
        f'match the {height}x{width} px image'
      )

  def _spade_block(self, features: int, name: str) -> SPADEResBlock:
    return SPADEResBlock(
      features,
      self.spade_hidden,
      3,
      self.spade_norm,
      self.spade_fused,
      self.spectral_norm,
      self.dtype,
      name=name,
    )

  @nn.compact
  def __call__(
    self, masked_image: jax.Array, semantic: jax.Array, identity: jax.Array, train: bool = False
  ) -> jax.Array:
    """Generates a face: [B,H,W,3] masked image, [B,H,W,C] one-hot map, [B,D] identity.

    Returns float32 [B,H,W,3], unbounded (no output activation).
    """
    self._check(masked_image, semantic)
    x = masked_image.astype(self.dtype) if self.dtype else masked_image
    x = Conv(self.align_features or semantic.shape[-1], 3, dtype=self.dtype, name='align')(x)
    for i, features in enumerate(self.encoder_features):
      x = self._spade_block(features, f'encoder_{i}')(x, semantic, train)
      if i:
        x = avg_pool2(x)

    ident = identity_to_grid(identity.astype(x.dtype), x.shape[1])
    ident = IdentityEncoder(
      self.identity_features,
      self.spectral_norm,
      self.sk_branches,
      self.sk_groups,
      self.sk_reduction,
      self.sk_min_dim,
      self.dtype,
      name='identity',
    )(ident, train)
    x = jnp.concatenate([x, ident], axis=-1)
    x = _reflect_conv(self.bottleneck_features, 3, self.spectral_norm, self.dtype, 'fuse')(x, train)
    x = _instance_norm(True, self.dtype, 'fuse_norm')(x)
    for i in range(self.bottleneck_blocks):
      x = ResidualBlock(
        self.bottleneck_features, self.spectral_norm, self.dtype, name=f'bottleneck_{i}'
      )(x, train)

    last = len(self.decoder_features) - 1
    for i, features in enumerate(self.decoder_features):
      if i < last - 1:
        x = upsample_nearest2(x)
      x = self._spade_block(features, f'decoder_{i}')(x, semantic, train)
    x = upsample_nearest2(x)
    x = SpatialAttention(self.attention_kernel, self.dtype, name='attention')(x)
    x = Conv(3, 3, dtype=self.dtype, name='to_rgb')(nn.leaky_relu(x, LRELU_SLOPE))
    return x.astype(jnp.float32)
