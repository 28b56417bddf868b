"""ResNet trunk (He et al. 2016) shared by the identity network and EAGRNet's backbone.

Torchvision-compatible structure (7x7/2 stem, 3x3/2 max-pool, BasicBlock or Bottleneck
stages, stride on the 3x3 conv) so that pretrained ImageNet weights can be converted 1:1.
``stem='cifar'`` swaps the stem for a 3x3/1 conv without max-pool (the CIFAR-style ResNet
of He et al. §4.2, which the authors' Siamese identity network uses at full resolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Dtype, norm_layer


def _shortcut(
  x: jax.Array, features: int, strides: int, norm: str, dtype: Dtype, train: bool
) -> jax.Array:
  """The residual branch: ``x``, or a strided 1x1 conv + norm where the shape changes
  (torchvision's ``downsample``). Called inside a block's ``__call__``: its layers are
  the block's ``downsample_conv`` and ``downsample_bn``."""
  if x.shape[-1] == features and strides == 1:
    return x
  x = nn.Conv(features, (1, 1), strides, use_bias=False, dtype=dtype, name='downsample_conv')(x)
  return norm_layer(norm, dtype, train, name='downsample_bn')(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection (ResNet-18/34)."""

  features: int
  strides: int = 1
  dilation: int = 1
  norm: str = 'batch'
  dtype: Dtype = None
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    d = self.dilation
    y = nn.Conv(
      self.features,
      (3, 3),
      self.strides,
      padding=((d, d), (d, d)),
      kernel_dilation=d,
      use_bias=False,
      dtype=self.dtype,
      name='conv1',
    )(x)
    y = nn.relu(norm_layer(self.norm, self.dtype, train, name='bn1')(y))
    y = nn.Conv(
      self.features,
      (3, 3),
      padding=((d, d), (d, d)),
      kernel_dilation=d,
      use_bias=False,
      dtype=self.dtype,
      name='conv2',
    )(y)
    y = norm_layer(self.norm, self.dtype, train, name='bn2')(y)
    return nn.relu(_shortcut(x, self.features, self.strides, self.norm, self.dtype, train) + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 bottleneck with 4x expansion (ResNet-50/101)."""

  features: int
  strides: int = 1
  dilation: int = 1
  norm: str = 'batch'
  dtype: Dtype = None
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    d = self.dilation
    out = self.features * self.expansion
    y = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(norm_layer(self.norm, self.dtype, train, name='bn1')(y))
    y = nn.Conv(
      self.features,
      (3, 3),
      self.strides,
      padding=((d, d), (d, d)),
      kernel_dilation=d,
      use_bias=False,
      dtype=self.dtype,
      name='conv2',
    )(y)
    y = nn.relu(norm_layer(self.norm, self.dtype, train, name='bn2')(y))
    y = nn.Conv(out, (1, 1), use_bias=False, dtype=self.dtype, name='conv3')(y)
    y = norm_layer(self.norm, self.dtype, train, name='bn3')(y)
    return nn.relu(_shortcut(x, out, self.strides, self.norm, self.dtype, train) + y)


BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def resnet_kwargs(depth: int) -> dict:
  """``stage_sizes`` and ``block`` of the standard ResNet depths (18, 34, 50, 101)."""
  if depth not in STAGE_SIZES:
    raise ValueError(f'unsupported ResNet depth {depth}; choose one of {sorted(STAGE_SIZES)}')
  return dict(stage_sizes=STAGE_SIZES[depth], block='basic' if depth < 50 else 'bottleneck')


STEMS = ('imagenet', 'cifar')


class ResNet(nn.Module):
  """ResNet trunk returning the feature map of every stage.

  ``stem``: 'imagenet' (7x7/2 conv + 3x3/2 max-pool; stage strides 4, 8, 16, 32) or
  'cifar' (3x3/1 conv, no max-pool; stage strides 1, 2, 4, 8). Both stems are conv (no
  bias) -> norm -> ReLU, named ``conv1`` / ``bn1``.
  ``dilate_stages[i]`` replaces the stride of stage i+2 by dilation (DeepLab-style), as
  segmentation backbones such as EAGRNet's do to keep a larger final feature map.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  width: int = 64
  norm: str = 'batch'
  dilate_stages: Sequence[bool] = (False, False, False)
  stem: str = 'imagenet'
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    if self.block not in BLOCKS:
      raise ValueError(f"unknown ResNet block {self.block!r}: use 'basic' or 'bottleneck'")
    if len(self.dilate_stages) != len(self.stage_sizes) - 1:
      raise ValueError('dilate_stages needs one flag per stage after the first')
    if self.stem not in STEMS:
      raise ValueError(f"unknown ResNet stem {self.stem!r}: use 'imagenet' or 'cifar'")
    block_cls = BLOCKS[self.block]
    if self.stem == 'imagenet':
      x = nn.Conv(
        self.width,
        (7, 7),
        2,
        padding=((3, 3), (3, 3)),
        use_bias=False,
        dtype=self.dtype,
        name='conv1',
      )(x)
    else:
      x = nn.Conv(
        self.width,
        (3, 3),
        1,
        padding=((1, 1), (1, 1)),
        use_bias=False,
        dtype=self.dtype,
        name='conv1',
      )(x)
    x = nn.relu(norm_layer(self.norm, self.dtype, train, name='bn1')(x))
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features, dilation = [], 1
    for i, num_blocks in enumerate(self.stage_sizes):
      strides = 1 if i == 0 else 2
      if i > 0 and self.dilate_stages[i - 1]:
        dilation *= strides
        strides = 1
      for j in range(num_blocks):
        x = block_cls(
          self.width * 2**i,
          strides if j == 0 else 1,
          dilation,
          self.norm,
          self.dtype,
          name=f'layer{i + 1}_{j}',
        )(x, train)
      features.append(x)
    return features


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))
