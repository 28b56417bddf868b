"""Shared layers and the ResNet trunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdgan_jax.models import layers
from sdgan_jax.models.resnet import ResNet, resnet_kwargs


def test_resize_nearest_keeps_one_hot_and_matches_pytorch_nearest():
  labels = np.arange(8 * 8).reshape(1, 8, 8) % 5
  onehot = jax.nn.one_hot(labels, 5)
  down = np.asarray(layers.resize_nearest(onehot, 4, 4))
  # PyTorch's interpolate(mode='nearest') takes source index floor(i * in / out)
  np.testing.assert_array_equal(down.argmax(-1)[0], labels[0, ::2, ::2])
  assert set(np.unique(down.sum(-1))) == {1.0}
  up = np.asarray(layers.resize_nearest(onehot, 16, 16))
  np.testing.assert_array_equal(up.argmax(-1)[0], np.repeat(np.repeat(labels[0], 2, 0), 2, 1))


def test_reflect_padded_conv_equals_numpy_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
  conv = layers.Conv(3, 3, padding_mode='reflect')
  variables = conv.init(jax.random.key(0), x)
  out = np.asarray(conv.apply(variables, x))
  kernel = np.asarray(variables['params']['Conv_0']['kernel'])
  bias = np.asarray(variables['params']['Conv_0']['bias'])
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  want = np.zeros((1, 5, 6, 3), np.float32) + bias
  for i in range(5):
    for j in range(6):
      want[0, i, j] += np.einsum('hwc,hwco->o', padded[0, i : i + 3, j : j + 3], kernel)
  np.testing.assert_allclose(out, want, atol=1e-5)
  with pytest.raises(ValueError, match='padding_mode'):
    layers.Conv(3, padding_mode='circular').init(jax.random.key(0), x)


def test_spectral_norm_keeps_the_top_singular_value_at_one():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
  conv = layers.Conv(8, 3, spectral_norm=True)
  variables = conv.init(jax.random.key(0), x)
  apply = jax.jit(lambda v: conv.apply(v, x, train=True, mutable=['batch_stats'])[1])
  for _ in range(30):  # power iteration converges over training steps
    variables = {**variables, **apply(variables)}
  kernel = np.asarray(variables['params']['Conv_0']['kernel']).reshape(-1, 8)
  sigma = float(
    jax.tree_util.tree_leaves(
      {k: v for k, v in variables['batch_stats']['SpectralNorm_0'].items() if 'sigma' in k}
    )[0]
  )
  # one power iteration per step: the estimate converges geometrically, ~0.4% after 30 steps
  np.testing.assert_allclose(np.linalg.svd(kernel, compute_uv=False)[0] / sigma, 1.0, rtol=1e-2)


@pytest.mark.parametrize(
  'depth,expected', [(18, 11_176_512), (34, 21_284_672), (50, 23_508_032), (101, 42_500_160)]
)
def test_resnet_trunk_sizes_match_torchvision(depth, expected):
  # torchvision's totals minus the 1000-way fc head (2048*1000+1000 or 512*1000+1000)
  model = ResNet(**resnet_kwargs(depth))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert layers.count_params(variables) == expected


def test_resnet_feature_strides_and_dilation():
  model = ResNet(stage_sizes=(1, 1, 1, 1), width=4, dilate_stages=(False, True, True))
  x = jnp.zeros((1, 64, 64, 3))
  feats = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x)[0])
  assert [f.shape for f in feats] == [(1, 16, 16, 4), (1, 8, 8, 8), (1, 8, 8, 16), (1, 8, 8, 32)]
  with pytest.raises(ValueError, match='depth'):
    resnet_kwargs(42)


def test_resnet_cifar_stem_keeps_full_resolution():
  x = jnp.zeros((1, 32, 32, 3))
  model = ResNet(stage_sizes=(1, 1, 1, 1), width=4, stem='cifar')
  feats, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
  assert [f.shape for f in feats] == [(1, 32, 32, 4), (1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 32)]
  assert variables['params']['conv1']['kernel'].shape == (3, 3, 3, 4)
  imagenet = ResNet(stage_sizes=(1, 1, 1, 1), width=4)
  feats = jax.eval_shape(lambda: imagenet.init_with_output(jax.random.key(0), x)[0])
  assert feats[0].shape == (1, 8, 8, 4)
  with pytest.raises(ValueError, match='stem'):
    jax.eval_shape(lambda: ResNet(stem='tiny').init(jax.random.key(0), x))


def test_max_pool2_and_its_gradient_match_pytorch_max_pool2d_behind_a_relu():
  """VGG's pool as a reshape: PyTorch's values and input gradients, odd sizes included; a
  window of ReLU zeros (tied maxima) passes no gradient in either."""
  import torch  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 7, 3)).astype(np.float32)
  x[0, :2, :2, 0] = -1.0  # one window that the ReLU turns into four tied zeros
  weights = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)

  def ours(x):
    return jnp.sum(layers.max_pool2(jax.nn.relu(x)) * weights)

  value, grad = jax.value_and_grad(ours)(jnp.asarray(x))
  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  pooled = torch.nn.functional.max_pool2d(torch.relu(xt), 2, 2)
  theirs = (pooled * torch.tensor(weights.transpose(0, 3, 1, 2))).sum()
  theirs.backward()
  np.testing.assert_allclose(float(value), theirs.item(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-6)
  np.testing.assert_array_equal(
    np.asarray(layers.max_pool2(jnp.asarray(x))),
    torch.nn.functional.max_pool2d(torch.tensor(x.transpose(0, 3, 1, 2)), 2, 2)
    .numpy()
    .transpose(0, 2, 3, 1),
  )
  assert np.all(np.asarray(grad)[0, :2, :2, 0] == 0)
