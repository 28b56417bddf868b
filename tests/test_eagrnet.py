"""Tests of the EAGRNet face parser (SDGAN §3.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdgan_jax.models import eagrnet
from sdgan_jax.models.layers import count_params

NUM_CLASSES = 11
SIZE = 64

TINY = dict(
  num_classes=NUM_CLASSES,
  depth=18,
  backbone_width=8,
  stage_sizes=(1, 1, 1, 1),
  num_vertices=4,
  context_features=16,
  edge_features=8,
  decoder_features=16,
  skip_features=8,
)

# Only test speed: XLA:CPU compiles the tiny network's backward pass about twice as fast
# without backend optimisations, and these shapes run in milliseconds either way.
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def _jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


def _init(model, *args):
  """Variables of ``model`` with Flax's default init statistics, drawn with NumPy.

  ``model.init`` is traced (``eval_shape``) for the variable tree, but the values come from
  NumPy: compiling a whole network's initialisers costs more CPU time than all the tests here.
  Kernels ~ N(0, 1/fan_in) (LeCun normal), biases 0, norm scales 1, running mean 0 / var 1.
  """
  shapes = jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *args)
  rng = np.random.RandomState(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']") or name.endswith("['var']"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if leaf.ndim < 2:  # biases and running means
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.randn(*leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _normal(seed, shape):
  return jnp.asarray(np.random.RandomState(seed).randn(*shape).astype(np.float32))


@pytest.fixture(scope='module')
def images():
  return jnp.asarray(np.random.RandomState(0).rand(2, SIZE, SIZE, 3).astype(np.float32))


@pytest.fixture(scope='module')
def labels():
  return jnp.asarray(np.random.RandomState(1).randint(0, NUM_CLASSES, (2, SIZE, SIZE)))


@pytest.fixture(scope='module')
def tiny(images):
  model = eagrnet.EAGRNet(**TINY)
  variables = _init(model, images)
  return model, variables


@pytest.fixture(scope='module')
def train_step(tiny, images, labels):
  """One compiled training forward/backward: (loss, grads, outputs, batch_stats updates)."""
  model, variables = tiny

  def loss_fn(params):
    out, updates = model.apply(
      {**variables, 'params': params}, images, train=True, mutable=['batch_stats']
    )
    logp = jax.nn.log_softmax(out['parsing'], axis=-1)
    loss = -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))
    return loss, (out, updates)

  (loss, (out, updates)), grads = _jit(jax.value_and_grad(loss_fn, has_aux=True))(
    variables['params']
  )
  return loss, grads, out, updates


def test_output_shapes_and_dtypes(tiny, train_step):
  _, variables = tiny
  _, _, out, _ = train_step
  assert set(out) == {'parsing', 'parsing_aux', 'edge'}
  assert out['parsing'].shape == (2, SIZE, SIZE, NUM_CLASSES)
  assert out['parsing_aux'].shape == (2, SIZE, SIZE, NUM_CLASSES)
  assert out['edge'].shape == (2, SIZE, SIZE, 2)
  for value in out.values():
    assert value.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(value)))
  # Different images must give different parsings (the net is not input-independent).
  assert float(jnp.abs(out['parsing'][0] - out['parsing'][1]).max()) > 1e-6
  # Every part of the network owns parameters.
  assert set(variables['params']) >= {
    'backbone',
    'psp',
    'edge',
    'eagr_context',
    'decoder',
    'eagr_decoder',
    'edge_fuse',
    'classifier',
  }


def test_batch_stats_update_in_training(tiny, train_step):
  _, variables = tiny
  _, _, _, updates = train_step
  old = jax.tree_util.tree_leaves_with_path(variables['batch_stats'])
  new = jax.tree_util.tree_leaves(updates['batch_stats'])
  assert len(old) == len(new) > 0
  unchanged = [
    jax.tree_util.keystr(path)
    for (path, a), b in zip(old, new)
    if np.allclose(np.asarray(a), np.asarray(b))
  ]
  assert not unchanged, f'batch statistics not updated: {unchanged}'


def test_parsing_gradients_finite(train_step):
  loss, grads, _, _ = train_step
  assert np.isfinite(float(loss))
  grads = jax.device_get(grads)  # numpy from here: no per-leaf op compilation
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
  norm = lambda tree: float(sum(np.sum(g**2) for g in jax.tree_util.tree_leaves(tree)))
  assert norm(grads['backbone']) > 0
  assert norm(grads['eagr_context']) > 0
  assert norm(grads['edge']['reduce1']) > 0  # edge features feed the edge way of the decoder
  # The edge logits only steer the graph projection through a stop-gradient, so the parsing
  # loss must not train the edge classifier (it learns from the edge loss alone).
  assert norm(grads['edge']['edge_classifier']) == 0.0
  assert norm(grads['edge']['fuse']) == 0.0


def test_bf16_compute_in_eval(tiny, images):
  _, variables = tiny
  model = eagrnet.EAGRNet(**TINY, dtype=jnp.bfloat16)
  # Evaluation reads the running statistics and must not need a mutable collection.
  out = _jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  assert out['parsing'].shape == (2, SIZE, SIZE, NUM_CLASSES)
  assert out['edge'].shape == (2, SIZE, SIZE, 2)
  for value in out.values():
    assert value.dtype in (jnp.bfloat16, jnp.float32)
    assert bool(jnp.all(jnp.isfinite(value)))
  assert float(jnp.abs(out['parsing'][0] - out['parsing'][1]).max()) > 0


def _backbone_params(depth):
  model = eagrnet.EAGRNet(depth=depth)
  shapes = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False),
    jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
  )
  return count_params(shapes['params']['backbone'])


@pytest.mark.parametrize('depth, expected', [(18, 11_176_512), (50, 23_508_032)])
def test_backbone_depth(depth, expected):
  # Torchvision ResNet-18 / ResNet-50 without the fc head.
  assert _backbone_params(depth) == expected


def test_bad_stage_sizes():
  model = eagrnet.EAGRNet(**{**TINY, 'stage_sizes': (1, 1, 1)})
  with pytest.raises(ValueError, match='stage_sizes'):
    jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    )


# --- pure helpers -----------------------------------------------------------------------------


def test_edge_labels_from_parsing():
  labels = np.array(
    [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
  )
  expected = np.array(
    [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
  )
  edges = eagrnet.edge_labels_from_parsing(jnp.asarray(labels))
  assert edges.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(edges), expected)
  # Batched input and a uniform map (no edges anywhere, the border is not an edge).
  batch = jnp.stack([jnp.asarray(labels), jnp.full((5, 5), 3)])
  edges = np.asarray(eagrnet.edge_labels_from_parsing(batch))
  np.testing.assert_array_equal(edges[0], expected)
  np.testing.assert_array_equal(edges[1], np.zeros((5, 5)))


def test_vertex_grid():
  assert eagrnet.vertex_grid(16) == (4, 4)
  assert eagrnet.vertex_grid(4) == (2, 2)
  assert eagrnet.vertex_grid(6) == (2, 3)
  assert eagrnet.vertex_grid(7) == (1, 7)
  with pytest.raises(ValueError):
    eagrnet.vertex_grid(0)


def test_adaptive_avg_pool():
  x = _normal(3, (1, 6, 6, 2))
  pooled = eagrnet.adaptive_avg_pool(x, 3, 2)
  expected = np.asarray(x).reshape(1, 3, 2, 2, 3, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(np.asarray(pooled), expected, rtol=1e-6, atol=1e-6)
  # More bins than pixels repeats pixels (PyTorch AdaptiveAvgPool bin edges).
  tiny = jnp.arange(2.0).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(
    np.asarray(eagrnet.adaptive_avg_pool(tiny, 2, 4))[0, :, :, 0], [[0, 0, 1, 1], [0, 0, 1, 1]]
  )


def test_projection_is_a_partition_of_unity():
  proj = _normal(4, (2, 8, 8, 5))
  edge = jnp.abs(_normal(5, (2, 8, 8, 1)))
  b = eagrnet.edge_aware_projection(proj, edge, (2, 3))
  assert b.shape == (2, 6, 64)
  assert bool(jnp.all(b >= 0))
  np.testing.assert_allclose(np.asarray(b.sum(axis=1)), 1.0, rtol=1e-6)
  # Hence vertices conserve the total feature mass: sum_k V_k = sum_n X_n ...
  state = _normal(6, (2, 8, 8, 3))
  v = eagrnet.project_to_vertices(state, b)
  np.testing.assert_allclose(
    np.asarray(v.sum(axis=1)), np.asarray(state.sum(axis=(1, 2))), rtol=1e-5, atol=1e-5
  )
  # ... and back-projecting a vertex feature shared by all vertices returns it at every pixel.
  shared = jnp.broadcast_to(jnp.array([1.5, -2.0, 0.25]), (2, 6, 3))
  back = eagrnet.project_to_pixels(shared, b, 8, 8)
  np.testing.assert_allclose(
    np.asarray(back), np.broadcast_to(shared[:, :1, None], back.shape), rtol=1e-6, atol=1e-6
  )


def test_projection_without_edges_is_uniform():
  # No edge anywhere: all anchors are zero, so every pixel is spread evenly over the K vertices.
  proj = _normal(7, (1, 8, 8, 4))
  b = eagrnet.edge_aware_projection(proj, jnp.zeros((1, 8, 8, 1)), (2, 2))
  np.testing.assert_allclose(np.asarray(b), 0.25, rtol=1e-6)


def test_back_projection_reproduces_vertices_at_anchor_pixels():
  # On a 4x4 map pooled to a (2+2)x(2+2) grid every cell is one pixel, so the K=4 anchors are
  # the edge-weighted features of the inner pixels (1,1), (1,2), (2,1), (2,2). Give anchor
  # pixel k the feature s*e_k and every other pixel zero: with edge probability 1 the
  # similarity of anchor pixel k to vertex j is s^2 [j == k], so its projection column is
  # (almost exactly) one-hot at k, and back-projection returns vertex k's features there.
  s = 10.0
  anchors = [(1, 1), (1, 2), (2, 1), (2, 2)]
  proj = np.zeros((1, 4, 4, 4), np.float32)
  for k, (i, j) in enumerate(anchors):
    proj[0, i, j, k] = s
  b = eagrnet.edge_aware_projection(jnp.asarray(proj), jnp.ones((1, 4, 4, 1)), (2, 2))
  for k, (i, j) in enumerate(anchors):
    np.testing.assert_allclose(np.asarray(b[0, :, i * 4 + j]), np.eye(4)[k], atol=1e-30 + 1e-6)
  # Pixels with zero features see all anchors equally.
  np.testing.assert_allclose(np.asarray(b[0, :, 0]), 0.25, rtol=1e-6)

  vertices = _normal(8, (1, 4, 3))
  back = np.asarray(eagrnet.project_to_pixels(vertices, b, 4, 4))
  for k, (i, j) in enumerate(anchors):
    np.testing.assert_allclose(back[0, i, j], np.asarray(vertices[0, k]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    back[0, 0, 0], np.asarray(vertices[0].mean(axis=0)), rtol=1e-5, atol=1e-6
  )


def test_eagr_module_is_residual_and_shape_preserving():
  x = _normal(9, (2, 8, 8, 16))
  edge = _normal(10, (2, 16, 16, 2))
  module = eagrnet.EAGRModule(num_vertices=4)
  variables = _init(module, x, edge)
  apply = _jit(module.apply)
  y = apply(variables, x, edge)
  assert y.shape == x.shape
  assert float(jnp.abs(y - x).max()) > 0  # the graph branch contributes
  # With the extend norm's scale and bias at zero only the residual path is left.
  params = jax.tree_util.tree_map(lambda p: p, variables['params'])
  params['extend_norm'] = jax.tree_util.tree_map(jnp.zeros_like, params['extend_norm'])
  y0 = apply({**variables, 'params': params}, x, edge)
  np.testing.assert_allclose(np.asarray(y0), np.asarray(x), rtol=1e-6, atol=1e-6)
