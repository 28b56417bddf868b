"""The jitted SDGAN train step: every network learns, sharding and precision don't change it.

Its update ratio and update loops: test_update_ratio.py."""

import functools
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import (
  assert_same_replicated_state,
  batch_for,
  max_change,
  shallow_config,
  tiny_config,
)

from sdgan_jax import network_updates, optimizers, parallel, train_step
from sdgan_jax.networks import Networks

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def setup():
  cfg = shallow_config()
  models = Networks(cfg)
  mesh = parallel.make_mesh()
  state = train_step.init_train_state(models, jax.random.key(0), mesh)
  return cfg, models, mesh, state, train_step.jit_train_step(models, mesh)


def test_one_step_updates_all_three_networks_and_reports_finite_losses(setup):
  cfg, models, mesh, state, step = setup
  # the step donates its input: keep a host copy (the PRNG key as its raw data)
  before = jax.tree_util.tree_map(np.asarray, state.replace(rng=jax.random.key_data(state.rng)))
  new, metrics = step(state, parallel.shard_batch(batch_for(cfg), mesh, train_step.BATCH_KEYS))
  metrics = {k: float(v) for k, v in metrics.items()}
  for key in (
    'train/id_contrastive',
    'train/d_lsgan',
    'train/g_adv',
    'train/g_ssim',
    'train/g_perceptual',
    'train/g_contrastive',
    'train/g_total',
  ):
    assert np.isfinite(metrics[key]), key
  assert metrics['train/all_finite'] == 1.0
  assert int(new.step) == 1
  for name in ('generator', 'discriminator', 'identity'):
    assert max_change(getattr(before, name).params, getattr(new, name).params) > 0, name
  # EMA moved towards the new generator params, by (1 - decay) of the step
  g_old = jax.tree_util.tree_leaves(before.generator.params)
  g_new = jax.tree_util.tree_leaves(new.generator.params)
  ema = jax.tree_util.tree_leaves(new.ema_params)
  decay = cfg.train.ema_decay
  for old, cur, e in zip(g_old, g_new, ema):
    np.testing.assert_allclose(e, decay * old + (1 - decay) * cur, rtol=1e-5, atol=1e-7)
  # ... and so did the EMA of its statistics, the ones paired with it at export
  s_old = jax.tree_util.tree_leaves(before.generator.stats)
  s_new = jax.tree_util.tree_leaves(new.generator.stats)
  assert s_old and max_change(before.generator.stats, new.generator.stats) > 0
  for old, cur, e in zip(s_old, s_new, jax.tree_util.tree_leaves(new.ema_stats)):
    np.testing.assert_allclose(e, decay * old + (1 - decay) * cur, rtol=1e-5, atol=1e-7)
  # the frozen perceptual network never changes
  assert max_change(before.perceptual_params, new.perceptual_params) == 0


def test_state_initialised_on_the_host_equals_the_device_initialised_one(setup):
  """The accelerator path (init on the host CPU, then placed replicated) gives the state
  the step takes: same values, same sharding, a usable PRNG key."""
  cfg, models, mesh, _, _ = setup
  direct = train_step.init_train_state(models, jax.random.key(7), mesh, on_host=False)
  hosted = train_step.init_train_state(models, jax.random.key(7), mesh, on_host=True)
  assert_same_replicated_state(direct, hosted)


def test_nan_in_batch_is_reported_not_hidden(setup):
  cfg, models, mesh, _, step = setup
  state = train_step.init_train_state(models, jax.random.key(1), mesh)
  batch = batch_for(cfg)
  batch['image'][0, 0, 0, 0] = np.nan
  _, metrics = step(state, parallel.shard_batch(batch, mesh, train_step.BATCH_KEYS))
  assert float(metrics['train/all_finite']) == 0.0


def test_missing_batch_key_is_named(setup):
  cfg, _, mesh, _, _ = setup
  batch = batch_for(cfg)
  del batch['pair_same']
  with pytest.raises(KeyError, match='pair_same'):
    parallel.shard_batch(batch, mesh, train_step.BATCH_KEYS)


def test_bad_dtype_or_optimizer_is_named():
  cfg = tiny_config()
  cfg.dtype = 'float16'
  with pytest.raises(ValueError, match='dtype'):
    Networks(cfg)
  cfg = tiny_config()
  cfg.optim.name = 'adagrad'
  with pytest.raises(ValueError, match='optim.name'):
    optimizers.optimizer(cfg.optim)


@pytest.mark.slow
def test_bfloat16_step_gives_losses_close_to_float32(setup):
  """Mixed precision (bf16 compute, fp32 params) must not change what is optimised."""
  cfg, models, mesh, _, step = setup
  batch = parallel.shard_batch(batch_for(cfg, seed=3), mesh, train_step.BATCH_KEYS)
  state32 = train_step.init_train_state(models, jax.random.key(2), mesh)
  _, m32 = step(state32, batch)
  cfg16 = shallow_config()
  cfg16.dtype = 'bfloat16'
  models16 = Networks(cfg16)
  state16 = train_step.init_train_state(models16, jax.random.key(2), mesh)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state16.generator.params))
  _, m16 = train_step.jit_train_step(models16, mesh)(state16, batch)
  for key in (
    'train/d_lsgan',
    'train/g_adv',
    'train/g_ssim',
    'train/g_perceptual',
    'train/id_contrastive',
  ):
    a, b = float(m32[key]), float(m16[key])
    assert abs(a - b) <= 0.05 * abs(a) + 1e-3, (key, a, b)


SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=8 '
                               '--xla_backend_optimization_level=0')
    os.environ['JAX_PLATFORMS'] = 'cpu'
    import jax, numpy as np
    jax.config.update('jax_default_matmul_precision', 'highest')
    jax.config.update('jax_threefry_partitionable', False)
    sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']
    from sdgan_jax import parallel, train_step
    from sdgan_jax.networks import Networks
    from train_fixtures import assert_same_replicated_state, batch_for, shallow_config
    assert jax.device_count() == 8
    cfg = shallow_config()
    cfg.train.batch_size = 8
    # Plain SGD: (new - old) / lr is exactly the gradient, the quantity sharding must keep.
    # (Adam's first step is ~lr*sign(g), which turns reduction-order noise in analytically-
    # zero gradients, e.g. a bias before instance norm, into differences of 2*lr.)
    cfg.optim.name = 'sgd'
    cfg.optim.learning_rate = lr = 1e-3
    models = Networks(cfg)
    batch = batch_for(cfg)
    host = lambda s: jax.tree_util.tree_map(np.asarray, s.replace(rng=jax.random.key_data(s.rng)))
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = jax.make_mesh((len(devices),), ('data',), devices=devices,
                           axis_types=(jax.sharding.AxisType.Auto,))
      # on the host for both meshes: one init program (as on accelerators), compiled once
      state = train_step.init_train_state(models, jax.random.key(0), mesh, on_host=True)
      old = host(state)
      sharded = parallel.shard_batch(batch, mesh, train_step.BATCH_KEYS)
      state, metrics = train_step.jit_train_step(models, mesh)(state, sharded)
      kernel = state.generator.params['stem']['Conv_0']['kernel']
      assert len(kernel.sharding.device_set) == len(devices)
      new = host(state)
      nets = lambda st: (st.generator.params, st.discriminator.params, st.identity.params)
      results.append((nets(old), nets(new), {k: float(v) for k, v in metrics.items()}))
    (o1, p1, m1), (o8, p8, m8) = results
    for k in m1:
      assert np.isfinite(m1[k]), k
      assert abs(m1[k] - m8[k]) <= 1e-5 * max(1.0, abs(m1[k])), (k, m1[k], m8[k])
    leaves = lambda t: jax.tree_util.tree_leaves(t)
    worst_param = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(p1), leaves(p8)))
    print('max param difference', worst_param)
    assert worst_param <= 1e-5, worst_param
    # The implied gradients (new - old) / lr agree too, up to the float32 rounding of the
    # stored parameters, which alone contributes about ulp(p) / lr.
    eps = np.finfo(np.float32).eps
    for a0, a, b in zip(leaves(o1), leaves(p1), leaves(p8)):
      g1, g8 = (a - a0) / lr, (b - a0) / lr
      bound = 1e-5 * max(1.0, float(np.max(np.abs(g1)))) + 4 * eps * float(
          np.max(np.abs(a0)) + 1e-30) / lr
      assert float(np.max(np.abs(g1 - g8))) <= bound
""")


@pytest.mark.slow
def test_eight_device_sharded_step_matches_one_device(tmp_path):
  script = tmp_path / 'sharded.py'
  script.write_text(SHARDED_SCRIPT)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run(
    [sys.executable, str(script), str(REPO)], capture_output=True, text=True, env=env, timeout=900
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'max param difference' in result.stdout


@pytest.mark.slow
def test_generator_learns_to_fill_the_masked_face_on_a_fixed_batch():
  """It learns, not only runs: on one fixed batch of a real face the reconstruction error
  of the masked region's composite falls by at least half in 100 steps (to ~0.3 of its
  first value, 0.22 after 200: running the steps is most of this test's time)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from skimage import data as skdata  # pylint: disable=import-outside-toplevel

  cfg = shallow_config()
  cfg.loss.lambda_l1 = 10.0  # the authors' reconstruction term
  cfg.optim.learning_rate = 1e-3  # a tiny network on one batch: 100 steps at 1e-3
  # One person in every pair: the identity net's task is degenerate here and its space
  # would drift under G's pull towards the target; it stays fixed (its own test is
  # test_identity_target.py)
  cfg.train.identity_steps = 0
  models = Networks(cfg)
  mesh = parallel.make_mesh()
  state = train_step.init_train_state(models, jax.random.key(0), mesh)
  step = train_step.jit_train_step(models, mesh)
  batch = batch_for(cfg)
  face = Image.fromarray(skdata.astronaut()[20:220, 125:325]).resize(
    (cfg.resolution, cfg.resolution), Image.BICUBIC
  )
  face = np.asarray(face, np.float32) / 255.0
  batch['image'][:] = face
  batch['pair_image'][:] = face[:, ::-1]
  batch['target_image'][:] = face[:, ::-1]  # a real face as the target too, not noise
  batch = parallel.shard_batch(batch, mesh, train_step.BATCH_KEYS)
  l1 = []
  for _ in range(100):
    state, metrics = step(state, batch)
    l1.append(float(metrics['train/g_l1']))
  assert float(metrics['train/all_finite']) == 1.0
  assert l1[-1] <= 0.5 * l1[0], (l1[0], l1[-1])


def test_update_loops_follow_the_platform_the_step_is_compiled_for(setup):
  """The step's program has the loop structure of the devices it is compiled for: one
  while loop per repeated update on accelerators (the generator's after the first, which
  shares its forward pass with D), none on CPUs, and no conditional either way;
  ``jit_train_step`` takes its mesh's platform."""
  cfg = setup[0].copy_and_resolve_references()
  cfg.train.g_steps, cfg.train.identity_steps = 3, 2
  models, mesh = Networks(cfg), setup[2]
  state = jax.eval_shape(lambda key: train_step.create_train_state(models, key), jax.random.key(0))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch_for(cfg).items()}

  def program(step):
    return step.lower(state, batch).as_text()

  bare = lambda unroll: parallel.jit_step(
    functools.partial(train_step.train_step, models, unroll=unroll), mesh
  )
  loops, written_out = program(bare(False)), program(bare(True))
  assert loops.count('stablehlo.while') == 2  # the identity net's 2 updates, G's last 2
  # the peeled first G update and the loop body call one body of the update
  assert loops.count('func.func private @generator_update') == 1
  assert written_out.count('stablehlo.while') == 0
  for text in (loops, written_out):
    assert 'stablehlo.case' not in text and 'stablehlo.if' not in text
  assert program(train_step.jit_train_step(models, mesh)) == written_out  # its mesh: CPU
  assert [train_step.unrolls_update_loops(p) for p in ('cpu', 'gpu', 'tpu')] == [True, False, False]


def test_prefetch_sends_batches_ahead_in_order():
  """The loop's input path: ``size`` batches are on the devices before the first is used,
  one more is sent per batch taken, and each device batch is its host batch."""
  cfg = tiny_config()
  mesh = parallel.make_mesh()
  pulled = []

  def host_batches():
    for i in range(5):
      pulled.append(i)
      yield batch_for(cfg, seed=i)

  batches = parallel.prefetch_to_mesh(host_batches(), mesh, train_step.BATCH_KEYS, size=2)
  seen = []
  for i, (host, device) in enumerate(batches):
    assert len(pulled) == min(i + 3, 5)  # this batch, two ahead
    assert isinstance(device['image'], jax.Array)
    assert device['image'].sharding.spec == jax.sharding.PartitionSpec('data')
    for key in train_step.BATCH_KEYS:
      np.testing.assert_array_equal(np.asarray(device[key]), host[key])
    seen.append(host)
  assert len(seen) == 5
  for i, host in enumerate(seen):
    np.testing.assert_array_equal(host['image'], batch_for(cfg, seed=i)['image'])


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_networks_inside_the_generator_loss_run_in_the_configured_mode(setup, mode):
  """``train.g_loss_networks``: 'eval' leaves D's spectral-norm vectors and the identity
  net's running statistics alone during G's update and embeds with the running statistics;
  'train' (the authors') embeds the real target and the output in separate passes with
  batch statistics and advances both networks' statistics. Checked against the modules
  applied by hand (no train_step helper)."""
  cfg = setup[0].copy_and_resolve_references()
  cfg.train.identity_steps, cfg.train.d_steps, cfg.train.g_steps = 0, 0, 1
  cfg.train.g_loss_networks = mode
  cfg.optim.name = 'sgd'
  models = Networks(cfg)
  state = train_step.create_train_state(models, jax.random.key(9))
  batch = {k: jnp.asarray(v) for k, v in batch_for(cfg, seed=4).items()}
  new, metrics = jax.jit(lambda s, b: train_step.train_step(models, s, b, unroll=True))(
    state, batch
  )

  onehot = jax.nn.one_hot(batch['semantic'], cfg.num_classes)
  gen, disc, ident = state.generator, state.discriminator, state.identity
  raw, _ = models.generator.apply(
    {'params': gen.params, **gen.stats},
    batch['image'] * (1 - batch['mask']),
    onehot,
    batch['target_identity'],
    train=True,
    mutable=list(gen.stats),
  )
  out = batch['image'] * (1 - batch['mask']) + raw * batch['mask']
  id_vars = lambda stats: {'params': ident.params, **stats}
  if mode == 'train':
    target, id_stats = models.identity.apply(
      id_vars(ident.stats), batch['target_image'], train=True, mutable=['batch_stats']
    )
    fake, id_stats = models.identity.apply(
      id_vars(id_stats), out, train=True, mutable=['batch_stats']
    )
    _, d_stats = models.discriminator.apply(
      {'params': disc.params, **disc.stats}, out, onehot, train=True, mutable=['batch_stats']
    )
  else:
    target = models.identity.apply(id_vars(ident.stats), batch['target_image'])
    fake = models.identity.apply(id_vars(ident.stats), out)
    id_stats, d_stats = ident.stats, disc.stats
  pull = np.mean(np.linalg.norm(np.asarray(fake['embedding'] - target['embedding']), axis=-1))
  np.testing.assert_allclose(float(metrics['train/g_contrastive']), pull, rtol=1e-4)
  assert max_change(new.identity.stats, id_stats) < 1e-5
  assert max_change(new.discriminator.stats, d_stats) < 1e-6
  moved = lambda a, b: max_change(a, b) > 1e-6
  assert moved(new.identity.stats, ident.stats) == (mode == 'train')
  assert moved(new.discriminator.stats, disc.stats) == (mode == 'train')


def test_unknown_generator_loss_network_mode_is_named():
  cfg = tiny_config()
  cfg.train.g_loss_networks = 'training'
  with pytest.raises(ValueError, match='g_loss_networks'):
    network_updates.judges_train(cfg)
