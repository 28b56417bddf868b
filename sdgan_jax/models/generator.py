"""The SDGAN generator as the paper describes it (paper §3.4, Fig. 3), and the preset builder.

Inputs: the masked image (face region blanked), the one-hot semantic map and the identity
feature of another person (§3.3). The masked image goes through a conv and SPADE ResBlks
with downsampling; the result is concatenated with the identity feature reshaped to the
bottleneck grid; then plain residual blocks, SPADE ResBlks with upsampling and a conv to RGB.
``composite`` pastes the generated face into the original image inside the mask.

``generator_from_config`` builds preset 'paper' (``Generator``, this module) or 'authors'
(``AuthorsGenerator``, the authors' released network, ``authors_generator.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.authors_generator import AuthorsGenerator, IdentityEncoder, SpatialAttention
from sdgan_jax.models.layers import Conv, Dtype, avg_pool2, identity_to_grid, upsample_nearest2
from sdgan_jax.models.spade import SPADEResBlock

__all__ = [
  'AuthorsGenerator',
  'Generator',
  'PAPER',
  'PRESETS',
  'ResidualBlock',
  'composite',
  'generator_from_config',
  'identity_to_grid',
  'mask_image',
]


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


class Generator(nn.Module):
  """SDGAN generator, paper §3.4 / Fig. 3.

  Fields (``PAPER`` below is the preset; the authors' released network is the separate
  ``AuthorsGenerator``, whose identity branch and attention gate are available here as
  options):
    stem_features: width of the first conv on the masked image.
    encoder_features / encoder_downsample: SPADE ResBlk widths and whether a 2x average pool
      follows each block.
    identity_branch: 'reshape' (paper: the reshaped identity feature is concatenated as is)
      or 'selective_kernel' (``IdentityEncoder``: conv 64 -> SK units to
      ``identity_features // 2`` and ``identity_features`` channels).
    bottleneck_features / bottleneck_blocks: the fusion conv's width and the plain residual
      blocks after the concatenation.
    decoder_features / decoder_upsample: SPADE ResBlk widths and whether a 2x nearest
      upsampling precedes each block.
    attention_gate: a 3x3 spatial attention gate (``SpatialAttention``) before the RGB conv.
    output_activation: 'sigmoid' (images in [0, 1]) or 'none'.
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
      raise ValueError(
        f'the generator downsamples {downs} times but upsamples {ups} times; '
        'make encoder_downsample and decoder_upsample agree'
      )
    if height != width or height % 2**downs:
      raise ValueError(
        f'input of {height}x{width} px: the generator needs square images whose '
        f'side is a multiple of {2**downs}'
      )
    if self.identity_branch not in ('reshape', 'selective_kernel'):
      raise ValueError(
        f"unknown identity_branch {self.identity_branch!r}: use 'reshape' or 'selective_kernel'"
      )
    if self.output_activation not in ('sigmoid', 'none'):
      raise ValueError(
        f"unknown output_activation {self.output_activation!r}: use 'sigmoid' or 'none'"
      )

  def _spade_block(self, features, name):
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
    """Generates a face: [B,H,W,3] masked image, [B,H,W,C] one-hot map, [B,D] identity."""
    _, height, width, _ = masked_image.shape
    self._check(height, width)
    if semantic.shape[1:3] != (height, width):
      raise ValueError(
        f'semantic map of {semantic.shape[1]}x{semantic.shape[2]} px does not '
        f'match the {height}x{width} px image'
      )
    x = masked_image.astype(self.dtype) if self.dtype else masked_image
    x = Conv(self.stem_features, 3, dtype=self.dtype, name='stem')(x)
    for i, (features, down) in enumerate(zip(self.encoder_features, self.encoder_downsample)):
      x = self._spade_block(features, f'encoder_{i}')(x, semantic, train)
      if down:
        x = avg_pool2(x)

    ident = identity_to_grid(identity.astype(x.dtype), x.shape[1])
    if self.identity_branch == 'selective_kernel':
      widths = (64, self.identity_features // 2, self.identity_features)
      ident = IdentityEncoder(widths, self.spectral_norm, dtype=self.dtype, name='identity')(
        ident, train
      )
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
      x = SpatialAttention(3, self.dtype, name='attention')(x)
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

PRESETS = {'paper': PAPER, 'authors': {}}
GENERATORS = {'paper': Generator, 'authors': AuthorsGenerator}


def generator_from_config(config) -> nn.Module:
  """Builds the generator from ``config.model.generator``: a ``preset`` key ('paper', the
  default: ``Generator`` with ``PAPER``; 'authors': ``AuthorsGenerator`` with its defaults)
  plus overrides of that class's fields (``dtype`` included)."""
  cfg = dict(config)
  preset = cfg.pop('preset', 'paper')
  if preset not in PRESETS:
    raise ValueError(f'unknown model.generator.preset {preset!r}; choose one of {sorted(PRESETS)}')
  cls = GENERATORS[preset]
  kwargs = dict(PRESETS[preset])
  fields = set(cls.__dataclass_fields__) - {'parent', 'name'}
  for key, value in cfg.items():
    if key not in fields:
      raise ValueError(
        f'unknown key model.generator.{key} for preset {preset!r}; valid keys: {sorted(fields)}'
      )
    kwargs[key] = tuple(value) if isinstance(value, list) else value
  return cls(**kwargs)
