"""The CPU export (``sdgan_jax.cpu_export``): its route choice, the TensorFlow lowering
against lax itself, the checksum cache, and each network's export against its Flax float32
outputs.

Tolerances, per network, on outputs of the float32 XLA path: float32 exports within 1e-4 of
the output's scale (summation order only); bfloat16 exports (8-bit mantissas in every
convolution and matrix product, float32 sums) within 8% of the scale at any element and
1% on average (BlazeFace short range, measured: 5.9% and 0.3% of its logits' scale).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import train_fixtures
from jax import lax

from sdgan_jax import cpu_export, weights
from sdgan_jax.cpu_export import artefact, lowering
from sdgan_jax.perf import benchmarking

AMX = frozenset({'avx2', 'avx512f', 'amx_bf16', 'amx_tile'})
ZEN = frozenset({'avx2', 'fma'})
FP32_TOL = 1e-4
BF16_MAX_TOL, BF16_MEAN_TOL = 0.08, 0.01


def assert_close(got, ref, precision):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape
  scale = max(np.abs(ref).max(), 1e-6)
  err = np.abs(got - ref) / scale
  if precision == 'float32':
    assert err.max() <= FP32_TOL, err.max()
  else:
    assert err.max() <= BF16_MAX_TOL and err.mean() <= BF16_MEAN_TOL, (err.max(), err.mean())


def run_lowered(fn, *args, precision='float32'):
  closed = jax.make_jaxpr(fn)(*args)
  dtype = tf.bfloat16 if precision == 'bfloat16' else tf.float32
  return [o.numpy() for o in lowering.lower(closed, [tf.constant(a) for a in args], dtype)]


# --- the route ------------------------------------------------------------------------------


def test_auto_uses_bf16_matrix_units_for_the_generator_only():
  assert cpu_export.route('generator', 'auto', AMX, 'cpu') == ('tf', 'bfloat16')
  assert cpu_export.route('detector', 'auto', AMX, 'cpu') == ('xla', 'float32')
  assert cpu_export.route('generator', 'auto', {'avx512_bf16'}, 'cpu') == ('tf', 'bfloat16')


def test_auto_keeps_xla_without_matrix_units_or_off_cpus():
  for kind in cpu_export.KINDS:
    assert cpu_export.route(kind, 'auto', ZEN, 'cpu') == ('xla', 'float32')
    assert cpu_export.route(kind, 'tf_bfloat16', AMX, 'gpu') == ('xla', 'float32')


def test_forced_backends_apply_to_every_network():
  for kind in cpu_export.KINDS:
    assert cpu_export.route(kind, 'xla', AMX, 'cpu') == ('xla', 'float32')
    assert cpu_export.route(kind, 'tf_float32', ZEN, 'cpu') == ('tf', 'float32')
    assert cpu_export.route(kind, 'tf_bfloat16', ZEN, 'cpu') == ('tf', 'bfloat16')
  with pytest.raises(ValueError, match='cpu_backend must be one of auto'):
    cpu_export.route('generator', 'onnx', ZEN, 'cpu')


def test_cpu_flags_come_from_the_first_processor(tmp_path):
  info = tmp_path / 'cpuinfo'
  info.write_text(
    'processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 amx_bf16\n\n'
    'processor\t: 1\nflags\t\t: fpu\n'
  )
  flags = cpu_export.cpu_flags.__wrapped__(str(info))
  assert flags == {'fpu', 'avx2', 'amx_bf16'}
  assert cpu_export.has_bf16_matrix_units(flags)
  assert not cpu_export.has_bf16_matrix_units(ZEN)
  assert cpu_export.cpu_flags.__wrapped__(str(tmp_path / 'missing')) == frozenset()


def test_options_refuse_an_unknown_backend():
  from sdgan_jax import anonymize  # pylint: disable=import-outside-toplevel

  with pytest.raises(ValueError, match='cpu_backend must be one of'):
    anonymize.Options(cpu_backend='fast')


# --- the lowering against lax ---------------------------------------------------------------

CONVS = [
  # (input shape, kernel shape, kwargs)
  ((2, 9, 9, 4), (3, 3, 4, 6), dict(window_strides=(1, 1), padding='SAME')),
  ((2, 9, 9, 4), (3, 3, 4, 6), dict(window_strides=(2, 2), padding=((1, 0), (2, 1)))),
  ((2, 9, 9, 4), (3, 3, 1, 8), dict(window_strides=(2, 2), padding='SAME', feature_group_count=4)),
  ((2, 9, 9, 4), (3, 3, 2, 6), dict(window_strides=(1, 1), padding='VALID', feature_group_count=2)),
  ((2, 9, 9, 4), (3, 3, 4, 6), dict(window_strides=(1, 1), padding='SAME', rhs_dilation=(2, 2))),
]


@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
@pytest.mark.parametrize('shapes', CONVS)
def test_convolutions_match_lax(shapes, precision):
  x_shape, w_shape, kwargs = shapes
  rng = np.random.default_rng(0)
  x = rng.normal(size=x_shape).astype(np.float32)
  w = rng.normal(size=w_shape).astype(np.float32)
  fn = lambda x, w: lax.conv_general_dilated(  # noqa: E731
    x, w, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), **kwargs
  )
  [got] = run_lowered(fn, x, w, precision=precision)
  assert_close(got, fn(x, w), precision)
  # the same in PyTorch's layout: the lowering follows the dimension numbers
  nchw = lambda x, w: lax.conv_general_dilated(  # noqa: E731
    x, w, dimension_numbers=('NCHW', 'OIHW', 'NCHW'), **kwargs
  )
  xt, wt = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
  [got] = run_lowered(nchw, xt, wt, precision=precision)
  assert_close(got, nchw(xt, wt), precision)


def test_shape_and_elementwise_primitives_match_lax():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  y = rng.normal(size=(2, 3, 5)).astype(np.float32)

  def fn(x, y):
    pooled = lax.reduce_window(
      x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )
    summed = lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    cropped = lax.pad(x, 0.5, ((0, 0, 0), (-1, 2, 0), (1, -2, 0), (0, 0, 0)))
    batched = jnp.einsum('bhc,bcd->bhd', x[:, 0], y)
    ramp = lax.broadcasted_iota(jnp.float32, (6, 3), 0)
    picked = jnp.where(x > 0, jax.nn.sigmoid(x), lax.rsqrt(jnp.abs(x) + 1))
    parts = jnp.split(x, 3, axis=3)
    return (
      pooled,
      summed,
      cropped,
      batched,
      ramp * x[0, 0, 0],
      picked,
      jnp.concatenate(parts[::-1], -1),
      jnp.flip(x, 1).sum((1, 2)),
      jnp.stack([x.max(3), x.min(3)]),
      x.astype(jnp.int32) // 2,
    )

  got = run_lowered(fn, x, y)
  for a, b in zip(got, jax.tree_util.tree_leaves(fn(x, y))):
    assert_close(a, b, 'float32')


def test_an_unsupported_primitive_is_named():
  closed = jax.make_jaxpr(lambda x: jnp.sort(x) * 2)(np.zeros(3, np.float32))
  with pytest.raises(lowering.UnsupportedPrimitive, match='no TensorFlow lowering for sort'):
    lowering.check(closed)


# --- the artefact and its cache -------------------------------------------------------------


def test_exports_are_cached_by_checksum(tmp_path):
  fn = lambda p, x: jnp.tanh(x @ p['w'] + p['b'])  # noqa: E731
  params = {'w': np.eye(3, dtype=np.float32) * 2, 'b': np.ones(3, np.float32)}
  x = np.arange(6, dtype=np.float32).reshape(2, 3) / 6
  first = artefact.export(fn, params, [x], folder=tmp_path)
  again = artefact.export(fn, params, [x], folder=tmp_path)
  assert not first.loaded and again.loaded and again.path == first.path
  np.testing.assert_allclose(again(x), fn(params, x), atol=1e-6)
  other = artefact.export(fn, {**params, 'b': params['b'] * 0}, [x], folder=tmp_path)
  assert other.path != first.path and not other.loaded
  np.testing.assert_allclose(other(x), np.tanh(x * 2), atol=1e-6)
  bigger = artefact.export(fn, params, [np.zeros((4, 3), np.float32)], folder=tmp_path)
  assert bigger.path != first.path
  half = artefact.export(fn, params, [x], precision='bfloat16', folder=tmp_path)
  assert half.path != first.path and 'bfloat16' in half.path.name


def test_a_network_the_lowering_cannot_write_stays_on_xla(monkeypatch, tmp_path):
  monkeypatch.setenv('SDGAN_CPU_EXPORT_CACHE', str(tmp_path))
  monkeypatch.setitem(cpu_export._state, 'backend', 'tf_float32')
  jitted = jax.jit(lambda p, x: jnp.sort(x) * p)
  net = cpu_export.network('sorter', 'generator', jitted)
  assert isinstance(net, cpu_export.Network)
  np.testing.assert_allclose(net(2.0, np.array([3.0, 1.0], np.float32)), [2.0, 6.0])
  assert net.runtime == 'xla' and cpu_export.used()['sorter'].startswith('xla float32 (')


# --- the networks ---------------------------------------------------------------------------


@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
def test_small_generator_export_matches_flax(precision, tmp_path):
  config = train_fixtures.tiny_config(32)
  generator = benchmarking._untrained_generator(config, 2)  # pylint: disable=protected-access
  batch = benchmarking._random_batch(config, 2)  # pylint: disable=protected-access
  inputs = [batch[k] for k in ('image', 'mask', 'semantic', 'target_identity')]
  plain = generator.generate_fn.__wrapped__
  exported = artefact.export(
    lambda w, *x: plain(*w, *x),
    (generator.params, generator.stats),
    inputs,
    precision=precision,
    folder=tmp_path,
  )
  ref = generator.generate_fn(generator.params, generator.stats, *inputs)
  assert_close(exported(*inputs), ref, precision)


def _detector_parity(name, precision, weights_dir, tmp_path, size):
  from sdgan_jax.faces import blazeface_detector, mesh  # pylint: disable=import-outside-toplevel

  # pylint: disable-next=protected-access
  jitted = mesh._jitted_apply() if name == 'face_mesh' else blazeface_detector._jitted_apply(name)
  variables = weights.load_weights(name, weights_dir)
  rng = np.random.default_rng(2)
  # smooth random images: a network's outputs on noise are near its biases only
  coarse = rng.integers(0, 256, (2, size // 8, size // 8, 3)).astype(np.float32)
  crops = np.repeat(np.repeat(coarse, 8, 1), 8, 2).astype(np.uint8)
  exported = artefact.export(
    jitted.__wrapped__, variables, [crops], precision=precision, folder=tmp_path, name=name
  )
  for got, ref in zip(
    jax.tree_util.tree_leaves(exported(crops)), jax.tree_util.tree_leaves(jitted(variables, crops))
  ):
    assert_close(got, ref, precision)


@pytest.mark.slow  # each export writes a graph of thousands of ops (~1 min on 2 cores)
@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
@pytest.mark.parametrize('name', ['blazeface_short_range', 'blazeface_full_range'])
def test_blazeface_export_matches_flax(name, precision, blazeface_weights, tmp_path):
  _detector_parity(name, precision, blazeface_weights[0], tmp_path, 128 if 'short' in name else 192)


@pytest.mark.slow
@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
def test_face_mesh_export_matches_flax(precision, face_mesh_weights, tmp_path):
  _detector_parity('face_mesh', precision, face_mesh_weights[0], tmp_path, 192)
