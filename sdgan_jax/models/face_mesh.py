"""MediaPipe's face mesh (``face_landmark.tflite``): 468 3-D face landmarks, in Flax.

The network (Kartynnik et al. 2019, "Real-time Facial Surface Geometry from Monocular Video
on Mobile GPUs"; ``docs/detection.md``, "Face mesh") sees one face, turned upright and
framed by a square region of interest, at 192x192, and regresses the 468 vertices of a
fixed mesh topology plus a face-presence logit. It is ported layer for layer so that the
``.tflite`` weights convert 1:1 (``sdgan_jax.converters.face_mesh``):

* a 3x3/2 stem to 96x96x16 and PReLU;
* residual blocks of a 3x3 depthwise conv (TensorFlow 'SAME' padding) and a 1x1 conv added
  to the input, then a per-channel PReLU; a stride-2 block takes its shortcut through a
  2x2 max-pool and zero channels when it widens (``MESH_TRUNK``: 96 -> 6 px, 16 -> 128
  channels);
* two heads on the 6x6x128 map, each a stride-2 block and (landmarks only) two more
  blocks at 3x3, a 1x1 conv to 32 channels + PReLU, one block at 32 channels, and a 3x3
  conv over the whole 3x3 map: 1,404 = 468 x 3 landmark values, and one logit.

Input: [0, 1] RGB NHWC, 192x192 (MediaPipe's graph feeds the crop in [0, 1]). Output:
``(landmarks [N, 468, 3], logits [N])``: x and y in input pixels (0 .. 192 spans the crop,
pixel edges), z in the same unit, relative to the face (smaller: nearer the camera), and
the face-presence logit (sigmoid -> score), as the TFLite model's two output tensors.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.blazeface import Conv, pad_channels
from sdgan_jax.models.layers import Dtype

NUM_LANDMARKS = 468
INPUT_SIZE = 192


class PReLU(nn.Module):
  """Per-channel PReLU: ``x`` where positive, ``alpha * x`` elsewhere (TFLite's PRELU)."""

  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param('alpha', nn.initializers.constant(0.25), (x.shape[-1],), self.param_dtype)
    return jnp.where(x >= 0, x, x * alpha.astype(x.dtype))


class MeshBlock(nn.Module):
  """3x3 depthwise (stride s) + 1x1 conv, plus the shortcut (max-pooled and zero-padded
  when it shrinks or widens), then PReLU."""

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
    return PReLU(param_dtype=self.param_dtype, name='prelu')(y + pad_channels(x, self.features))


# (output channels, stride) of the shared trunk's blocks (96x96x16 -> 6x6x128) and of the
# heads' blocks before their 1x1 reduction to ``HEAD_WIDTH`` channels.
MESH_TRUNK = (
  (16, 1),
  (16, 1),
  (32, 2),
  (32, 1),
  (32, 1),
  (64, 2),
  (64, 1),
  (64, 1),
  (128, 2),
  (128, 1),
  (128, 1),
  (128, 2),
  (128, 1),
  (128, 1),
)
LANDMARK_HEAD = ((128, 2), (128, 1), (128, 1))
PRESENCE_HEAD = ((128, 2),)
HEAD_WIDTH = 32


class FaceMeshNet(nn.Module):
  """MediaPipe's face mesh network: 192 px face crop -> 468 landmarks and a logit (module
  doc). Layers are called trunk first, then the landmark head, then the presence head: the
  converter pairs the file's operators with them in that order."""

  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  input_size = INPUT_SIZE

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype or jnp.float32)
    x = PReLU(param_dtype=self.param_dtype, name='stem_prelu')(Conv(16, 3, 2, name='stem', **kw)(x))
    for i, (features, strides) in enumerate(MESH_TRUNK):
      x = MeshBlock(features, strides, name=f'block{i}', **kw)(x)
    outs = []
    for head, blocks, channels in (
      ('landmarks', LANDMARK_HEAD, NUM_LANDMARKS * 3),
      ('presence', PRESENCE_HEAD, 1),
    ):
      y = x
      for i, (features, strides) in enumerate(blocks):
        y = MeshBlock(features, strides, name=f'{head}_block{i}', **kw)(y)
      y = Conv(HEAD_WIDTH, name=f'{head}_reduce', **kw)(y)
      y = PReLU(param_dtype=self.param_dtype, name=f'{head}_reduce_prelu')(y)
      y = MeshBlock(HEAD_WIDTH, name=f'{head}_block{len(blocks)}', **kw)(y)
      # One 3x3 window over the whole 3x3 map: a dense layer on the flattened map.
      outs.append(Conv(channels, 3, 3, padding=0, name=f'{head}_out', **kw)(y))
    n = x.shape[0]
    landmarks = outs[0].reshape(n, NUM_LANDMARKS, 3)
    return landmarks.astype(jnp.float32), outs[1].reshape(n).astype(jnp.float32)
