"""The jitted SDGAN train step: every network learns, sharding and precision don't change it."""

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
from train_fixtures import assert_same_replicated_state, batch_for, tiny_config

from sdgan_jax import losses, network_updates, optimizers, parallel, train_step
from sdgan_jax.networks import Networks, generate

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def setup():
  cfg = tiny_config()
  models = Networks(cfg)
  mesh = parallel.make_mesh()
  state = train_step.init_train_state(models, jax.random.key(0), mesh)
  return cfg, models, mesh, state, train_step.jit_train_step(models, mesh)


@pytest.fixture(scope='module')
def ratio_steps(setup):
  """``ratio_steps(fresh_batches) -> (cfg, models, {unroll: step})``: the 2:1:3 step
  (identity net : D : G) with SGD over the module's mesh, its updates written out
  (``unroll=True``, what CPUs run) or looped, each program compiled once for all the tests
  that check it (compiling, not running, is what these tests spend their time on). SGD:
  Adam's first steps are ~lr * sign(g), which turns float reordering noise in near-zero
  gradients into differences of 2 lr (see the sharding test)."""
  mesh, built = setup[2], {}

  def get(fresh_batches):
    if fresh_batches not in built:
      cfg = setup[0].copy_and_resolve_references()
      cfg.train.g_steps, cfg.train.d_steps, cfg.train.identity_steps = 3, 1, 2
      cfg.train.fresh_batches = fresh_batches
      cfg.optim.name = 'sgd'
      models = Networks(cfg)
      partition = train_step.batch_partition(cfg.train)
      steps = {
        unroll: parallel.jit_step(
          functools.partial(train_step.train_step, models, unroll=unroll), mesh, partition
        )
        for unroll in (True, False)
      }
      built[fresh_batches] = cfg, models, steps
    return built[fresh_batches]

  return get


def _max_change(a, b):
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


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
    assert _max_change(getattr(before, name).params, getattr(new, name).params) > 0, name
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
  assert s_old and _max_change(before.generator.stats, new.generator.stats) > 0
  for old, cur, e in zip(s_old, s_new, jax.tree_util.tree_leaves(new.ema_stats)):
    np.testing.assert_allclose(e, decay * old + (1 - decay) * cur, rtol=1e-5, atol=1e-7)
  # the frozen perceptual network never changes
  assert _max_change(before.perceptual_params, new.perceptual_params) == 0


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
  cfg16 = tiny_config()
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
    from train_fixtures import assert_same_replicated_state, batch_for, tiny_config
    assert jax.device_count() == 8
    cfg = tiny_config()
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

  cfg = tiny_config()
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


def test_update_ratio_runs_that_many_updates_in_one_loop(setup, ratio_steps):
  """2:1:3 equals the updates made one by one: the identity net twice, D on G's fake, then
  three generator updates, each with its own forward pass (the step's first generator
  update reuses the forward pass whose composite D judged)."""
  cfg2, models2, steps = ratio_steps(False)
  mesh = setup[2]
  host_batch = batch_for(cfg2, seed=3)
  batch = {k: jnp.asarray(v) for k, v in host_batch.items()}
  state = train_step.init_train_state(models2, jax.random.key(5), mesh)

  # pylint: disable=protected-access
  onehot = jax.nn.one_hot(batch['semantic'], cfg2.num_classes)

  @jax.jit
  def identity_then_discriminator(s, b):
    ident = s.identity
    for _ in range(2):
      ident, _ = network_updates.identity_update(models2, ident, b)
    fake, _ = generate(
      models2.generator, s.generator.params, s.generator.stats, b, cfg2.num_classes, train=True
    )
    disc, d_metrics = network_updates.discriminator_update(
      s.discriminator, b['image'], onehot, fake, onehot
    )
    return s.replace(identity=ident, discriminator=disc), d_metrics

  @jax.jit
  def generator_step(s, b):  # its own forward pass and reference features
    forward = network_updates.generator_forward(models2, s.generator, b)
    reference = network_updates.reference_features(models2, s, b)
    return network_updates.generator_update(models2, s, b, forward, reference)

  def by_hand(s, b):  # one compiled generator update, called three times
    s, d_metrics = identity_then_discriminator(s, b)
    for _ in range(3):
      s, m = generator_step(s, b)
    return s, m, d_metrics

  # the step donates ``state``, whose buffers the hand-made updates may share: to the host
  want, m, d_metrics = jax.tree_util.tree_map(
    np.asarray,
    (lambda s, m, d: ((s.discriminator.params, s.generator.params, s.generator.stats), m, d))(
      *by_hand(state, batch)
    ),
  )
  new, metrics = steps[True](state, parallel.shard_batch(host_batch, mesh, train_step.BATCH_KEYS))
  assert 'train/d_lsgan' in metrics and 'train/g_total' in metrics
  assert _max_change(new.discriminator.params, want[0]) < 1e-5
  assert _max_change(new.generator.params, want[1]) < 1e-5
  assert _max_change(new.generator.stats, want[2]) < 1e-5
  np.testing.assert_allclose(
    float(metrics['train/d_lsgan']), float(d_metrics['d_lsgan']), rtol=1e-5
  )
  np.testing.assert_allclose(float(metrics['train/g_total']), float(m['g_total']), rtol=1e-5)


def test_fresh_batches_give_each_update_its_own_batch(setup, ratio_steps):
  """The authors' schedule: with ``fresh_batches`` a 2:1:3 step takes 7 batches, and equals
  the updates written out by hand from the modules and eq. 2, 3, 8 (no train_step helper):
  the identity net on batches 0 and 1 in training mode with their pair labels, D on G's
  fakes of batch 2 beside the reals of batch 3, then one generator update on each of
  batches 4, 5 and 6, pulled towards each target image (label same), with the identity net
  and D in inference mode inside G's loss (``g_loss_networks: eval``; 'train' is checked by
  test_networks_inside_the_generator_loss_run_in_the_configured_mode: in training mode the
  identity net's batch norm over 4 tiny images amplifies float reordering beyond 1e-5)."""
  cfg, models, steps = ratio_steps(True)
  assert cfg.train.g_loss_networks == 'eval' and cfg.optim.name == 'sgd'
  assert train_step.batch_slots(cfg.train) == 7
  mesh = setup[2]
  state = train_step.init_train_state(models, jax.random.key(5), mesh)
  host_parts = [batch_for(cfg, seed=10 + k) for k in range(7)]
  parts = [{k: jnp.asarray(v) for k, v in p.items()} for p in host_parts]
  lr, loss, classes = cfg.optim.learning_rate, cfg.loss, cfg.num_classes
  assert loss.contrastive_mode == 'paper' and not loss.lambda_l1 and not loss.lambda_source_push
  hot = lambda b: jax.nn.one_hot(b['semantic'], classes)
  sgd = lambda p, g: jax.tree_util.tree_map(lambda a, d: a - lr * d, p, g)
  norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x), axis=-1))

  def run(module, params, stats, *args):  # training mode: (output, advanced statistics)
    return module.apply({'params': params, **stats}, *args, train=True, mutable=list(stats))

  def judge(module, params, stats, *args):  # inference mode: statistics read, not changed
    return module.apply({'params': params, **stats}, *args), stats

  def fill(params, stats, b):  # G's composite (paper §3.4)
    keep = b['image'] * (1 - b['mask'])
    raw, stats = run(models.generator, params, stats, keep, hot(b), b['target_identity'])
    return keep + raw * b['mask'], stats

  @jax.jit
  def by_hand(s):
    gen = (s.generator.params, s.generator.stats)
    disc = (s.discriminator.params, s.discriminator.stats)
    ident = (s.identity.params, s.identity.stats)

    for b in parts[:2]:

      def id_loss(p):  # eq. 8: y = 1 pulls a same-person pair together
        images = jnp.concatenate([b['image'], b['pair_image']])
        out, st = run(models.identity, p, ident[1], images)
        d = norm(jnp.subtract(*jnp.split(out['embedding'], 2)))
        y = b['pair_same']
        return jnp.mean(y * d + (1 - y) * jnp.maximum(0.0, loss.contrastive_margin - d)), st

      grads, st = jax.grad(id_loss, has_aux=True)(ident[0])
      ident = (sgd(ident[0], grads), st)

    fake, g_stats = fill(*gen, parts[2])
    gen = (gen[0], g_stats)

    def d_loss(p):  # eq. 2: reals of batch 3 towards 1, fakes of batch 2 towards 0
      logits, st = run(
        models.discriminator,
        p,
        disc[1],
        jnp.concatenate([parts[3]['image'], jax.lax.stop_gradient(fake)]),
        jnp.concatenate([hot(parts[3]), hot(parts[2])]),
      )
      real, fk = jnp.split(logits, 2)
      return 0.5 * jnp.mean(jnp.square(real - 1)) + 0.5 * jnp.mean(jnp.square(fk)), st

    d_value = d_loss(disc[0])[0]
    grads, st = jax.grad(d_loss, has_aux=True)(disc[0])
    disc = (sgd(disc[0], grads), st)

    vgg = lambda x: models.vgg_features(s.perceptual_params, x)
    for b in parts[4:]:
      target, id_stats = judge(models.identity, ident[0], ident[1], b['target_image'])
      target = jax.lax.stop_gradient(target['embedding'])

      def g_loss(p):  # eq. 9 with the contrastive pull labelled "same" (y = 1: d)
        out, g_st = fill(p, gen[1], b)
        logits, d_st = judge(models.discriminator, disc[0], disc[1], out, hot(b))
        emb, i_st = judge(models.identity, ident[0], id_stats, out)
        total = (
          loss.lambda_adv * 0.5 * jnp.mean(jnp.square(logits - 1))
          + loss.lambda_ssim * losses.ssim_loss(out, b['image'])
          + loss.lambda_perceptual
          * loss.perceptual_feature_scale
          * jnp.mean(jnp.abs(vgg(out) - vgg(b['image'])))
          + loss.lambda_contrastive * jnp.mean(norm(emb['embedding'] - target))
        )
        return total, (g_st, d_st, i_st)

      g_value = g_loss(gen[0])[0]
      grads, (g_st, d_st, i_st) = jax.grad(g_loss, has_aux=True)(gen[0])
      gen, disc, ident = (sgd(gen[0], grads), g_st), (disc[0], d_st), (ident[0], i_st)
    return gen, disc, ident, d_value, g_value

  # the sharded step donates ``state``, which shares buffers with it: copy to the host
  want = jax.tree_util.tree_map(np.asarray, by_hand(state))

  # the real step: the seven batches stacked, sharded over the mesh's slot-major layout
  batch = {k: np.stack([p[k] for p in host_parts]) for k in host_parts[0]}
  sharded = parallel.shard_batch(
    batch, mesh, train_step.BATCH_KEYS, train_step.batch_partition(cfg.train)
  )
  new, metrics = steps[True](state, sharded)
  diffs = {
    f'{name} {part}': _max_change(getattr(getattr(new, name), part), tree)
    for name, trees in zip(('generator', 'discriminator', 'identity'), want[:3])
    for part, tree in zip(('params', 'stats'), trees)
  }
  diffs['d_lsgan'] = abs(float(metrics['train/d_lsgan']) - want[3])
  diffs['g_total'] = abs(float(metrics['train/g_total']) - want[4])
  assert max(diffs.values()) < 1e-5, ' '.join(f'{k}={v:.2g}' for k, v in diffs.items())
  assert float(metrics['train/all_finite']) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize('fresh_batches', [False, True], ids=['shared_batch', 'fresh_batches'])
def test_accelerator_update_loops_equal_the_written_out_updates(setup, ratio_steps, fresh_batches):
  """Accelerators run repeated updates as ``lax.scan`` bodies (``unroll=False``), CPUs
  write them out; run on the CPU, both give the same 2:1:3 step."""
  cfg, models, steps = ratio_steps(fresh_batches)
  mesh = setup[2]
  slots = train_step.batch_slots(cfg.train)
  parts = [batch_for(cfg, seed=20 + k) for k in range(slots)]
  batch = parts[0] if slots == 1 else {k: np.stack([p[k] for p in parts]) for k in parts[0]}
  results = {}
  for unroll in (True, False):
    state = train_step.init_train_state(models, jax.random.key(7), mesh)
    sharded = parallel.shard_batch(
      batch, mesh, train_step.BATCH_KEYS, train_step.batch_partition(cfg.train)
    )
    new, metrics = steps[unroll](state, sharded)
    results[unroll] = jax.tree_util.tree_map(
      np.asarray,
      (
        {name: getattr(new, name).params for name in ('identity', 'discriminator', 'generator')},
        new.generator.stats,
        {k: float(v) for k, v in metrics.items()},
      ),
    )
  (nets, stats, metrics), (loop_nets, loop_stats, loop_metrics) = results[True], results[False]
  for name in nets:
    assert _max_change(nets[name], loop_nets[name]) < 1e-5, name
  assert _max_change(stats, loop_stats) < 1e-5
  assert metrics.keys() == loop_metrics.keys()
  for key, value in metrics.items():
    np.testing.assert_allclose(loop_metrics[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


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
  assert _max_change(new.identity.stats, id_stats) < 1e-5
  assert _max_change(new.discriminator.stats, d_stats) < 1e-6
  moved = lambda a, b: _max_change(a, b) > 1e-6
  assert moved(new.identity.stats, ident.stats) == (mode == 'train')
  assert moved(new.discriminator.stats, disc.stats) == (mode == 'train')


def test_unknown_generator_loss_network_mode_is_named():
  cfg = tiny_config()
  cfg.train.g_loss_networks = 'training'
  with pytest.raises(ValueError, match='g_loss_networks'):
    network_updates.judges_train(cfg)
