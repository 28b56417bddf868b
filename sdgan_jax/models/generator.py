"""The SDGAN generator (paper §3.4, Fig. 3) and its paper / authors'-code presets.

Inputs: the masked image (face region blanked), the one-hot semantic map and the identity
feature of another person (§3.3). The masked image goes through a conv and SPADE ResBlks
with downsampling; the result is concatenated with the identity feature reshaped to the
bottleneck grid; then plain residual blocks, SPADE ResBlks with upsampling and a conv to RGB.
``composite`` pastes the generated face into the original image inside the mask.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Conv, Dtype, avg_pool2, upsample_nearest2
from sdgan_jax.models.spade import SPADEResBlock


class ResidualBlock(nn.Module):
  """Plain residual block of the bottleneck: (3x3 conv -> InstanceNorm -> ReLU) x2 + skip."""

  features: int
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = Conv(self.features, 3, dtype=self.dtype, name='conv_0')(x)
    y = nn.relu(nn.InstanceNorm(dtype=self.dtype, name='norm_0')(y))
    y = Conv(self.features, 3, dtype=self.dtype, name='conv_1')(y)
    y = nn.InstanceNorm(dtype=self.dtype, name='norm_1')(y)
    return x + y


class SelectiveKernel(nn.Module):
  """Selective-kernel convolution (Li et al., CVPR 2019), as in the authors' identity branch.

  ``branches`` grouped 3x3 convs with dilation 1, 2, ... are summed, globally pooled and
  squeezed to ``max(features // reduction, min_dim)``; a softmax across branches per channel
  then weighs the branch outputs.
  """

  features: int
  branches: int = 2
  groups: int = 32
  reduction: int = 16
  min_dim: int = 32
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    groups = math.gcd(self.groups, self.features)
    outs = []
    for i in range(self.branches):
      y = Conv(self.features, 3, dilation=i + 1, groups=groups, use_bias=False,
               dtype=self.dtype, name=f'branch_{i}')(x)
      outs.append(nn.relu(nn.InstanceNorm(dtype=self.dtype, name=f'branch_{i}_norm')(y)))
    pooled = jnp.mean(sum(outs), axis=(1, 2))
    z = nn.relu(nn.Dense(max(self.features // self.reduction, self.min_dim), dtype=self.dtype,
                         name='squeeze')(pooled))
    logits = jnp.stack([nn.Dense(self.features, dtype=self.dtype, name=f'select_{i}')(z)
                        for i in range(self.branches)], axis=1)
    attention = jax.nn.softmax(logits.astype(jnp.float32), axis=1).astype(outs[0].dtype)
    return sum(attention[:, i, None, None, :] * outs[i] for i in range(self.branches))


class SKUnit(nn.Module):
  """SKNet bottleneck unit: 1x1 conv -> selective kernel -> 1x1 conv, with a residual."""

  features: int
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mid = self.features // 2
    y = nn.relu(nn.InstanceNorm(dtype=self.dtype)(Conv(mid, 1, dtype=self.dtype)(x)))
    y = SelectiveKernel(mid, dtype=self.dtype)(y)
    y = nn.InstanceNorm(dtype=self.dtype)(Conv(self.features, 1, dtype=self.dtype)(y))
    if x.shape[-1] != self.features:
      x = nn.InstanceNorm(dtype=self.dtype)(Conv(self.features, 1, dtype=self.dtype)(x))
    return nn.relu(x + y)


def identity_to_grid(identity: jax.Array, size: int) -> jax.Array:
  """Reshapes identity vectors [B, D] to an NHWC grid [B, size, size, D / size^2].

  The vector is read channel-major ([B, C, H, W], like a PyTorch ``view``) so that the
  authors' weights map onto ours unchanged.
  """
  batch, dim = identity.shape
  if dim % (size * size):
    raise ValueError(
        f'identity feature size {dim} is not divisible by the bottleneck grid {size}x{size}; '
        f'choose the config key identity_dim as a multiple of {size * size} or change '
        'the number of downsampling blocks')
  grid = identity.reshape(batch, dim // (size * size), size, size)
  return grid.transpose(0, 2, 3, 1)


class SpatialAttentionGate(nn.Module):
  """Spatial attention (CBAM-style): a sigmoid map from channel mean and max, 7x7 conv."""

  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    stats = jnp.concatenate([jnp.mean(x, -1, keepdims=True), jnp.max(x, -1, keepdims=True)],
                            axis=-1)
    gate = nn.sigmoid(Conv(1, 7, dtype=self.dtype, name='conv')(stats))
    return x * gate


class Generator(nn.Module):
  """SDGAN generator, paper §3.4 / Fig. 3.

  Fields (see ``PAPER`` and ``AUTHORS`` below for the two presets):
    stem_features: width of the first conv on the masked image.
    encoder_features / encoder_downsample: SPADE ResBlk widths and whether a 2x average pool
      follows each block.
    identity_branch: 'reshape' (paper: the reshaped identity feature is concatenated as is)
      or 'selective_kernel' (authors: conv -> two SK units -> ``identity_features`` channels).
    bottleneck_features / bottleneck_blocks: the fusion conv's width and the plain residual
      blocks after the concatenation.
    decoder_features / decoder_upsample: SPADE ResBlk widths and whether a 2x nearest
      upsampling precedes each block.
    attention_gate: spatial attention before the RGB conv (authors).
    output_activation: 'sigmoid' (images in [0, 1]) or 'none' (authors).
  """

  stem_features: int = 32
  encoder_features: Sequence[int] = (64, 128, 256, 256)
  encoder_downsample: Sequence[bool] = (True, True, True, True)
  identity_branch: str = 'reshape'
  identity_features: int = 256
  bottleneck_features: int = 256
  bottleneck_blocks: int = 4
  decoder_features: Sequence[int] = (256, 128, 64, 32)
  decoder_upsample: Sequence[bool] = (True, True, True, True)
  attention_gate: bool = False
  output_activation: str = 'sigmoid'
  spade_hidden: int = 128
  spade_norm: str = 'instance'
  spade_fused: bool = True
  spectral_norm: bool = True
  dtype: Dtype = None

  def _check(self, height: int, width: int):
    if len(self.encoder_features) != len(self.encoder_downsample):
      raise ValueError('model.generator.encoder_features and encoder_downsample differ in length')
    if len(self.decoder_features) != len(self.decoder_upsample):
      raise ValueError('model.generator.decoder_features and decoder_upsample differ in length')
    downs, ups = sum(map(bool, self.encoder_downsample)), sum(map(bool, self.decoder_upsample))
    if downs != ups:
      raise ValueError(f'the generator downsamples {downs} times but upsamples {ups} times; '
                       'make encoder_downsample and decoder_upsample agree')
    if height != width or height % 2**downs:
      raise ValueError(f'input of {height}x{width} px: the generator needs square images whose '
                       f'side is a multiple of {2**downs}')
    if self.identity_branch not in ('reshape', 'selective_kernel'):
      raise ValueError(f"unknown identity_branch {self.identity_branch!r}: "
                       "use 'reshape' or 'selective_kernel'")
    if self.output_activation not in ('sigmoid', 'none'):
      raise ValueError(f"unknown output_activation {self.output_activation!r}: "
                       "use 'sigmoid' or 'none'")

  def _spade_block(self, features, name):
    return SPADEResBlock(features, self.spade_hidden, 3, self.spade_norm, self.spade_fused,
                         self.spectral_norm, self.dtype, name=name)

  @nn.compact
  def __call__(self, masked_image: jax.Array, semantic: jax.Array, identity: jax.Array,
               train: bool = False) -> jax.Array:
    """Generates a face: [B,H,W,3] masked image, [B,H,W,C] one-hot map, [B,D] identity."""
    _, height, width, _ = masked_image.shape
    self._check(height, width)
    if semantic.shape[1:3] != (height, width):
      raise ValueError(f'semantic map of {semantic.shape[1]}x{semantic.shape[2]} px does not '
                       f'match the {height}x{width} px image')
    x = masked_image.astype(self.dtype) if self.dtype else masked_image
    x = Conv(self.stem_features, 3, dtype=self.dtype, name='stem')(x)
    for i, (features, down) in enumerate(zip(self.encoder_features, self.encoder_downsample)):
      x = self._spade_block(features, f'encoder_{i}')(x, semantic, train)
      if down:
        x = avg_pool2(x)

    ident = identity_to_grid(identity.astype(x.dtype), x.shape[1])
    if self.identity_branch == 'selective_kernel':
      ident = nn.leaky_relu(Conv(64, 3, dtype=self.dtype, name='identity_conv')(ident), 0.2)
      ident = SKUnit(self.identity_features // 2, self.dtype, name='identity_sk_0')(ident)
      ident = SKUnit(self.identity_features, self.dtype, name='identity_sk_1')(ident)
    x = jnp.concatenate([x, ident], axis=-1)
    x = Conv(self.bottleneck_features, 3, dtype=self.dtype, name='fuse')(x)
    x = nn.relu(nn.InstanceNorm(dtype=self.dtype, name='fuse_norm')(x))
    for i in range(self.bottleneck_blocks):
      x = ResidualBlock(self.bottleneck_features, self.dtype, name=f'bottleneck_{i}')(x)

    for i, (features, up) in enumerate(zip(self.decoder_features, self.decoder_upsample)):
      if up:
        x = upsample_nearest2(x)
      x = self._spade_block(features, f'decoder_{i}')(x, semantic, train)
    if self.attention_gate:
      x = SpatialAttentionGate(self.dtype, name='attention')(x)
    x = Conv(3, 3, dtype=self.dtype, name='to_rgb')(nn.leaky_relu(x, 0.2))
    x = x.astype(jnp.float32)
    return nn.sigmoid(x) if self.output_activation == 'sigmoid' else x


def composite(image: jax.Array, mask: jax.Array, generated: jax.Array) -> jax.Array:
  """``image * (1 - mask) + generated * mask`` (paper §3.4): only the face region changes."""
  return image * (1 - mask) + generated * mask


def mask_image(image: jax.Array, mask: jax.Array) -> jax.Array:
  """Blanks the face region: the generator's masked-image input."""
  return image * (1 - mask)


# Presets. The paper's own description (default): a conv, 4 SPADE ResBlks with downsampling,
# concatenation with the reshaped identity feature, 4 ResNet blocks, 4 SPADE ResBlks with
# upsampling, a conv to RGB.
PAPER = dict(
    stem_features=32,
    encoder_features=(64, 128, 256, 256),
    encoder_downsample=(True, True, True, True),
    identity_branch='reshape',
    bottleneck_features=256,
    bottleneck_blocks=4,
    decoder_features=(256, 128, 64, 32),
    decoder_upsample=(True, True, True, True),
    attention_gate=False,
    output_activation='sigmoid',
)

# What the authors' code does at 128 px (DESIGN §2): a 3->11 conv, encoder ResBlks
# 11->32->64->128->256->256 with 4 poolings to 8x8, the SK identity branch to 256 channels,
# fusion 512->256 and 4 residual blocks, decoder 256->256->128->64->32->16 with 4 nearest
# upsamplings, a spatial attention gate and no output activation. Pooling follows blocks
# 1-4 and upsampling precedes blocks 1-4; this placement gives the measured ~41 GFLOP
# forward (tests/test_generator.py checks it with XLA's cost analysis).
AUTHORS = dict(
    stem_features=11,
    encoder_features=(32, 64, 128, 256, 256),
    encoder_downsample=(True, True, True, True, False),
    identity_branch='selective_kernel',
    identity_features=256,
    bottleneck_features=256,
    bottleneck_blocks=4,
    decoder_features=(256, 128, 64, 32, 16),
    decoder_upsample=(True, True, True, True, False),
    attention_gate=True,
    output_activation='none',
)

PRESETS = {'paper': PAPER, 'authors': AUTHORS}


def generator_from_config(config) -> Generator:
  """Builds the generator from ``config.model.generator`` (a preset name plus overrides)."""
  cfg = dict(config)
  preset = cfg.pop('preset', 'paper')
  if preset not in PRESETS:
    raise ValueError(f'unknown model.generator.preset {preset!r}; choose one of {sorted(PRESETS)}')
  kwargs = dict(PRESETS[preset])
  fields = set(Generator.__dataclass_fields__) - {'parent', 'name'}
  for key, value in cfg.items():
    if key not in fields:
      raise ValueError(f'unknown key model.generator.{key}; valid keys: {sorted(fields)}')
    kwargs[key] = tuple(value) if isinstance(value, list) else value
  return Generator(**kwargs)
