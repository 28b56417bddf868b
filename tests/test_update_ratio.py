"""The train step's update ratio (identity net : D : G, ``train.*_steps``) against the
updates written out by hand, with one shared batch and with a fresh batch for every update
(``train.fresh_batches``), written out (CPUs) and as update loops (accelerators).

Apart from test_train_step.py so that pytest-xdist (``--dist loadscope``: one module, one
worker) runs the two, the suite's longest, side by side.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import batch_for, max_change, shallow_config

from sdgan_jax import losses, network_updates, parallel, train_step
from sdgan_jax.networks import Networks, generate


@pytest.fixture(scope='module')
def mesh():
  return parallel.make_mesh()


@pytest.fixture(scope='module')
def ratio_steps(mesh):
  """``ratio_steps(fresh_batches) -> (cfg, models, {unroll: step})``: the 2:1:3 step
  (identity net : D : G) of ``shallow_config`` with SGD over ``mesh``, its updates written out
  (``unroll=True``, what CPUs run) or looped, each program compiled once for all the tests
  that check it (compiling, not running, is what these tests spend their time on). SGD:
  Adam's first steps are ~lr * sign(g), which turns float reordering noise in near-zero
  gradients into differences of 2 lr (see test_train_step.py's sharding test)."""
  built = {}

  def get(fresh_batches):
    if fresh_batches not in built:
      cfg = shallow_config()
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


def test_update_ratio_runs_that_many_updates_in_one_loop(mesh, ratio_steps):
  """2:1:3 equals the updates made one by one: the identity net twice, D on G's fake, then
  three generator updates, each with its own forward pass (the step's first generator
  update reuses the forward pass whose composite D judged)."""
  cfg2, models2, steps = ratio_steps(False)
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
  assert max_change(new.discriminator.params, want[0]) < 1e-5
  assert max_change(new.generator.params, want[1]) < 1e-5
  assert max_change(new.generator.stats, want[2]) < 1e-5
  np.testing.assert_allclose(
    float(metrics['train/d_lsgan']), float(d_metrics['d_lsgan']), rtol=1e-5
  )
  np.testing.assert_allclose(float(metrics['train/g_total']), float(m['g_total']), rtol=1e-5)


def test_fresh_batches_give_each_update_its_own_batch(mesh, ratio_steps):
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
    f'{name} {part}': max_change(getattr(getattr(new, name), part), tree)
    for name, trees in zip(('generator', 'discriminator', 'identity'), want[:3])
    for part, tree in zip(('params', 'stats'), trees)
  }
  diffs['d_lsgan'] = abs(float(metrics['train/d_lsgan']) - want[3])
  diffs['g_total'] = abs(float(metrics['train/g_total']) - want[4])
  assert max(diffs.values()) < 1e-5, ' '.join(f'{k}={v:.2g}' for k, v in diffs.items())
  assert float(metrics['train/all_finite']) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize('fresh_batches', [False, True], ids=['shared_batch', 'fresh_batches'])
def test_accelerator_update_loops_equal_the_written_out_updates(mesh, ratio_steps, fresh_batches):
  """Accelerators run repeated updates as ``lax.scan`` bodies (``unroll=False``), CPUs
  write them out; run on the CPU, both give the same 2:1:3 step."""
  cfg, models, steps = ratio_steps(fresh_batches)
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
    assert max_change(nets[name], loop_nets[name]) < 1e-5, name
  assert max_change(stats, loop_stats) < 1e-5
  assert metrics.keys() == loop_metrics.keys()
  for key, value in metrics.items():
    np.testing.assert_allclose(loop_metrics[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
