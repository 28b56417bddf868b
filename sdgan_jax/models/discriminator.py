"""LSGAN image discriminators conditioned on the semantic map (paper §3.4, eq. 2-4).

Both discriminators see ``concat(image, one_hot_semantic)`` along channels (3 + C channels,
14 with the 11-class parsing map) and return scores with no sigmoid: LSGAN regresses them
to 0/1 (the global one ends in a LeakyReLU, the patch one in a linear conv). Scores are returned in
float32 whatever the compute dtype, because the
squared-error losses are computed in float32.

* ``GlobalDiscriminator``: the authors' released network: 5 pre-activation residual
  down-blocks 64, 128, 256, 512, 512 of reflect-padded spectral-norm convs, then dense
  8192 -> 1024 -> 1 (no spectral norm), each followed by LeakyReLU(0.2), at 128 px.
  18,238,529 parameters at 128 px with 14 input channels (the authors' count: 18.24 M) and
  7.8 GFLOP per image forward (multiply-add = 2 FLOP, convolutions and dense layers).
* ``MultiscalePatchDiscriminator``: pix2pixHD / SPADE-style option, PatchGAN
  discriminators on an image pyramid.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Conv, Dense, Dtype, avg_pool2, norm_layer

LRELU_SLOPE = 0.2


def _conditioned_input(image: jax.Array, semantic: jax.Array, dtype: Dtype) -> jax.Array:
  """Concatenates image and one-hot semantic map along channels in the compute dtype."""
  if image.ndim != 4 or semantic.ndim != 4:
    raise ValueError(
      f'image and semantic must be NHWC, got shapes {image.shape} and {semantic.shape}'
    )
  if image.shape[:3] != semantic.shape[:3]:
    raise ValueError(
      f'image {image.shape} and semantic {semantic.shape} must share batch and spatial size'
    )
  if dtype is None:
    dtype = image.dtype if jnp.issubdtype(image.dtype, jnp.floating) else jnp.float32
  return jnp.concatenate([image.astype(dtype), semantic.astype(dtype)], axis=-1)


class DownBlock(nn.Module):
  """Pre-activation residual down-block of the global discriminator.

  residual: relu -> conv3x3(cin->cout) -> relu -> conv3x3(cout->cout) -> avgpool2
  shortcut: conv1x1(cin->cout) -> avgpool2   (on the block input, no activation; learned
            on every block, 512->512 included)
  output:   residual + shortcut              (no activation after the sum)

  Every conv has a bias; with ``padding_mode='reflect'`` the 3x3 convs reflect-pad.
  """

  features: int
  spectral_norm: bool = True
  padding_mode: str = 'reflect'
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = lambda k, name: Conv(
      self.features,
      k,
      spectral_norm=self.spectral_norm,
      padding_mode=self.padding_mode,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )
    y = conv(3, 'conv1')(nn.relu(x), train)
    y = avg_pool2(conv(3, 'conv2')(nn.relu(y), train))
    s = avg_pool2(conv(1, 'shortcut')(x, train))
    return y + s


class GlobalDiscriminator(nn.Module):
  """The authors' global (image-level) discriminator (LSGAN, paper §3.4 eq. 2-3).

  Five ``DownBlock``s halve the resolution each (128 px -> 4x4x512), then a channel-major
  flatten (the order of a PyTorch ``view`` of NCHW) -> dense(hidden) -> lrelu -> dense(1)
  -> lrelu. ``spectral_norm`` applies to the convs only; the dense layers have none. The
  first dense layer's input size follows the image size (8192 at 128 px, 2048 at 64 px).
  """

  widths: Sequence[int] = (64, 128, 256, 512, 512)
  hidden: int = 1024
  spectral_norm: bool = True
  padding_mode: str = 'reflect'
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array, semantic: jax.Array, train: bool = False) -> jax.Array:
    """Returns LSGAN scores ``[B, 1]`` (float32) for images ``[B,H,W,3]`` + one-hot maps."""
    _, h, w, _ = image.shape
    factor = 2 ** len(self.widths)
    if h % factor or w % factor:
      raise ValueError(
        f'image size {h}x{w} must be divisible by {factor} ({len(self.widths)} down-blocks)'
      )
    x = _conditioned_input(image, semantic, self.dtype)
    for i, width in enumerate(self.widths):
      x = DownBlock(
        width,
        self.spectral_norm,
        self.padding_mode,
        self.dtype,
        self.param_dtype,
        name=f'block{i + 1}',
      )(x, train)
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    dense = lambda f, name: Dense(f, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    x = nn.leaky_relu(dense(self.hidden, 'fc1')(x), LRELU_SLOPE)
    return nn.leaky_relu(dense(1, 'fc2')(x), LRELU_SLOPE).astype(jnp.float32)


def patch_output_size(size: int, num_layers: int = 4) -> int:
  """Spatial size of a ``PatchDiscriminator`` output for an input of side ``size``.

  Kernel 4 with padding 2 (as pix2pixHD/SPADE): stride 2 maps n -> n//2 + 1 and stride 1
  maps n -> n + 1.
  """
  for i in range(num_layers):
    size = size // 2 + 1 if i < num_layers - 1 else size + 1
  return size + 1  # final stride-1 conv to one channel


class PatchDiscriminator(nn.Module):
  """PatchGAN discriminator of SPADE (``NLayerDiscriminator``, ``n_layers_D=num_layers``).

  conv4x4/2(64) -> lrelu, then ``num_layers - 1`` convs 4x4 doubling the width (capped at
  ``max_width``), stride 2 except the last one (stride 1), each followed by instance norm
  (no affine, as SPADE's 'spectralinstance') and lrelu; a final 4x4/1 conv to one channel.
  Spectral norm, when on, wraps every conv but the last, as in SPADE. Convs followed by a
  norm have no bias since the norm would remove it.
  """

  num_layers: int = 4
  base_width: int = 64
  max_width: int = 512
  norm: str = 'instance'
  spectral_norm: bool = True
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {self.num_layers}')

    def conv(features, strides, use_bias, spectral_norm, name):
      # ``Conv`` pads (4-1)//2 = 1 per side; one more gives PyTorch's padding=2.
      def apply(y):
        y = jnp.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return Conv(
          features,
          4,
          strides,
          use_bias=use_bias,
          spectral_norm=spectral_norm,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=name,
        )(y, train)

      return apply

    width = self.base_width
    x = conv(width, 2, True, self.spectral_norm, 'conv0')(x)
    x = nn.leaky_relu(x, LRELU_SLOPE)
    for i in range(1, self.num_layers):
      width = min(width * 2, self.max_width)
      strides = 1 if i == self.num_layers - 1 else 2
      x = conv(width, strides, self.norm == 'none', self.spectral_norm, f'conv{i}')(x)
      x = norm_layer(self.norm, self.dtype, train, name=f'norm{i}', use_affine=False)(x)
      x = nn.leaky_relu(x, LRELU_SLOPE)
    return conv(1, 1, True, False, 'out')(x)


class MultiscalePatchDiscriminator(nn.Module):
  """Multi-scale PatchGAN discriminator (pix2pixHD / SPADE option, not the authors' one).

  ``num_scales`` independent ``PatchDiscriminator``s; scale ``s`` sees the input average-
  pooled (3x3, stride 2, padding 1, padding excluded from the mean) ``s`` times.
  """

  num_scales: int = 2
  num_layers: int = 4
  base_width: int = 64
  max_width: int = 512
  norm: str = 'instance'
  spectral_norm: bool = True
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array, semantic: jax.Array, train: bool = False) -> list[jax.Array]:
    """Returns one float32 patch score map ``[B, h_s, w_s, 1]`` per scale, finest first."""
    x = _conditioned_input(image, semantic, self.dtype)
    outputs = []
    for s in range(self.num_scales):
      if s:
        x = nn.avg_pool(
          x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=False
        )
      d = PatchDiscriminator(
        self.num_layers,
        self.base_width,
        self.max_width,
        self.norm,
        self.spectral_norm,
        self.dtype,
        self.param_dtype,
        name=f'scale{s}',
      )
      outputs.append(d(x, train).astype(jnp.float32))
    return outputs


DISCRIMINATORS = {
  'global': GlobalDiscriminator,
  'multiscale_patch': MultiscalePatchDiscriminator,
}


def build_discriminator(kind: str, **kwargs) -> nn.Module:
  """Builds a discriminator by name: 'global' (authors', default) or 'multiscale_patch'."""
  if kind not in DISCRIMINATORS:
    raise ValueError(f'unknown discriminator kind {kind!r}; choose one of {sorted(DISCRIMINATORS)}')
  return DISCRIMINATORS[kind](**kwargs)
