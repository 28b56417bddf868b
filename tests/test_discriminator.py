"""Tests of the LSGAN discriminators (paper §3.4 eq. 2-4).

Shapes, dtypes and variable trees are checked with ``jax.eval_shape`` (nothing compiled);
only a few tests compile and run a network, at 32 px with small widths, because XLA
compilation dominates the run time on the shared 2-core CPU.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdgan_jax.models.discriminator import (
  DownBlock,
  GlobalDiscriminator,
  MultiscalePatchDiscriminator,
  build_discriminator,
  patch_output_size,
)
from sdgan_jax.models.layers import count_params
from sdgan_jax.perf import flops as flops_lib

NUM_CLASSES = 11
SMALL_GLOBAL = dict(widths=(8, 16, 16, 32, 32), hidden=16)
SMALL_PATCH = dict(base_width=8, max_width=32)


def _inputs(size, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, (batch, size, size))
  return jnp.asarray(image), jnp.asarray(np.eye(NUM_CLASSES, dtype=np.float32)[labels])


def _init(module, *args, seed=0):
  """Variables drawn with numpy on the shapes of ``module.init``.

  Compiling JAX's threefry sampling takes seconds per shape on a busy 2-core CPU, far more
  than running these small nets, so the tests draw the values with numpy instead.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'kernel':
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name.endswith('/u'):
      value = rng.normal(size=leaf.shape)
    elif name.endswith('/sigma') or name in ('scale', 'var'):
      value = np.ones(leaf.shape)
    else:
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _output_shapes(module, image, semantic):
  """Shapes of (variables, eval-mode output, train-mode output), nothing compiled."""

  def run():
    variables = module.init(jax.random.key(0), image, semantic)
    eval_out = module.apply(variables, image, semantic, train=False)
    train_out = module.apply(variables, image, semantic, train=True, mutable=['batch_stats'])[0]
    return variables, eval_out, train_out

  return jax.eval_shape(run)


def _conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def _dense(cin, cout):
  return cin * cout + cout


@pytest.mark.parametrize('size', [64, 128])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_global_shapes_and_dtypes(size, dtype):
  image, semantic = _inputs(size)
  d = GlobalDiscriminator(**SMALL_GLOBAL, dtype=dtype)
  variables, eval_out, train_out = _output_shapes(d, image, semantic)
  # float32 scores whatever the compute dtype: the LSGAN squares are taken in float32.
  for out in (eval_out, train_out):
    assert out.shape == (2, 1) and out.dtype == jnp.float32
  # The flattened map feeding the first dense layer: (size / 32)^2 * last width.
  assert variables['params']['fc1']['Dense_0']['kernel'].shape == ((size // 32) ** 2 * 32, 16)


@pytest.mark.parametrize('spectral_norm', [False, True])
def test_bf16_compute_keeps_float32_params(spectral_norm):
  image, semantic = _inputs(32, batch=1)
  d = GlobalDiscriminator(**SMALL_GLOBAL, spectral_norm=spectral_norm, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(d.init, jax.random.key(0), image, semantic)
  assert {p.dtype for p in jax.tree_util.tree_leaves(shapes['params'])} == {np.dtype(np.float32)}


def test_global_param_count_full_size():
  """Authors' D at 128 px, 14 input channels: 18.24 M."""
  cin = 3 + NUM_CLASSES
  expected = 0
  for cout in (64, 128, 256, 512, 512):
    expected += _conv(3, cin, cout) + _conv(3, cout, cout) + _conv(1, cin, cout)
    cin = cout
  expected += _dense(4 * 4 * 512, 1024) + _dense(1024, 1)
  assert expected == 18_238_529 and round(expected / 1e6, 2) == 18.24
  image, semantic = _inputs(128, batch=1)
  for sn in (True, False):
    shapes = jax.eval_shape(
      GlobalDiscriminator(spectral_norm=sn).init, jax.random.key(0), image, semantic
    )
    assert count_params(shapes) == expected
  # At 64 px only the first dense layer shrinks (2x2x512 inputs).
  image, semantic = _inputs(64, batch=1)
  shapes = jax.eval_shape(GlobalDiscriminator().init, jax.random.key(0), image, semantic)
  assert count_params(shapes) == expected - _dense(8192, 1024) + _dense(2048, 1024)


def test_global_flops_full_size():
  """7.8 GFLOP per 128-px image forward (2 FLOP per multiply-add, convs and dense layers)."""
  d = GlobalDiscriminator()
  forward = lambda v, *a: d.apply(v, *a)
  variables = jax.eval_shape(d.init, jax.random.key(0), *_inputs(128, batch=1))
  flops = flops_lib.conv_dense_flops(
    forward, variables, *_inputs(128, batch=2)
  ) - flops_lib.conv_dense_flops(forward, variables, *_inputs(128, batch=1))
  assert abs(flops / 1e9 - 7.8) / 7.8 < 0.02, flops / 1e9


def test_global_layout_full_size():
  """5 down-blocks 128 -> 4 px, 64..512 wide; spectral norm on every conv, none on the
  dense layers."""
  image, semantic = _inputs(128, batch=1)
  d = GlobalDiscriminator()
  variables = jax.eval_shape(d.init, jax.random.key(0), image, semantic)
  _, inter = jax.eval_shape(
    lambda v: d.apply(v, image, semantic, capture_intermediates=True, mutable=['intermediates']),
    variables,
  )
  assert [inter['intermediates'][f'block{i}']['__call__'][0].shape for i in range(1, 6)] == [
    (1, 64, 64, 64),
    (1, 32, 32, 128),
    (1, 16, 16, 256),
    (1, 8, 8, 512),
    (1, 4, 4, 512),
  ]
  params, stats = variables['params'], variables['batch_stats']
  assert params['block1']['shortcut']['Conv_0']['kernel'].shape == (1, 1, 14, 64)
  assert params['block5']['shortcut']['Conv_0']['kernel'].shape == (1, 1, 512, 512)
  assert set(stats) == {f'block{i}' for i in range(1, 6)}  # no spectral norm on fc1, fc2
  assert all(set(stats[b]) == {'conv1', 'conv2', 'shortcut'} for b in stats)


def _down_block_reference(params, x):
  """Pre-activation residual down-block in plain numpy (no spectral norm)."""

  def conv(p, y):
    kernel, bias = np.asarray(p['Conv_0']['kernel']), np.asarray(p['Conv_0']['bias'])
    k = kernel.shape[0]
    pad = k // 2
    y = np.pad(y, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
    out = np.zeros(y.shape[:1] + (y.shape[1] - 2 * pad, y.shape[2] - 2 * pad, kernel.shape[-1]))
    for i in range(k):
      for j in range(k):
        out += np.einsum(
          'bhwc,co->bhwo', y[:, i : i + out.shape[1], j : j + out.shape[2]], kernel[i, j]
        )
    return out + bias

  pool = lambda y: y.reshape(y.shape[0], y.shape[1] // 2, 2, y.shape[2] // 2, 2, y.shape[3]).mean(
    axis=(2, 4)
  )
  relu = lambda y: np.maximum(y, 0)
  right = pool(conv(params['conv2'], relu(conv(params['conv1'], relu(x)))))
  return right + pool(conv(params['shortcut'], x))


def test_down_block_is_pre_activation():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  block = DownBlock(4, spectral_norm=False)
  variables = _init(block, x)
  out = np.asarray(jax.jit(block.apply)(variables, x))
  # negative outputs survive: no activation after the sum
  assert (out < 0).any()
  np.testing.assert_allclose(out, _down_block_reference(variables['params'], x), atol=1e-4)


@pytest.mark.slow
def test_global_true_size_forward_64():
  image, semantic = _inputs(64, batch=1)
  d = GlobalDiscriminator()
  variables = _init(d, image, semantic)
  out, updates = jax.jit(lambda v, x, s: d.apply(v, x, s, train=True, mutable=['batch_stats']))(
    variables, image, semantic
  )
  assert out.shape == (1, 1) and np.isfinite(np.asarray(out)).all()
  assert jax.tree_util.tree_structure(updates['batch_stats']) == jax.tree_util.tree_structure(
    variables['batch_stats']
  )


def test_global_rejects_bad_sizes():
  image, semantic = _inputs(32)
  d = GlobalDiscriminator(**SMALL_GLOBAL)
  with pytest.raises(ValueError, match='divisible'):
    jax.eval_shape(d.init, jax.random.key(0), image[:, :24, :24], semantic[:, :24, :24])
  with pytest.raises(ValueError, match='spatial'):
    jax.eval_shape(d.init, jax.random.key(0), image, semantic[:, :16, :16])


def _lsgan_d_loss(d, params, batch_stats, real, fake, semantic):
  """Eq. 2: 1/2 E[(D(x)-1)^2] + 1/2 E[D(G(z))^2], summed over scales for lists."""
  image = jnp.concatenate([real, fake])
  sem = jnp.concatenate([semantic, semantic])
  out, updates = d.apply(
    {'params': params, 'batch_stats': batch_stats}, image, sem, train=True, mutable=['batch_stats']
  )
  outs = out if isinstance(out, list) else [out]
  n = real.shape[0]
  loss = sum(0.5 * jnp.mean((o[:n] - 1) ** 2) + 0.5 * jnp.mean(o[n:] ** 2) for o in outs)
  return loss, updates


def _lsgan_step(d, variables, real, fake):
  """Jitted (params, batch_stats, semantic) -> (grads, grad wrt semantic, batch_stats)."""

  @jax.jit
  def step(params, batch_stats, semantic):
    loss_fn = lambda p, s: _lsgan_d_loss(d, p, batch_stats, real, fake, s)
    (grads, grad_semantic), updates = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
      params, semantic
    )
    return grads, grad_semantic, updates['batch_stats']

  return step


@pytest.fixture(scope='module')
def global_setup():
  """A 3-block global D at 32 px and its LSGAN step, compiled once for two tests."""
  real, semantic = _inputs(32)
  fake = jnp.clip(real[::-1] + 0.1, 0, 1)
  d = GlobalDiscriminator(widths=(8, 16, 16), hidden=16)
  variables = _init(d, real, semantic)
  return variables, semantic, _lsgan_step(d, variables, real, fake)


def _check_gradients(grads, grad_semantic):
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
  # Every kernel receives gradient (no dead branch) and so does the semantic input: the
  # score depends on the conditioning map.
  for path, g in flax.traverse_util.flatten_dict(grads).items():
    if path[-1] == 'kernel':
      assert np.abs(np.asarray(g)).max() > 0, path
  assert np.abs(np.asarray(grad_semantic)).max() > 0


def test_global_lsgan_gradients_finite(global_setup):
  variables, semantic, step = global_setup
  grads, grad_semantic, _ = step(variables['params'], variables['batch_stats'], semantic)
  _check_gradients(grads, grad_semantic)


def test_multiscale_lsgan_gradients_finite():
  real, semantic = _inputs(32)
  fake = jnp.clip(real[::-1] + 0.1, 0, 1)
  d = MultiscalePatchDiscriminator(num_layers=2, **SMALL_PATCH)
  variables = _init(d, real, semantic)
  grads, grad_semantic, _ = _lsgan_step(d, variables, real, fake)(
    variables['params'], variables['batch_stats'], semantic
  )
  _check_gradients(grads, grad_semantic)


@pytest.mark.parametrize(
  'kind,kwargs', [('global', SMALL_GLOBAL), ('multiscale_patch', SMALL_PATCH)]
)
def test_spectral_norm_switches_variable_tree(kind, kwargs):
  image, semantic = _inputs(32, batch=1)
  on = build_discriminator(kind, **kwargs, spectral_norm=True)
  off = build_discriminator(kind, **kwargs, spectral_norm=False)
  v_on = jax.eval_shape(on.init, jax.random.key(0), image, semantic)
  v_off = jax.eval_shape(off.init, jax.random.key(0), image, semantic)
  assert 'batch_stats' not in v_off
  stats = flax.traverse_util.flatten_dict(v_on['batch_stats'])
  assert {path[-1].rsplit('/', 1)[-1] for path in stats} == {'u', 'sigma'}
  kernels = [p for p in flax.traverse_util.flatten_dict(v_on['params']) if p[-1] == 'kernel']
  # One (u, sigma) pair per normalised kernel: every conv of the global D (its two dense
  # layers have none), all but the final conv of each scale in the patch D (as SPADE).
  num_plain = 2
  assert len(stats) == 2 * (len(kernels) - num_plain)
  assert count_params(v_on) == count_params(v_off)
  # Eval mode needs no mutable collection, with or without spectral norm.
  for d in (on, off):
    jax.eval_shape(lambda: d.apply(d.init(jax.random.key(0), image, semantic), image, semantic))


def test_spectral_norm_top_singular_value_is_one(global_setup):
  """Miyato et al.: W / sigma(W) has spectral norm 1 once power iteration has converged."""
  variables, semantic, step = global_setup
  batch_stats = variables['batch_stats']
  for _ in range(50):  # params fixed: only the power iteration moves
    _, _, batch_stats = step(variables['params'], batch_stats, semantic)
  params = flax.traverse_util.flatten_dict(variables['params'])
  checked = 0
  for path, sigma in flax.traverse_util.flatten_dict(batch_stats).items():
    if not path[-1].endswith('/sigma'):
      continue
    # ('block1', 'conv1', 'SpectralNorm_0', 'Conv_0/kernel/sigma') -> params path.
    layer, leaf, _ = path[-1].split('/')
    kernel = np.asarray(params[path[:-2] + (layer, leaf)])
    singular_values = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)
    assert singular_values[0] / float(sigma) == pytest.approx(1.0, abs=2e-2), path
    # Not trivially 1: the raw kernels are far from unit norm.
    assert abs(singular_values[0] - 1) > 0.05, path
    checked += 1
  assert checked == 3 * 3


@pytest.mark.parametrize('size', [64, 128])
def test_multiscale_output_sizes(size):
  image, semantic = _inputs(size, batch=1)
  d = MultiscalePatchDiscriminator(**SMALL_PATCH)
  for outs in _output_shapes(d, image, semantic)[1:]:
    # Kernel 4, padding 2: stride 2 maps n -> n//2 + 1, stride 1 maps n -> n + 1; 3 strided
    # and 1 unstrided width layers plus the output conv: 64 -> 33, 17, 9, 10, 11.
    expected = {64: [11, 7], 128: [19, 11]}[size]
    assert [o.shape for o in outs] == [(1, s, s, 1) for s in expected]
    assert all(o.dtype == jnp.float32 for o in outs)
  assert [patch_output_size(size >> s) for s in range(2)] == expected


def test_multiscale_num_scales_and_bf16():
  image, semantic = _inputs(64, batch=1)
  d = MultiscalePatchDiscriminator(num_scales=3, num_layers=3, **SMALL_PATCH, dtype=jnp.bfloat16)
  outs = _output_shapes(d, image, semantic)[1]
  # Inputs 64, 32, 16; two strided convs, one unstrided, the output conv.
  assert [o.shape[1] for o in outs] == [19, 11, 7]
  assert [o.shape[1] for o in outs] == [patch_output_size(64 >> s, 3) for s in range(3)]
  assert all(o.dtype == jnp.float32 for o in outs)


def test_multiscale_param_count_full_size():
  """SPADE's default D (n_layers_D=4, 2 scales) with 14 input channels."""
  per_scale = (
    _conv(4, 14, 64)
    + _conv(4, 64, 128, False)
    + _conv(4, 128, 256, False)
    + _conv(4, 256, 512, False)
    + _conv(4, 512, 1)
  )
  image, semantic = _inputs(128, batch=1)
  shapes = jax.eval_shape(MultiscalePatchDiscriminator().init, jax.random.key(0), image, semantic)
  assert count_params(shapes) == 2 * per_scale == 5_550_210


def test_build_discriminator():
  assert isinstance(build_discriminator('global'), GlobalDiscriminator)
  d = build_discriminator('multiscale_patch', num_scales=3)
  assert isinstance(d, MultiscalePatchDiscriminator) and d.num_scales == 3
  with pytest.raises(ValueError, match='unknown discriminator kind'):
    build_discriminator('patch')
