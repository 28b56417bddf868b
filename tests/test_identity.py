"""Tests of the Siamese identity network (paper §3.4 eq. 8), both presets.

Shapes, dtypes and parameter counts use ``jax.eval_shape``; the two numeric tests share one
small network at 32 px because XLA compilation dominates the run time on the shared CPU.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdgan_jax.models import identity as identity_lib
from sdgan_jax.models.identity import IdentityNet, identity_from_config, siamese_embeddings
from sdgan_jax.models.layers import count_params
from sdgan_jax.perf import flops as flops_lib

SMALL = dict(num_identities=10, embed_dim=32, width=8)


def _images(size, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(size=(batch, size, size, 3)).astype(np.float32))


def _init(module, x, seed=0):
  """Variables drawn with numpy on the shapes of ``module.init`` (threefry compiles slowly)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ('scale', 'var'):
      value = np.ones(leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize('size', [64, 128])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(size, dtype):
  net = IdentityNet(**SMALL, dtype=dtype)
  x = _images(size)

  def run():
    variables = net.init(jax.random.key(0), x)
    eval_out = net.apply(variables, x, train=False)
    train_out, updates = net.apply(variables, x, train=True, mutable=['batch_stats'])
    return variables, eval_out, train_out, updates

  variables, eval_out, train_out, updates = jax.eval_shape(run)
  for out in (eval_out, train_out):
    assert out['embedding'].shape == (2, 32) and out['embedding'].dtype == jnp.float32
    assert out['logits'].shape == (2, 10) and out['logits'].dtype == jnp.float32
  assert {p.dtype for p in jax.tree_util.tree_leaves(variables['params'])} == {np.dtype(np.float32)}
  assert set(updates) == {'batch_stats'}


def test_no_head():
  net = IdentityNet(num_identities=0, embed_dim=32, width=8)
  x = _images(64)
  out = jax.eval_shape(lambda: net.apply(net.init(jax.random.key(0), x), x))
  assert out['logits'] is None and out['embedding'].shape == (2, 32)
  variables = jax.eval_shape(net.init, jax.random.key(0), x)
  assert 'head' not in variables['params']


def _resnet18_trunk_params(width=64, stem_kernel=7):
  """Torchvision ResNet-18 without fc: convs (no bias) + batch-norm scale and bias."""
  conv = lambda k, cin, cout: k * k * cin * cout
  bn = lambda c: 2 * c
  total = conv(stem_kernel, 3, width) + bn(width)
  cin = width
  for stage in range(4):
    cout = width * 2**stage
    for block in range(2):
      total += conv(3, cin, cout) + bn(cout) + conv(3, cout, cout) + bn(cout)
      if block == 0 and (stage > 0 or cin != cout):
        total += conv(1, cin, cout) + bn(cout)
      cin = cout
  return total


def test_param_count_full_size():
  """'resnet18' preset: torchvision ResNet-18 trunk + 512->1024 + 1024->1200: 12,931,824."""
  trunk = _resnet18_trunk_params()
  assert trunk == 11_176_512
  expected = trunk + (512 * 1024 + 1024) + (1024 * 1200 + 1200)
  assert expected == 12_931_824
  shapes = jax.eval_shape(IdentityNet().init, jax.random.key(0), _images(128, batch=1))
  assert count_params(shapes) == expected
  no_head = jax.eval_shape(
    IdentityNet(num_identities=0).init, jax.random.key(0), _images(128, batch=1)
  )
  assert count_params(no_head) == expected - (1024 * 1200 + 1200)


def test_authors_preset_size_flops_and_layout():
  """The authors' Siamese net: 3x3/1 stem, no max-pool, head 512 -> 1024 -> ReLU -> 1200
  (the embedding, no logits); 12.92 M parameters and 17.8 GFLOP per 128-px image."""
  net = identity_from_config({'preset': 'authors'})
  assert (net.stem, net.normalize_input, net.hidden_dim, net.embed_dim, net.num_identities) == (
    'cifar',
    False,
    1024,
    1200,
    0,
  )
  x = _images(128, batch=1)
  variables = jax.eval_shape(net.init, jax.random.key(0), x)
  trunk = _resnet18_trunk_params(stem_kernel=3)
  expected = trunk + (512 * 1024 + 1024) + (1024 * 1200 + 1200)
  assert count_params(variables) == expected == 12_924_144
  assert abs(expected - 12.92e6) / 12.92e6 < 0.02
  params = variables['params']
  assert params['trunk']['conv1']['kernel'].shape == (3, 3, 3, 64)
  assert 'head' not in params and params['embed']['kernel'].shape == (1024, 1200)

  def run(v):
    return net.apply(v, x, capture_intermediates=True, mutable=['intermediates'])

  out, inter = jax.eval_shape(run, variables)
  assert out['logits'] is None and out['embedding'].shape == (1, 1200)
  stages = inter['intermediates']['trunk']
  # no max-pool: stage 1 keeps 128 px, then strides 2, 2, 2
  assert [stages[f'layer{i}_1']['__call__'][0].shape for i in range(1, 5)] == [
    (1, 128, 128, 64),
    (1, 64, 64, 128),
    (1, 32, 32, 256),
    (1, 16, 16, 512),
  ]
  forward = lambda v, a: net.apply(v, a)
  flops = flops_lib.conv_dense_flops(
    forward, variables, _images(128, batch=2)
  ) - flops_lib.conv_dense_flops(forward, variables, x)
  assert abs(flops / 1e9 - 17.8) / 17.8 < 0.02, flops / 1e9


def test_authors_preset_takes_images_as_they_are():
  """No mean/std normalisation: a constant image reaches the stem conv unchanged."""
  net = identity_from_config({'preset': 'authors', 'width': 8, 'hidden_dim': 16, 'embed_dim': 8})
  x = jnp.full((1, 16, 16, 3), 0.5)
  variables = _init(net, x)
  _, inter = jax.jit(
    lambda v: net.apply(v, x, capture_intermediates=True, mutable=['intermediates'])
  )(variables)
  stem = np.asarray(inter['intermediates']['trunk']['conv1']['__call__'][0])
  kernel = np.asarray(variables['params']['trunk']['conv1']['kernel'])
  np.testing.assert_allclose(stem[0, 8, 8], 0.5 * kernel.sum(axis=(0, 1, 2)), rtol=1e-5)


def test_identity_from_config():
  assert identity_from_config({}) == IdentityNet()
  net = identity_from_config({'num_identities': 8, 'embed_dim': 128}, dtype=jnp.bfloat16)
  assert (net.num_identities, net.embed_dim, net.dtype, net.stem) == (
    8,
    128,
    jnp.bfloat16,
    'imagenet',
  )
  net = identity_from_config({'preset': 'authors', 'width': 8})
  assert net.width == 8 and net.stem == 'cifar'
  # the preset's field values build the same network as the preset name
  assert identity_from_config(dict(identity_lib.AUTHORS)) == identity_from_config(
    {'preset': 'authors'}
  )
  with pytest.raises(ValueError, match='model.identity.preset'):
    identity_from_config({'preset': 'vgg'})
  with pytest.raises(ValueError, match='unknown key model.identity.embedding'):
    identity_from_config({'embedding': 3})


@pytest.fixture(scope='module')
def small_net():
  net = IdentityNet(**SMALL)
  x = _images(32, batch=4)
  variables = _init(net, x)
  embed = jax.jit(lambda v, a, b: siamese_embeddings(net.apply, v, a, b)[0])
  return net, variables, embed


def test_siamese_embeddings_share_weights(small_net):
  _, variables, embed = small_net
  x = _images(32, batch=4, seed=1)
  # Identical images give identical embeddings, in either slot of the pair.
  e1, e2 = embed(variables, x, x)
  np.testing.assert_allclose(np.asarray(e1), np.asarray(e2), rtol=0, atol=1e-6)
  # A shifted image (same content, moved by 4 px) and a different image are told apart.
  shifted = jnp.roll(x, 4, axis=2)
  other = x[::-1]
  f1, f2 = embed(variables, x, shifted)
  g1, g2 = embed(variables, shifted, other)
  np.testing.assert_allclose(np.asarray(f1), np.asarray(e1), atol=1e-6)
  np.testing.assert_allclose(np.asarray(g1), np.asarray(f2), atol=1e-6)  # slot-independent
  scale = np.linalg.norm(np.asarray(e1), axis=-1)
  for a, b in ((e1, f2), (e1, g2)):
    dist = np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)
    assert (dist > 1e-3 * scale).all()


def test_contrastive_gradients_finite(small_net):
  """Eq. 8 on squared distances, batch-norm in training mode."""
  net, variables, _ = small_net
  x1 = _images(32, batch=4, seed=2)
  x2 = jnp.concatenate([jnp.roll(x1[:2], 2, axis=1), _images(32, batch=2, seed=3)])
  same = jnp.asarray([1.0, 1.0, 0.0, 0.0])

  def loss_fn(params):
    (e1, e2), updates = siamese_embeddings(
      net.apply, {'params': params, 'batch_stats': variables['batch_stats']}, x1, x2, train=True
    )
    d2 = jnp.sum((e1 - e2) ** 2, axis=-1)
    # The margin sits above the untrained distances so that the hinge term is active too.
    margin = 3.0 + 2 * jax.lax.stop_gradient(jnp.max(d2))
    loss = jnp.mean(same * d2 + (1 - same) * jnp.maximum(0.0, margin - d2))
    return loss, updates

  grads, updates = jax.jit(jax.grad(loss_fn, has_aux=True))(variables['params'])
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
  flat = flax.traverse_util.flatten_dict(grads)
  # The classifier head is not in the contrastive loss; everything under the embedding is.
  for path, g in flat.items():
    if path[-1] == 'kernel' and path[0] != 'head':
      assert np.abs(np.asarray(g)).max() > 0, path
  assert jax.tree_util.tree_structure(updates['batch_stats']) == jax.tree_util.tree_structure(
    variables['batch_stats']
  )


def test_siamese_rejects_mismatched_pairs(small_net):
  net, variables, _ = small_net
  with pytest.raises(ValueError, match='same shape'):
    siamese_embeddings(net.apply, variables, _images(32, batch=2), _images(32, batch=3))
