"""BlazeFace face detectors (MediaPipe's short- and full-range models) in Flax.

BlazeFace (Bazarevsky et al. 2019) is a single-shot detector: a small network of
depthwise-separable residual blocks predicts, for every anchor of a fixed grid, a face score
and a box with six keypoints (``docs/detection.md``). MediaPipe ships two trained models,
ported here layer for layer so that their ``.tflite`` weights convert 1:1
(``sdgan_jax.converters.blazeface``):

* ``BlazeFaceShortRange`` (``face_detection_short_range.tflite``): 128x128 input, faces that
  fill 1/8 of the frame or more; a 5x5/2 stem and 16 "BlazeBlocks" (3x3 depthwise + 1x1
  conv, max-pool + zero-channel-padded shortcut), heads on the 16x16 (2 anchors per cell)
  and 8x8 (6 anchors) maps: 896 anchors.
* ``BlazeFaceFullRange`` (``face_detection_full_range_sparse.tflite``): 192x192 input, faces
  down to about 1/20 of the frame; an encoder of bottleneck blocks (3x3 depthwise, 1x1
  reduce + ReLU, 3x3 depthwise, 1x1 expand, residual + ReLU) down to 6x6, a feature pyramid
  back up to 48x48 (bilinear 2x upsampling added to 1x1 lateral projections), and heads of
  a 1x1 conv, a 3x3/2 depthwise conv and a 2x depth-to-space: 48x48 = 2,304 anchors.

Input: [0, 1] RGB NHWC at the model's size (MediaPipe feeds ``2x - 1``; done inside).
Output: ``(regressors [N, A, 16], logits [N, A])`` exactly as the TFLite model's two output
tensors: per anchor, the box centre offset, width and height and six (x, y) keypoints in
input pixels (``sdgan_jax.faces.blazeface_detector`` decodes them), and the face logit. Both models
are fully convolutional: other input sizes (multiples of 32 for the full-range model, of
16 for the short-range) give the same grids at the same strides.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Dtype

NUM_COORDS = 16  # box (4) + 6 keypoints x (x, y)


def same_padding(size: int, kernel: int, strides: int) -> tuple[int, int]:
  """TensorFlow's 'SAME' padding of one axis: the output is ceil(size / strides)."""
  total = max((math.ceil(size / strides) - 1) * strides + kernel - size, 0)
  return total // 2, total - total // 2


class Conv(nn.Module):
  """Conv with bias: ``kernel`` x ``kernel`` (``depthwise``: one filter per channel).

  ``padding`` is 'SAME' (TensorFlow's) or one symmetric pad per side. Parameters have
  ``nn.Conv``'s layout (``kernel`` HWIO, [k, k, 1, C] when depthwise; ``bias``). The 3x3
  depthwise convs are computed as nine shifted multiply-adds and the 1x1 convs as matrix
  products: XLA's CPU backend ran them as grouped convolutions many times slower, and
  miscompiled the short-range blocks on JAX 0.10 (``docs/detection.md``). Shared with the
  face mesh (``models.face_mesh``).
  """

  features: int
  kernel: int = 1
  strides: int = 1
  depthwise: bool = False
  padding: str | int = 'SAME'
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    k, s = self.kernel, self.strides
    if self.depthwise and self.features != c:
      raise ValueError(f'a depthwise conv keeps its {c} channels, not {self.features}')
    shape = (k, k, 1, c) if self.depthwise else (k, k, c, self.features)
    kernel = self.param('kernel', nn.initializers.lecun_normal(), shape, self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
    dtype = self.dtype or x.dtype
    x, kernel, bias = x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)
    if self.padding == 'SAME':
      pads = (same_padding(h, k, s), same_padding(w, k, s))
    else:
      pads = ((self.padding, self.padding), (self.padding, self.padding))
    if k == 1 and not self.depthwise:
      y = jnp.einsum('nhwc,cf->nhwf', x[:, ::s, ::s], kernel[0, 0])
    elif self.depthwise:
      xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
      oh = (xp.shape[1] - k) // s + 1
      ow = (xp.shape[2] - k) // s + 1
      y = 0
      for i in range(k):
        for j in range(k):
          y = (
            y + xp[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s] * kernel[i, j, 0]
          )
    else:
      y = jax.lax.conv_general_dilated(
        x, kernel, (s, s), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )
    return y + bias


def pad_channels(x: jax.Array, channels: int) -> jax.Array:
  """Zero channels appended up to ``channels``: the shortcut of a block that widens."""
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, channels - x.shape[-1])))


def _depth_to_space(x: jax.Array, block: int) -> jax.Array:
  """TensorFlow's DepthToSpace (DCR order: channel = (row * block + col) * C + c)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, block, block, c // (block * block))
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * block, w * block, c // (block * block))


def _upsample2x(x: jax.Array) -> jax.Array:
  """Bilinear 2x with half-pixel centres (TF's ResizeBilinear, half_pixel_centers=True)."""
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method='bilinear', antialias=False)


class BlazeBlock(nn.Module):
  """Short-range block: 3x3 depthwise (stride s) + 1x1 conv, plus the shortcut, ReLU."""

  features: int
  strides: int = 1
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = Conv(x.shape[-1], 3, self.strides, depthwise=True, name='depthwise', **kw)(x)
    y = Conv(self.features, 1, name='project', **kw)(y)
    if self.strides == 2:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return nn.relu(y + pad_channels(x, self.features))


# (output channels, stride) of the short-range model's blocks; the heads read the outputs
# of block 10 (16x16x88) and of the last block (8x8x96).
SHORT_RANGE_BLOCKS = (
  (24, 1),
  (28, 1),
  (32, 2),
  (36, 1),
  (42, 1),
  (48, 2),
  (56, 1),
  (64, 1),
  (72, 1),
  (80, 1),
  (88, 1),
  (96, 2),
  (96, 1),
  (96, 1),
  (96, 1),
  (96, 1),
)
SHORT_RANGE_HEAD_BLOCK = 10


class BlazeFaceShortRange(nn.Module):
  """MediaPipe's short-range BlazeFace: 128 px input, 896 anchors (module doc)."""

  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  input_size = 128
  size_multiple = 16  # total downsampling: other input sizes must be multiples of it
  anchor_strides = (8, 16, 16, 16)
  interpolated_anchor = True

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype or jnp.float32) * 2.0 - 1.0
    x = nn.relu(Conv(24, 5, 2, name='stem', **kw)(x))
    fine = None
    for i, (features, strides) in enumerate(SHORT_RANGE_BLOCKS):
      x = BlazeBlock(features, strides, name=f'block{i}', **kw)(x)
      if i == SHORT_RANGE_HEAD_BLOCK:
        fine = x
    n = x.shape[0]
    scores = [
      Conv(2, name='classifier_fine', **kw)(fine),
      Conv(6, name='classifier_coarse', **kw)(x),
    ]
    boxes = [
      Conv(2 * NUM_COORDS, name='regressor_fine', **kw)(fine),
      Conv(6 * NUM_COORDS, name='regressor_coarse', **kw)(x),
    ]
    logits = jnp.concatenate([s.reshape(n, -1) for s in scores], axis=1)
    regressors = jnp.concatenate([b.reshape(n, -1, NUM_COORDS) for b in boxes], axis=1)
    return regressors.astype(jnp.float32), logits.astype(jnp.float32)


class Bottleneck(nn.Module):
  """Full-range block: dw 3x3 (stride s), 1x1 to ``mid`` + ReLU, dw 3x3, 1x1 to ``features``;
  the stride-1 blocks add their input before the last ReLU, the stride-2 ones have none."""

  features: int
  mid: int
  strides: int = 1
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pad = 1  # the file pads explicitly, then convolves 'VALID'
    y = Conv(x.shape[-1], 3, self.strides, depthwise=True, padding=pad, name='depthwise1', **kw)(x)
    y = nn.relu(Conv(self.mid, 1, name='reduce', **kw)(y))
    y = Conv(self.mid, 3, depthwise=True, padding=pad, name='depthwise2', **kw)(y)
    y = Conv(self.features, 1, name='expand', **kw)(y)
    if self.strides == 2:
      return nn.relu(y)
    return nn.relu(x + y)


# Encoder stages of the full-range model: (channels, mid channels, stride-1 blocks after the
# stride-2 block, lateral projection width for the pyramid or None). The first stage has no
# stride-2 block: the stem already halves the 192 input to 96.
FULL_RANGE_ENCODER = (
  (32, 8, 2, None),
  (64, 16, 2, 48),
  (128, 32, 2, 64),
  (192, 48, 2, 96),
  (384, 96, 3, None),
)
# Decoder (pyramid) stages, coarse to fine: (top projection width, mid channels, blocks).
FULL_RANGE_DECODER = ((96, 48, 2), (64, 32, 2), (48, 24, 1))


class BlazeFaceFullRange(nn.Module):
  """MediaPipe's full-range BlazeFace: 192 px input, 2,304 anchors (module doc)."""

  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  input_size = 192
  size_multiple = 32
  anchor_strides = (4,)
  interpolated_anchor = False

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pad = 1
    x = images.astype(self.dtype or jnp.float32) * 2.0 - 1.0
    x = nn.relu(Conv(32, 3, 2, padding=pad, name='stem', **kw)(x))
    laterals = []
    for s, (features, mid, blocks, lateral) in enumerate(FULL_RANGE_ENCODER):
      if s:
        x = Bottleneck(features, mid, 2, name=f'encoder{s}_down', **kw)(x)
      for b in range(blocks):
        x = Bottleneck(features, mid, name=f'encoder{s}_block{b}', **kw)(x)
      if lateral:
        laterals.append(nn.relu(Conv(lateral, name=f'lateral{s}', **kw)(x)))
    for s, (features, mid, blocks) in enumerate(FULL_RANGE_DECODER):
      x = nn.relu(Conv(features, name=f'decoder{s}_top', **kw)(x))
      x = _upsample2x(x) + laterals.pop()
      for b in range(blocks):
        x = Bottleneck(features, mid, name=f'decoder{s}_block{b}', **kw)(x)
    n = x.shape[0]
    heads = []
    for name, channels in (('classifier', 1), ('regressor', NUM_COORDS)):
      y = Conv(4 * channels, name=f'{name}_project', **kw)(x)
      y = Conv(4 * channels, 3, 2, depthwise=True, padding=pad, name=f'{name}_depthwise', **kw)(y)
      heads.append(_depth_to_space(y, 2))
    logits = heads[0].reshape(n, -1)
    regressors = heads[1].reshape(n, -1, NUM_COORDS)
    return regressors.astype(jnp.float32), logits.astype(jnp.float32)


MODELS = {'blazeface_short_range': BlazeFaceShortRange, 'blazeface_full_range': BlazeFaceFullRange}
