"""FaceNet InceptionResnetV1: the 512-d face identity descriptor (paper §3.3, Recall@1).

Same architecture, layer names and numerics as facenet-pytorch 2.6.0's
``InceptionResnetV1`` (the port of David Sandberg's TensorFlow FaceNet): a stem of plain
convolutions, 5 x Block35 (residual scale 0.17), Mixed_6a, 10 x Block17 (0.10), Mixed_7a,
5 x Block8 (0.20), a final Block8 without ReLU, global average pooling, dropout, a
bias-free 1792 -> 512 linear layer and BatchNorm1d. The output is the L2-normalised
embedding, or with ``classify=True`` the identity logits of the training head (8631
classes for the VGGFace2 weights, 10575 for CASIA-WebFace).

Every BatchNorm uses eps 0.001 (the TensorFlow value) and PyTorch's momentum 0.1, i.e.
Flax momentum 0.9. Pretrained weights come from ``sdgan_jax.converters.facenet``.

Input convention: images ``[B, H, W, 3]`` RGB in [0, 1]. Inside, they are resized to
``image_size`` (160, the size facenet-pytorch's MTCNN crops faces to; ``None`` keeps the
input size, which the network accepts down to 75 pixels) and standardised like
facenet-pytorch's ``fixed_image_standardization``: ``(255 x - 127.5) / 128``. The faces
should be aligned crops as MTCNN makes them (the face box plus a small margin).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Dtype

BN_EPS = 1e-3
# PyTorch's momentum 0.1 weights the new batch statistic; Flax's weights the old average.
BN_MOMENTUM = 0.9
EMBED_DIM = 512
# Number of identities of the pretrained logits heads.
NUM_CLASSES = {'vggface2': 8631, 'casia-webface': 10575}


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def fixed_image_standardization(images: jax.Array) -> jax.Array:
  """Maps [0, 1] images to facenet-pytorch's input range, ``(255 x - 127.5) / 128``."""
  return (images * 255.0 - 127.5) / 128.0


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Row-wise L2 normalisation with PyTorch's ``F.normalize`` floor on the norm."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def max_pool3s2(x: jax.Array) -> jax.Array:
  """3x3 max pooling, stride 2, no padding (PyTorch ``MaxPool2d(3, stride=2)``)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class BasicConv2d(nn.Module):
  """Bias-free convolution -> BatchNorm (eps 0.001) -> ReLU."""

  features: int
  kernel_size: int | Sequence[int]
  strides: int = 1
  padding: int | Sequence[int] = 0
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(
      self.features,
      _pair(self.kernel_size),
      strides=_pair(self.strides),
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='conv',
    )(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPS,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='bn',
    )(x)
    return nn.relu(x)


class _Residual(nn.Module):
  """Shared body of Block35/17/8: parallel branches, 1x1 projection, scaled residual."""

  # Each branch: a tuple of (features, kernel, padding) convs, all stride 1.
  branches: Sequence[Sequence[tuple]] = ()
  scale: float = 1.0
  relu: bool = True
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    outs = []
    for b, convs in enumerate(self.branches):
      y = x
      for c, (features, kernel, padding) in enumerate(convs):
        # A single conv is the branch itself in PyTorch; several are an nn.Sequential.
        name = f'branch{b}' if len(convs) == 1 else f'branch{b}_{c}'
        y = BasicConv2d(
          features,
          kernel,
          padding=padding,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=name,
        )(y, train)
      outs.append(y)
    out = nn.Conv(
      x.shape[-1],
      (1, 1),
      use_bias=True,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='conv2d',
    )(jnp.concatenate(outs, -1))
    out = out * self.scale + x
    return nn.relu(out) if self.relu else out


def block35(scale: float, **kw) -> _Residual:
  """Inception-ResNet-A on 35x35 (here 17x17) maps of 256 channels."""
  return _Residual(
    branches=(((32, 1, 0),), ((32, 1, 0), (32, 3, 1)), ((32, 1, 0), (32, 3, 1), (32, 3, 1))),
    scale=scale,
    **kw,
  )


def block17(scale: float, **kw) -> _Residual:
  """Inception-ResNet-B on 896 channels, with factorised 1x7 / 7x1 convolutions."""
  return _Residual(
    branches=(((128, 1, 0),), ((128, 1, 0), (128, (1, 7), (0, 3)), (128, (7, 1), (3, 0)))),
    scale=scale,
    **kw,
  )


def block8(scale: float, relu: bool = True, **kw) -> _Residual:
  """Inception-ResNet-C on 1792 channels, with factorised 1x3 / 3x1 convolutions."""
  return _Residual(
    branches=(((192, 1, 0),), ((192, 1, 0), (192, (1, 3), (0, 1)), (192, (3, 1), (1, 0)))),
    scale=scale,
    relu=relu,
    **kw,
  )


class Mixed6a(nn.Module):
  """Reduction-A: 256 -> 896 channels, stride 2."""

  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x0 = BasicConv2d(384, 3, strides=2, name='branch0', **kw)(x, train)
    x1 = BasicConv2d(192, 1, name='branch1_0', **kw)(x, train)
    x1 = BasicConv2d(192, 3, padding=1, name='branch1_1', **kw)(x1, train)
    x1 = BasicConv2d(256, 3, strides=2, name='branch1_2', **kw)(x1, train)
    return jnp.concatenate([x0, x1, max_pool3s2(x)], -1)


class Mixed7a(nn.Module):
  """Reduction-B: 896 -> 1792 channels, stride 2."""

  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x0 = BasicConv2d(256, 1, name='branch0_0', **kw)(x, train)
    x0 = BasicConv2d(384, 3, strides=2, name='branch0_1', **kw)(x0, train)
    x1 = BasicConv2d(256, 1, name='branch1_0', **kw)(x, train)
    x1 = BasicConv2d(256, 3, strides=2, name='branch1_1', **kw)(x1, train)
    x2 = BasicConv2d(256, 1, name='branch2_0', **kw)(x, train)
    x2 = BasicConv2d(256, 3, padding=1, name='branch2_1', **kw)(x2, train)
    x2 = BasicConv2d(256, 3, strides=2, name='branch2_2', **kw)(x2, train)
    return jnp.concatenate([x0, x1, x2, max_pool3s2(x)], -1)


class InceptionResnetV1(nn.Module):
  """FaceNet InceptionResnetV1 (facenet-pytorch layout); see the module docstring.

  Attributes:
    classify: return the logits of the identity head instead of the embedding.
    num_classes: size of the logits head (needed when ``classify``; see ``NUM_CLASSES``).
    dropout_prob: dropout before ``last_linear`` (active only with ``train=True``, which
      then needs a 'dropout' rng).
    image_size: side the input is resized to, or None to use it as given.
    resize_method: ``jax.image.resize`` method; antialiased 'linear' is what PIL's
      BILINEAR resize in facenet-pytorch's MTCNN crop does.
    standardize: apply ``fixed_image_standardization`` (False: inputs are already
      standardised).
  """

  classify: bool = False
  num_classes: int | None = None
  dropout_prob: float = 0.6
  image_size: int | None = 160
  resize_method: str = 'linear'
  standardize: bool = True
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  def preprocess(self, images: jax.Array) -> jax.Array:
    """Resizes [0, 1] images to ``image_size`` and standardises them."""
    dtype = self.dtype or jnp.float32
    x = images.astype(dtype)
    if self.image_size is not None and x.shape[1:3] != (self.image_size, self.image_size):
      x = jax.image.resize(
        x,
        (x.shape[0], self.image_size, self.image_size, x.shape[3]),
        method=self.resize_method,
        antialias=True,
      )
    return fixed_image_standardization(x) if self.standardize else x

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``[B,H,W,3]`` images in [0, 1] to ``[B, 512]`` unit embeddings (or logits).

    Outputs are float32 whatever the compute dtype.
    """
    if self.classify and not self.num_classes:
      raise ValueError(
        'classify=True needs num_classes (8631 for vggface2, 10575 for casia-webface)'
      )
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = self.preprocess(images)
    x = BasicConv2d(32, 3, strides=2, name='conv2d_1a', **kw)(x, train)
    x = BasicConv2d(32, 3, name='conv2d_2a', **kw)(x, train)
    x = BasicConv2d(64, 3, padding=1, name='conv2d_2b', **kw)(x, train)
    x = max_pool3s2(x)
    x = BasicConv2d(80, 1, name='conv2d_3b', **kw)(x, train)
    x = BasicConv2d(192, 3, name='conv2d_4a', **kw)(x, train)
    x = BasicConv2d(256, 3, strides=2, name='conv2d_4b', **kw)(x, train)
    for i in range(5):
      x = block35(0.17, name=f'repeat_1_{i}', **kw)(x, train)
    x = Mixed6a(name='mixed_6a', **kw)(x, train)
    for i in range(10):
      x = block17(0.10, name=f'repeat_2_{i}', **kw)(x, train)
    x = Mixed7a(name='mixed_7a', **kw)(x, train)
    for i in range(5):
      x = block8(0.20, name=f'repeat_3_{i}', **kw)(x, train)
    x = block8(1.0, relu=False, name='block8', **kw)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_prob, deterministic=not train)(x)
    x = nn.Dense(EMBED_DIM, use_bias=False, name='last_linear', **kw)(x)
    x = nn.BatchNorm(
      use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name='last_bn', **kw
    )(x)
    if self.classify:
      return nn.Dense(self.num_classes, name='logits', **kw)(x).astype(jnp.float32)
    return l2_normalize(x.astype(jnp.float32))
