"""SDGAN training: one TrainState, one jitted train step (paper eq. 2-9), data-parallel.

``train_step(state, batch) -> (state, metrics)`` updates, in order, the Siamese identity
network (contrastive loss on real pairs, eq. 8), the discriminator (LSGAN, eq. 2) and the
generator (``config.train.g_steps`` times: eq. 3 + SSIM + perceptual + the contrastive pull
towards the target person, eq. 9 and §3.4), then the generator's EMA.

Batches (``config.train.fresh_batches``): either every update of a step sees the same batch,
and the discriminator's fake and the first generator update share one generator forward
pass (its VJP is kept), or, as in the authors' code, every update gets its own batch
(identity net, D's fakes, D's reals, each generator update), stacked on a leading slot axis
(``batch_slots``). It is one ``jax.jit`` program over a ``jax.make_mesh``
data axis: the batch is split across devices with ``NamedSharding``, the state is
replicated, and XLA inserts the gradient all-reduces. No TensorFlow here (the GPU
benchmark imports this module); the training loop imports the input pipeline and summary
writers lazily.

Batch (numpy or jax arrays, leading axis = global batch):
  image [B,R,R,3] f32 in [0,1], mask [B,R,R,1] f32, semantic [B,R,R] int (class ids),
  pair_image [B,R,R,3] f32, pair_same [B] f32 (1 = same identity as ``image``),
  target_image [B,R,R,3] f32 (an image of another person, the target) and
  target_identity [B,D] f32 (that person's identity feature, paper §3.3);
  with fresh batches every array has a leading slot axis, [K,B,...].
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from sdgan_jax import losses
from sdgan_jax.models.discriminator import build_discriminator
from sdgan_jax.models.generator import composite, generator_from_config, mask_image
from sdgan_jax.models.identity import identity_from_config
from sdgan_jax.models.vgg import VGG16

# The paper configuration: its keys are the keys every config may use.
REFERENCE_CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'celeba.py'
BATCH_KEYS = ('image', 'mask', 'semantic', 'pair_image', 'pair_same', 'target_image',
              'target_identity')
PREFETCH_BATCHES = 2  # batches on their way to the devices while a step runs
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@flax.struct.dataclass
class NetState:
  """Parameters, mutable statistics (spectral-norm vectors, batch norm) and optimizer state."""
  params: Any
  stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree (checkpointed as a whole)."""
  step: jax.Array
  rng: jax.Array
  generator: NetState
  discriminator: NetState
  identity: NetState
  ema_params: Any              # EMA of the generator's params: what is evaluated and exported
  perceptual_params: Any       # frozen VGG-16 (eq. 7); carried here so it is sharded once


def compute_dtype(config: ml_collections.ConfigDict):
  """``config.dtype`` as a JAX dtype: the networks compute in it, parameters stay float32."""
  dtype = DTYPES.get(config.get('dtype', 'float32'))
  if dtype is None:
    raise ValueError(f"unknown config key value dtype={config.dtype!r}: use 'float32' or "
                     "'bfloat16'")
  return dtype


class Models:
  """The networks and optimizers a config describes (static: not part of the state)."""

  def __init__(self, config: ml_collections.ConfigDict):
    dtype = compute_dtype(config)
    self.config = config
    self.generator = generator_from_config(
        ml_collections.ConfigDict(dict(config.model.generator, dtype=dtype)))
    d_cfg = dict(config.model.discriminator)
    self.discriminator = build_discriminator(d_cfg.pop('kind'), dtype=dtype, **d_cfg)
    self.identity = identity_from_config(config.model.identity, dtype)
    self.vgg = VGG16(input_convention=config.loss.get('perceptual_input_convention', 'caffe'),
                     dtype=dtype)
    self.tap = config.loss.get('perceptual_layer', 'relu3_3')
    self.weights = losses.LossWeights.from_config(config.loss)
    optim = config.optim
    name = optim.get('name', 'adam')
    if name == 'adam':
      make_tx = lambda: optax.adam(optim.learning_rate, b1=optim.b1, b2=optim.b2)
    elif name == 'sgd':
      make_tx = lambda: optax.sgd(optim.learning_rate)
    else:
      raise ValueError(f"unknown config.optim.name {name!r}: use 'adam' or 'sgd'")
    self.g_tx, self.d_tx, self.id_tx = make_tx(), make_tx(), make_tx()


def _split_variables(variables) -> tuple[Any, Any]:
  variables = dict(variables)
  params = variables.pop('params')
  return params, variables


def _apply(module: nn.Module, params, stats, *args, train: bool = False, **kwargs):
  """``module.apply`` returning ``(output, stats)``; statistics update only when training."""
  variables = {'params': params, **stats}
  if train and stats:
    return module.apply(variables, *args, train=True, mutable=list(stats), **kwargs)
  return module.apply(variables, *args, train=train, **kwargs), stats


def _one_hot(models: Models, batch: dict) -> jax.Array:
  """The one-hot semantic map the networks take, from the batch's class ids."""
  return jax.nn.one_hot(batch['semantic'], models.config.num_classes, dtype=jnp.float32)


def _dummy_batch(config, batch_size: int = 1) -> dict[str, jax.Array]:
  r = config.resolution
  return dict(
      image=jnp.zeros((batch_size, r, r, 3)), mask=jnp.zeros((batch_size, r, r, 1)),
      semantic=jnp.zeros((batch_size, r, r), jnp.int32),
      pair_image=jnp.zeros((batch_size, r, r, 3)), pair_same=jnp.zeros((batch_size,)),
      target_image=jnp.zeros((batch_size, r, r, 3)),
      target_identity=jnp.zeros((batch_size, config.identity_dim)))


def batch_slots(train_config) -> int:
  """Batches per step: 1, or with ``fresh_batches`` one per update (the authors' schedule):
  ``identity_steps`` for the identity net, ``d_steps`` of fakes and ``d_steps`` of reals
  for the discriminator, ``g_steps`` for the generator, in that order."""
  if not train_config.get('fresh_batches', False):
    return 1
  t = train_config
  return t.identity_steps + 2 * t.d_steps + t.g_steps


def batch_partition(train_config) -> PartitionSpec:
  """How a batch is split over the 'data' mesh axis: its batch axis, after the slot axis
  when there is one."""
  return PartitionSpec('data') if batch_slots(train_config) == 1 else \
      PartitionSpec(None, 'data')


def create_train_state(models: Models, rng: jax.Array,
                       perceptual_params: Any | None = None) -> TrainState:
  """Initialises all three networks and their optimizers.

  ``perceptual_params`` are the converted VGG-16 weights (``load_weights('vgg16_imagenet')``);
  None initialises VGG-16 randomly, which only tests and smoke runs should do.
  """
  config = models.config
  batch = _dummy_batch(config)
  onehot = _one_hot(models, batch)
  k_g, k_d, k_id, k_vgg, k_state = jax.random.split(rng, 5)
  g_params, g_stats = _split_variables(models.generator.init(
      k_g, batch['image'], onehot, batch['target_identity']))
  d_params, d_stats = _split_variables(models.discriminator.init(k_d, batch['image'], onehot))
  id_params, id_stats = _split_variables(models.identity.init(k_id, batch['image']))
  if perceptual_params is None:
    perceptual_params = models.vgg.init(k_vgg, batch['image'], taps=models.tap)['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=k_state,
      generator=NetState(g_params, g_stats, models.g_tx.init(g_params)),
      discriminator=NetState(d_params, d_stats, models.d_tx.init(d_params)),
      identity=NetState(id_params, id_stats, models.id_tx.init(id_params)),
      ema_params=g_params, perceptual_params=perceptual_params)


def _generate(models: Models, params, stats, batch, onehot, train: bool):
  """Paper §3.4: G(masked image, semantic map, target identity), composited into the image."""
  masked = mask_image(batch['image'], batch['mask'])
  raw, new_stats = _apply(models.generator, params, stats, masked, onehot,
                          batch['target_identity'], train=train)
  return composite(batch['image'], batch['mask'], raw), new_stats


def _identity_step(models: Models, net: NetState, batch) -> tuple[NetState, dict]:
  """Siamese identity network on real pairs, contrastive loss (eq. 8)."""
  loss_cfg = models.config.loss

  def loss_fn(params):
    images = jnp.concatenate([batch['image'], batch['pair_image']], axis=0)
    out, new_stats = _apply(models.identity, params, net.stats, images, train=True)
    e1, e2 = jnp.split(out['embedding'], 2)
    loss = losses.contrastive_loss(e1, e2, batch['pair_same'], loss_cfg.contrastive_margin,
                                   loss_cfg.contrastive_mode)
    return loss, new_stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
  updates, opt_state = models.id_tx.update(grads, net.opt_state, net.params)
  return NetState(optax.apply_updates(net.params, updates), stats, opt_state), {
      'id_contrastive': loss}


def _discriminator_step(models: Models, net: NetState, real, real_onehot, fake, fake_onehot):
  """LSGAN discriminator update, eq. 2: real images and composites, each with its map."""

  def loss_fn(params):
    both = jnp.concatenate([real, fake], axis=0)
    logits, new_stats = _apply(models.discriminator, params, net.stats, both,
                               jnp.concatenate([real_onehot, fake_onehot], axis=0),
                               train=True)
    split = lambda x: jnp.split(x, 2)
    if isinstance(logits, (list, tuple)):
      real_logits, fake_logits = zip(*map(split, logits))
    else:
      real_logits, fake_logits = split(logits)
    return losses.lsgan_d_loss(real_logits, fake_logits), new_stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
  updates, opt_state = models.d_tx.update(grads, net.opt_state, net.params)
  return NetState(optax.apply_updates(net.params, updates), stats, opt_state), {'d_lsgan': loss}


def _generator_forward(models: Models, net: NetState, batch, onehot):
  """G's training forward pass and its VJP: ``(composite, vjp_fn, new_stats)``.

  One forward serves both the discriminator update (as the fake) and the first generator
  update (through ``vjp_fn``): the step runs G forward once less than if each recomputed it.
  """
  return jax.vjp(lambda p: _generate(models, p, net.stats, batch, onehot, train=True),
                 net.params, has_aux=True)


def _reference_features(models: Models, state: TrainState, batch) -> dict:
  """What the generator loss compares its output with, fixed while G updates on ``batch``:
  the real images' VGG-16 features (eq. 7) and the identity embeddings (eq. 8) of the
  target person's image and, for the optional push, of the source image. Computed once
  per batch, not once per generator update (the identity net is already updated)."""
  reference, weights = {}, models.weights
  if weights.perceptual:
    reference['vgg'] = models.vgg.apply({'params': state.perceptual_params}, batch['image'],
                                        taps=models.tap)[models.tap]
  embed = lambda images: _apply(models.identity, state.identity.params, state.identity.stats,
                                images)[0]['embedding']
  if weights.contrastive and weights.source_push:
    reference['target'], reference['source'] = jnp.split(
        embed(jnp.concatenate([batch['target_image'], batch['image']])), 2)
  elif weights.contrastive:
    reference['target'] = embed(batch['target_image'])
  elif weights.source_push:
    reference['source'] = embed(batch['image'])
  return jax.lax.stop_gradient(reference)


def _generator_update(models: Models, state: TrainState, batch, onehot, forward,
                      reference: dict):
  """Generator update, eq. 9: L_adv(G) + l1*L_SSIM + l2*L_perceptual + l3*L_contrastive.

  ``forward`` is ``_generator_forward`` at ``state.generator``: the loss is differentiated
  with respect to the composite and pulled back to G's parameters through its VJP;
  ``reference`` is ``_reference_features``.
  The contrastive term labels (output, target person's image) as the *same* identity: G is
  pulled towards the person whose identity feature it was given ("a face with some of the
  features of the desired identity", paper §3.4), as the authors' code does. The optional
  ``source_push`` term labels (output, source image) as *different*, pushing the output at
  least the margin away from the source person.
  """
  net, weights, loss_cfg = state.generator, models.weights, models.config.loss
  vgg_fn = lambda x: models.vgg.apply({'params': state.perceptual_params}, x,
                                      taps=models.tap)[models.tap]

  def loss_fn(out):
    terms = {}
    d_out, _ = _apply(models.discriminator, state.discriminator.params,
                      state.discriminator.stats, out, onehot)
    terms['adv'] = losses.lsgan_g_loss(d_out)
    if weights.ssim:
      terms['ssim'] = losses.ssim_loss(out, batch['image'])
    if weights.perceptual:
      terms['perceptual'] = losses.perceptual_loss(
          vgg_fn, out, batch['image'], loss_cfg.get('perceptual_feature_scale', 1.0),
          target_features=reference['vgg'])
    if weights.l1:
      terms['l1'] = losses.l1_loss(out, batch['image'])
    if weights.contrastive or weights.source_push:
      ident, _ = _apply(models.identity, state.identity.params, state.identity.stats, out)
      contrast = lambda other, same: losses.contrastive_loss(
          ident['embedding'], other, jnp.full(out.shape[0], same),
          loss_cfg.contrastive_margin, loss_cfg.contrastive_mode)
      if weights.contrastive:
        terms['contrastive'] = contrast(reference['target'], 1.0)
      if weights.source_push:
        terms['source_push'] = contrast(reference['source'], 0.0)
    return losses.generator_total_loss(terms, weights)

  out, vjp_fn, stats = forward
  (_, metrics), grad_out = jax.value_and_grad(loss_fn, has_aux=True)(out)
  grads, = vjp_fn(grad_out)
  updates, opt_state = models.g_tx.update(grads, net.opt_state, net.params)
  new_net = NetState(optax.apply_updates(net.params, updates), stats, opt_state)
  return new_net, {f'g_{k}': v for k, v in metrics.items()}


def _unroll_update_loops() -> bool:
  """Repeated updates are written out one after another on CPUs, where XLA runs
  convolutions inside a while loop or a conditional many times slower (BENCHMARKS.md, CPU
  train step rows); on accelerators they stay one loop body, which keeps the program and
  its compile time at the size of one update."""
  return jax.default_backend() == 'cpu'


def _python_loop(update: Callable, carry, xs: list):
  """``lax.scan`` written out as straight-line code: ``update`` once per element of ``xs``;
  returns the carry and the list of per-element outputs."""
  outputs = []
  for x in xs:
    carry, out = update(carry, x)
    outputs.append(out)
  return carry, outputs


def _repeat(update: Callable[[NetState], tuple[NetState, dict]], net: NetState,
            times: int) -> tuple[NetState, dict]:
  """``times`` updates of one network, returning the last one's metrics.

  Several updates run as one ``lax.scan`` body, so the program (and its compile time) does
  not grow with the update ratio (except on CPUs: ``_unroll_update_loops``).
  """
  if times == 0:
    return net, {}
  if times == 1:
    return update(net)
  if _unroll_update_loops():
    net, metrics = _python_loop(lambda carry, _: update(carry), net, [None] * times)
    return net, metrics[-1]
  net, metrics = jax.lax.scan(lambda carry, _: update(carry), net, None, length=times)
  return net, jax.tree_util.tree_map(lambda m: m[-1], metrics)


def _adversarial_updates(models: Models, state: TrainState, batch, onehot):
  """``d_steps`` discriminator updates (eq. 2), then ``g_steps`` generator updates (eq. 9).

  Each generator update runs G forward once, and the first one's forward also gives the
  discriminator its fake, so the discriminator updates run inside the first iteration.
  Several generator updates are one ``lax.scan`` body whose ``lax.cond`` runs that D phase
  at the first iteration only: the program holds one generator update and one D phase
  whatever the ratio (the paper's 1:1:3 compiles as 1:1:1 does). CPUs write the updates
  out one after another, the D phase in the first only (``_unroll_update_loops``).
  """
  cfg = models.config.train
  reference = _reference_features(models, state, batch) if cfg.g_steps else None

  def d_phase(disc: NetState, fake):
    return _repeat(
        lambda net: _discriminator_step(models, net, batch['image'], onehot, fake, onehot),
        disc, cfg.d_steps)

  def iteration(nets, first):
    gen, disc = nets
    forward = _generator_forward(models, gen, batch, onehot)
    fake = jax.lax.stop_gradient(forward[0])
    if first is True:  # outside a loop: the first (or only) iteration
      disc, d_metrics = d_phase(disc, fake)
    elif first is False:  # outside a loop, a later iteration
      d_metrics = {}
    else:  # traced inside the scan: only the first iteration updates D
      shapes = jax.eval_shape(d_phase, disc, fake)[1]
      skip = lambda d, _: (d, {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()})
      disc, d_metrics = jax.lax.cond(first, d_phase, skip, disc, fake)
    if not cfg.g_steps:
      return (gen, disc), (d_metrics, {})
    gen, g_metrics = _generator_update(
        models, state.replace(generator=gen, discriminator=disc), batch, onehot, forward,
        reference)
    return (gen, disc), (d_metrics, g_metrics)

  nets = (state.generator, state.discriminator)
  if cfg.g_steps <= 1:
    (gen, disc), (d_metrics, g_metrics) = iteration(nets, True)
  elif _unroll_update_loops():
    (gen, disc), metrics = _python_loop(iteration, nets,
                                        [True] + [False] * (cfg.g_steps - 1))
    d_metrics, g_metrics = metrics[0][0], metrics[-1][1]
  else:
    (gen, disc), (d_metrics, g_metrics) = jax.lax.scan(
        lambda carry, i: iteration(carry, i == 0), nets, jnp.arange(cfg.g_steps))
    d_metrics = jax.tree_util.tree_map(lambda m: m[0], d_metrics)    # the D phase's
    g_metrics = jax.tree_util.tree_map(lambda m: m[-1], g_metrics)   # the last G update's
  return state.replace(generator=gen, discriminator=disc), {**d_metrics, **g_metrics}


def _scan_batches(update: Callable[[Any, dict], tuple[Any, dict]], carry, batches: dict):
  """``update`` once per batch of ``batches`` (stacked on a leading axis), returning the
  last one's metrics; one ``lax.scan`` body (written out on CPUs, ``_unroll_update_loops``)."""
  count = jax.tree_util.tree_leaves(batches)[0].shape[0]
  if count == 1 or _unroll_update_loops():
    carry, metrics = _python_loop(
        update, carry, [jax.tree_util.tree_map(lambda x, i=i: x[i], batches)
                        for i in range(count)])
    return carry, metrics[-1]
  carry, metrics = jax.lax.scan(update, carry, batches)
  return carry, jax.tree_util.tree_map(lambda m: m[-1], metrics)


def _fresh_batch_updates(models: Models, state: TrainState, batch: dict):
  """The authors' schedule: each update on its own batch (``batch_slots`` order).

  The discriminator's fakes come from the generator run on their own batch (no gradient;
  its normalisation statistics still advance, as a PyTorch forward in training mode does)
  and are judged beside a separate batch of real images.
  """
  t = models.config.train
  ends = np.cumsum([t.identity_steps, t.d_steps, t.d_steps, t.g_steps])
  ident_b, fake_b, real_b, gen_b = (
      jax.tree_util.tree_map(lambda x, lo=lo, hi=hi: x[lo:hi], batch)
      for lo, hi in zip([0, *ends[:-1]], ends))
  metrics = {}
  if t.identity_steps:
    identity, m = _scan_batches(lambda net, b: _identity_step(models, net, b),
                                state.identity, ident_b)
    state = state.replace(identity=identity)
    metrics.update(m)

  def d_update(nets, pair):
    gen, disc = nets
    fakes, reals = pair
    fake_onehot = _one_hot(models, fakes)
    fake, g_stats = _generate(models, gen.params, gen.stats, fakes, fake_onehot, train=True)
    disc, m = _discriminator_step(models, disc, reals['image'], _one_hot(models, reals),
                                  jax.lax.stop_gradient(fake), fake_onehot)
    return (gen.replace(stats=g_stats), disc), m

  if t.d_steps:
    (gen, disc), m = _scan_batches(d_update, (state.generator, state.discriminator),
                                   (fake_b, real_b))
    state = state.replace(generator=gen, discriminator=disc)
    metrics.update(m)

  def g_update(gen, b):
    onehot = _one_hot(models, b)
    current = state.replace(generator=gen)
    return _generator_update(models, current, b, onehot,
                             _generator_forward(models, gen, b, onehot),
                             _reference_features(models, current, b))

  if t.g_steps:
    gen, m = _scan_batches(g_update, state.generator, gen_b)
    state = state.replace(generator=gen)
    metrics.update(m)
  return state, metrics


def train_step(models: Models, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One SDGAN step: identity net, discriminator, ``g_steps`` generator updates, EMA."""
  cfg = models.config
  if batch_slots(cfg.train) > 1:
    state, metrics = _fresh_batch_updates(models, state, batch)
  else:
    metrics = {}
    identity, m = _repeat(lambda net: _identity_step(models, net, batch), state.identity,
                          cfg.train.identity_steps)
    metrics.update(m)
    state = state.replace(identity=identity)
    state, m = _adversarial_updates(models, state, batch, _one_hot(models, batch))
    metrics.update(m)

  ema = optax.incremental_update(state.generator.params, state.ema_params,
                                 1.0 - cfg.train.ema_decay)
  metrics = {f'train/{k}': v.astype(jnp.float32) for k, v in metrics.items()}
  finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in metrics.values()]))
  metrics['train/all_finite'] = finite.astype(jnp.float32)
  return state.replace(step=state.step + 1, ema_params=ema), metrics


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D 'data' mesh over every device of every process.

  The axis is 'Auto' (XLA propagates shardings and inserts the gradient all-reduces), not
  the 'Explicit' default of recent ``jax.make_mesh``, under which contractions over the
  sharded batch axis (the weight gradients) would need explicit output shardings.
  """
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def jit_train_step(models: Models, mesh: jax.sharding.Mesh) -> Callable:
  """``train_step`` jitted over ``mesh``: batch split on 'data', state replicated, donated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  data = NamedSharding(mesh, batch_partition(models.config.train))
  return jax.jit(functools.partial(train_step, models), in_shardings=(replicated, data),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def host_cpu() -> jax.Device | None:
  """This process's first CPU device, or None when ``JAX_PLATFORMS`` leaves the CPU out."""
  try:
    return jax.local_devices(backend='cpu')[0]
  except RuntimeError:
    return None


def run_on_host(fn: Callable, *args):
  """``jax.jit(fn)(*args)`` compiled for and run on the host CPU (``host_cpu``)."""
  cpu = host_cpu()
  if cpu is None:
    raise ValueError('running on the host needs the CPU backend; JAX_PLATFORMS excludes it')
  with jax.default_device(cpu):
    return jax.jit(fn)(*jax.device_put(args, cpu))


def init_on_host_by_default(platform: str) -> bool:
  """Whether initialisers for ``platform``'s devices run on the host CPU instead: when those
  devices are accelerators and this process has a CPU backend (see ``init_replicated``)."""
  return platform != 'cpu' and host_cpu() is not None


def init_replicated(init: Callable, mesh: jax.sharding.Mesh, *args,
                    on_host: bool | None = None):
  """``init(*args)``, a state with an ``rng`` key field, placed replicated on ``mesh``.

  Placing it with the sharding the train step returns means the step compiles once, not
  once for the initial state and again for every later one. ``on_host`` (default: when the
  mesh is on accelerators) runs ``init`` on the host CPU and copies the state over:
  compiling the SDGAN initialiser for an H200 took 103 s (its random-number kernels are
  unrolled there, 2026-11-26), the host CPU compiles it in well under a minute. Every
  process computes the same state from the same arguments, as multi-host placement requires.
  Shared by the SDGAN and face-parser trainers.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  if on_host is None:
    on_host = init_on_host_by_default(mesh.devices.flat[0].platform)
  if not on_host:
    return jax.jit(init, out_shardings=replicated)(*args)
  placed = jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)),
      _host_state(run_on_host(init, *args)))
  return _device_state(placed)


def init_train_state(models: Models, rng: jax.Array, mesh: jax.sharding.Mesh,
                     perceptual_params: Any | None = None, *,
                     on_host: bool | None = None) -> TrainState:
  """``create_train_state`` placed replicated on ``mesh`` (see ``init_replicated``)."""
  return init_replicated(lambda key, vgg: create_train_state(models, key, vgg), mesh, rng,
                         perceptual_params, on_host=on_host)


def shard_batch(batch: dict, mesh: jax.sharding.Mesh, keys=BATCH_KEYS,
                partition: PartitionSpec = PartitionSpec('data')) -> dict:
  """Places this process's part of the global batch on its devices (multi-host safe).

  ``keys`` are what the train step reads (the parser trainer passes its own);
  ``partition`` is ``batch_partition`` of the config."""
  data = NamedSharding(mesh, partition)
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f'batch lacks {missing}; the train step needs {list(keys)}')
  return {k: jax.make_array_from_process_local_data(data, np.asarray(batch[k]))
          for k in keys}


def prefetch_to_mesh(batches: Iterable[dict], mesh: jax.sharding.Mesh,
                     size: int = PREFETCH_BATCHES, keys=BATCH_KEYS,
                     partition: PartitionSpec = PartitionSpec('data'),
                     ) -> Iterator[tuple[dict, dict]]:
  """Yields ``(host batch, device batch)`` with ``size`` batches already sent to the devices.

  The copies are asynchronous, so the next batches travel while the current step runs and
  the step never waits for its input (the host batch is kept for image summaries).
  """
  queue = collections.deque()
  batches = iter(batches)

  def enqueue(n):
    for host in itertools.islice(batches, n):
      queue.append((host, shard_batch(host, mesh, keys, partition)))

  enqueue(size)
  while queue:
    current = queue.popleft()
    enqueue(1)  # before yielding: ``size`` batches stay in flight while this one is used
    yield current


def with_target_identities(batches: Iterable[dict], bank) -> Iterator[dict]:
  """Adds ``target_identity`` to each host batch: the identity feature (paper §3.3) of the
  target person whose image the batch carries (``target_label``, drawn by the input
  pipeline from the other identities), so the feature G gets and the image its identity
  term pulls towards show the same person."""
  for batch in batches:
    labels = np.asarray(batch['target_label'])
    if labels.size and (labels.min() < 0 or labels.max() >= bank.num_identities):
      raise ValueError(f'target labels in [{labels.min()}, {labels.max()}] but the identity '
                       f'bank holds {bank.num_identities} identities: rebuild the bank for '
                       'this dataset (tools/prepare_data.py)')
    batch['target_identity'] = bank.means[labels]
    yield batch


# --------------------------------------------------------------------------------------
# The training loop. TensorFlow (input pipeline) and clu (summaries) are imported lazily.


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/inf losses; the last good checkpoint is kept."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails before any device work on keys this code does not know or inconsistent values
  (``ConfigError``, a ValueError)."""
  # pylint: disable-next=import-outside-toplevel
  from sdgan_jax.config import ConfigError, load_config, unknown_key_message

  reference = load_config(str(REFERENCE_CONFIG))
  free_form = {'model', 'data'}  # network fields are checked by the model constructors

  def walk(cfg, ref, prefix):
    for key in cfg.keys():
      name = f'{prefix}{key}'
      if key not in ref:
        raise ConfigError(unknown_key_message(name, ref.keys()))
      if (isinstance(cfg[key], ml_collections.ConfigDict) and key not in free_form
          and isinstance(ref[key], ml_collections.ConfigDict)):
        walk(cfg[key], ref[key], f'{name}.')

  walk(config, reference, '')
  if config.resolution % 16 or config.resolution <= 0:
    raise ConfigError(f'config.resolution={config.resolution}: must be a positive multiple '
                      'of 16')
  for name, least in (('train.batch_size', 1), ('train.num_steps', 0), ('train.log_every', 1),
                      ('checkpoint.every', 1), ('eval.num_batches', 0)):
    group, key = name.split('.')
    value = config.get(group, {}).get(key)
    if value is not None and (not isinstance(value, int) or value < least):
      raise ConfigError(f'config.{name}={value!r}: must be an integer >= {least}')
  try:
    Models(config)  # model keys and values (presets, kinds, dtype) fail here, on the host
  except (ValueError, TypeError, KeyError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise ConfigError(str(message)) from e


def check_dataset(dataset: str) -> None:
  """``config.data.dataset`` must name a prepared dataset (``ConfigError`` otherwise)."""
  import json  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel

  from sdgan_jax.config import ConfigError  # pylint: disable=import-outside-toplevel

  make = ('make one with `python tools/prepare_data.py --source samples --output data` '
          '(or --source celeba_files --celeba_dir DIR), which prints the directory to pass')
  if not dataset:
    raise ConfigError(f'config.data.dataset is empty: pass --config.data.dataset=DIR, a '
                      f'prepared dataset; {make}')
  path = pathlib.Path(dataset)
  if (path / 'dataset_info.json').is_file():
    try:
      json.loads((path / 'dataset_info.json').read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
      raise ConfigError(f'config.data.dataset={dataset!r}: its dataset_info.json is not '
                        f'readable JSON ({e}); prepare the dataset again with '
                        'tools/prepare_data.py') from e
    return
  if path.is_dir():
    found = sorted(str(p.parent) for pattern in ('*', '*/*', '*/*/*')
                   for p in path.glob(f'{pattern}/dataset_info.json'))
    hint = f'did you mean {found[0]}?' if found else make
    raise ConfigError(f'config.data.dataset={dataset!r} is not a prepared dataset (no '
                      f'dataset_info.json in it); {hint}')
  if path.exists():
    raise ConfigError(f'config.data.dataset={dataset!r} is a file, not a prepared dataset '
                      f'directory; {make}')
  name = re.fullmatch(r'([A-Za-z_]\w*)(/\w+)?(:[\d.*]+)?', dataset)
  if name:  # a registered TFDS name is looked up by load_data_source
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    if name.group(1) in tfds.list_builders(with_community_datasets=False):
      return
  raise ConfigError(f'config.data.dataset={dataset!r}: no such directory; {make}')


def _host_state(state):
  """The state as checkpointed: the typed PRNG key as its raw uint32 data (any state with
  an ``rng`` field: the SDGAN and the parser trainers')."""
  return state.replace(rng=jax.random.key_data(state.rng))


def _device_state(state):
  return state.replace(rng=jax.random.wrap_key_data(state.rng))


def checkpoint_manager(config, workdir: str, track_best: bool = True):
  """orbax manager keeping the latest ``keep_latest`` saves plus the best by ``best_metric``.

  Shared by the SDGAN and face-parser trainers. ``track_best`` is False when a run has no
  validation metric to rank by.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from orbax.checkpoint.checkpoint_managers import preservation_policy as pp  # pylint: disable=import-outside-toplevel

  ckpt = config.checkpoint
  policies = [pp.LatestN(n=ckpt.keep_latest)]
  track = bool(ckpt.best_metric) and track_best
  if track:
    policies.append(pp.BestN(get_metric_fn=lambda m: m[ckpt.best_metric],
                             reverse=ckpt.best_mode == 'min', n=1,
                             keep_checkpoints_without_metrics=False))
  # orbax writes a step's metrics to disk only when ``best_fn`` is set; without them BestN
  # would forget the best step across restarts.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=pp.AnyPreservationPolicy(policies), create=True,
      enable_async_checkpointing=False,
      best_fn=(lambda m: m[ckpt.best_metric]) if track else None,
      best_mode=ckpt.best_mode)
  return ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), options=options)


def _save(manager, step: int, state: TrainState, metrics: dict | None):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  manager.save(step, args=ocp.args.StandardSave(_host_state(state)), metrics=metrics,
               force=True)


def restore_state(workdir: str, abstract_state, step: int | None = None):
  """Restores the latest (or given) checkpoint of ``workdir`` onto ``abstract_state``'s layout
  (a ``TrainState`` or the parser trainer's ``ParserState``)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints: train one with '
                            f'`python run.py --config=... --workdir={workdir}`')
  # eval_shape: ``abstract_state`` may hold arrays or ShapeDtypeStructs (inference restores).
  target = jax.tree_util.tree_map(
      lambda host, x: jax.ShapeDtypeStruct(host.shape, host.dtype,
                                           sharding=getattr(x, 'sharding', None)),
      jax.eval_shape(_host_state, abstract_state), abstract_state)
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  return _device_state(restored), step


def resume_or_start(manager, workdir: str, state, config) -> tuple[Any, int]:
  """(state, first step): the latest checkpoint of ``workdir`` restored onto ``state`` if
  ``manager`` has one, else ``state`` at step 0; process 0 also writes the run's
  config.json. Shared by the SDGAN and face-parser trainers."""
  initial_step = 0
  if manager.latest_step() is not None:
    state, initial_step = restore_state(workdir, state)
    logging.info('resumed from step %d', initial_step)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  return state, initial_step


@functools.lru_cache(maxsize=8)
def _inference_fns(models: Models) -> tuple[Callable, Callable]:
  """The EMA generator's validation and summary programs, jitted once per ``Models``
  (a new ``jax.jit`` per call would recompile the generator at every evaluation)."""
  import dm_pix  # pylint: disable=import-outside-toplevel

  def generate(ema_params, stats, batch):
    return _generate(models, ema_params, stats, batch, _one_hot(models, batch),
                     train=False)[0]

  def quality(ema_params, stats, batch):
    out = generate(ema_params, stats, batch)
    return losses.ssim(out, batch['image']), dm_pix.psnr(out, batch['image'])

  return jax.jit(quality), jax.jit(generate)


def local_copy(tree):
  """This process's copy of replicated arrays, on its first device: validation and image
  summaries then run on the process's own data without the other processes (feeding host
  arrays to a program over a multi-process mesh would need every process's data)."""
  return jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree)


def sum_over_processes(values: np.ndarray) -> np.ndarray:
  """``values`` summed over every process (each passes its own; all get the sum)."""
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def _eval_metrics(models, state, eval_batches, bank, seed) -> dict:
  """Validation: SSIM and PSNR of the EMA generator's composites against the originals,
  averaged over every process's share of the split."""
  per_image, _ = _inference_fns(models)
  params = local_copy((state.ema_params, state.generator.stats))
  totals = np.zeros(3)  # sum of SSIM, sum of PSNR, images
  for i, batch in enumerate(eval_batches):
    valid = np.asarray(batch['valid'], bool)
    # test identities are not in the (training) bank: any bank identity is another person
    picks = np.random.default_rng([seed, i, jax.process_index()]).integers(
        0, bank.num_identities, len(valid))
    inputs = {k: batch[k] for k in ('image', 'mask', 'semantic')}
    inputs['target_identity'] = bank.means[picks]
    s, p = per_image(*params, inputs)
    totals += [np.sum(np.asarray(s)[valid]), np.sum(np.asarray(p)[valid]), valid.sum()]
  ssim_sum, psnr_sum, count = sum_over_processes(totals)
  if not count:
    return {}
  return {'eval/ssim': float(ssim_sum / count), 'eval/psnr': float(psnr_sum / count)}


def _image_summary(models, state, batch, n: int) -> dict:
  """Input, mask, semantic map, target-conditioned output (EMA G) side by side."""
  from sdgan_jax.datasets.features import NUM_CLASSES  # pylint: disable=import-outside-toplevel

  slotted = batch_slots(models.config.train) > 1
  small = {k: (np.asarray(v)[0] if slotted else np.asarray(v))[:n] for k, v in batch.items()
           if k in ('image', 'mask', 'semantic', 'target_identity')}
  out = _inference_fns(models)[1](*local_copy((state.ema_params, state.generator.stats)),
                                  small)
  palette = np.random.default_rng(0).uniform(0.2, 1.0, (max(NUM_CLASSES, 32), 3))
  palette[0] = 0
  semantic = palette[small['semantic']]
  return {'images/input_mask_semantic_output': np.concatenate(
      [small['image'], np.repeat(small['mask'], 3, -1), semantic, np.asarray(out)], axis=2)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains SDGAN on the prepared dataset of ``config.data``; resumes from ``workdir``."""
  from sdgan_jax.config import ConfigError  # pylint: disable=import-outside-toplevel

  validate_config(config)  # before TensorFlow's import (clu, input pipeline): fails fast
  check_dataset(config.data.dataset)
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  from sdgan_jax import identity_bank as bank_lib  # pylint: disable=import-outside-toplevel
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel
  from sdgan_jax import weights as weights_lib  # pylint: disable=import-outside-toplevel

  if '://' not in workdir:  # orbax refuses relative local paths; keep gs:// and the like
    workdir = os.path.abspath(workdir)
  from google.protobuf import json_format  # pylint: disable=import-outside-toplevel
  try:
    source = input_pipeline.load_data_source(config.data.dataset, 'train')
  except (FileNotFoundError, ValueError, KeyError, json_format.Error) as e:
    dataset = config.data.dataset
    if not (pathlib.Path(dataset) / 'dataset_info.json').is_file():  # a TFDS name
      raise ConfigError(f'config.data.dataset={dataset!r}: no such directory, nor a prepared '
                        'TFDS dataset; pass the directory tools/prepare_data.py printed') from e
    cause = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise ConfigError(f'config.data.dataset={dataset!r}: its training split cannot be read '
                      f'({type(e).__name__}: {cause}); prepare the dataset again with '
                      'tools/prepare_data.py') from e
  _check_data(config, source)
  bank_file = config.data.identity_bank or bank_lib.bank_path(
      config.data.dataset, 'train', config.data.identity_backbone)
  try:
    bank = bank_lib.IdentityBank.load(bank_file)
  except FileNotFoundError as e:
    raise ConfigError(f'no identity bank at {bank_file}: prepare the dataset with '
                      'tools/prepare_data.py (without --identity_bank none), or pass '
                      '--config.data.identity_bank=PATH') from e
  if bank.dim != config.identity_dim:
    raise ConfigError(f'config.identity_dim={config.identity_dim} but the identity bank holds '
                      f'{bank.dim}-d features ({bank.backbone}); set identity_dim to {bank.dim}')
  perceptual = None
  if config.loss.perceptual_weights != 'random':
    perceptual = weights_lib.load_weights(config.loss.perceptual_weights)['params']

  models = Models(config)
  mesh = make_mesh()
  state = init_train_state(models, jax.random.key(config.seed), mesh, perceptual)
  eval_source = None
  if config.eval.num_batches:
    try:
      eval_source = input_pipeline.load_data_source(config.data.dataset, 'test')
    except (KeyError, ValueError, FileNotFoundError):
      logging.warning('no test split in %s: no validation metric', config.data.dataset)
  manager = checkpoint_manager(config, workdir, track_best=eval_source is not None)
  state, initial_step = resume_or_start(manager, workdir, state, config)
  if jax.process_index() == 0:
    # The anonymizer draws targets from the bank the model trained with: keep it beside the
    # checkpoints so a workdir is self-contained (sdgan_jax.inference).
    bank.save(os.path.join(workdir, 'identity_bank.npz'))
    # ... and the kind of semantic maps it trains on, which inference must draw alike.
    from sdgan_jax import semantic_source  # pylint: disable=import-outside-toplevel
    semantic_source.record_training_maps(workdir, config.data.dataset)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  host_batches = input_pipeline.train_iterator(
      source, batch_size=config.train.batch_size, resolution=config.resolution,
      seed=config.seed, start_step=initial_step, slots=batch_slots(config.train))
  batches = prefetch_to_mesh(with_target_identities(host_batches, bank), mesh,
                             partition=batch_partition(config.train))

  def evaluate(state):
    if eval_source is None:
      return {}
    eval_batches = input_pipeline.eval_iterator(
        eval_source, batch_size=config.train.batch_size, resolution=config.resolution)
    eval_batches = (b for _, b in zip(range(config.eval.num_batches), eval_batches))
    return _eval_metrics(models, state, eval_batches, bank, config.seed)

  state, step = run_training_loop(
      state, jit_train_step(models, mesh), batches, config=config, workdir=workdir,
      manager=manager, writer=writer, initial_step=initial_step, evaluate=evaluate,
      images=lambda state, batch: _image_summary(models, state, batch, 4),
      failure='loss', hint='lower the learning rate or check the data')
  checksum = sum(float(np.sum(np.asarray(x.addressable_data(0), np.float64)))
                 for x in jax.tree_util.tree_leaves(state.generator.params))
  logging.info('process %d: finished at step %d, generator parameter checksum %.10e',
               jax.process_index(), step, checksum)
  return state


def run_training_loop(state, step_fn: Callable, batches: Iterator[tuple[dict, dict]], *,
                      config: ml_collections.ConfigDict, workdir: str, manager, writer,
                      initial_step: int, evaluate: Callable[[Any], dict],
                      images: Callable[[Any, dict], dict] | None = None,
                      failure: str = 'loss', hint: str = '') -> tuple[Any, int]:
  """The loop of both trainers (SDGAN and face parser), up to ``config.train.num_steps``.

  ``batches`` yields (host batch, device batch) (``prefetch_to_mesh``). Every
  ``train.log_every`` steps the metrics are fetched (the loop's only wait for the device),
  checked (a non-finite ``failure`` raises ``NonFiniteLossError`` before anything of that
  step is saved) and written; every ``train.image_every`` steps process 0 writes
  ``images(state, host batch)``; every ``checkpoint.every`` steps and at the end
  ``evaluate(state)`` runs and the state is saved with its metrics. SIGTERM/SIGINT save
  the current step and stop. Returns (state, last step).
  """
  import signal  # pylint: disable=import-outside-toplevel

  from clu import periodic_actions  # pylint: disable=import-outside-toplevel

  num_steps = config.train.num_steps
  image_every = config.train.get('image_every', 0) if images is not None else 0
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  stop = {'signal': None}
  previous = {}
  for sig in (signal.SIGTERM, signal.SIGINT):
    previous[sig] = signal.signal(sig, lambda s, _: stop.update(signal=s))
  step = initial_step
  try:
    while step < num_steps:
      batch, device_batch = next(batches)
      state, metrics = step_fn(state, device_batch)
      step += 1
      report(step)
      last = step == num_steps or stop['signal'] is not None
      save = step % config.checkpoint.every == 0 or last
      if step % config.train.log_every == 0 or save:
        host_metrics = jax.device_get(metrics)
        if not host_metrics['train/all_finite']:
          raise NonFiniteLossError(
              f'non-finite {failure} at step {step}: {host_metrics}; the last good '
              f'checkpoint in {workdir}/checkpoints is kept ({hint})')
        writer.write_scalars(step, host_metrics)
      if image_every and step % image_every == 0 and jax.process_index() == 0:
        writer.write_images(step, images(state, batch))  # process 0 writes summaries
      if save:
        eval_metrics = evaluate(state)
        if eval_metrics:
          writer.write_scalars(step, eval_metrics)
        _save(manager, step, state, eval_metrics or None)
      if stop['signal'] is not None:
        logging.warning('signal %d: saved step %d, stopping', stop['signal'], step)
        break
  finally:
    manager.wait_until_finished()
    writer.flush()
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  return state, step


def _check_data(config, source) -> None:
  """The data must carry what the config promises (class count, enough resolution)."""
  from sdgan_jax.config import ConfigError  # pylint: disable=import-outside-toplevel
  from sdgan_jax.datasets.features import NUM_CLASSES  # pylint: disable=import-outside-toplevel

  if config.num_classes != NUM_CLASSES:
    raise ConfigError(f'config.num_classes={config.num_classes} but prepared datasets have '
                      f'{NUM_CLASSES} semantic classes')
  info = getattr(source, 'dataset_info', None)
  if info is not None:
    stored = info.features['image'].shape[0]
    if stored < config.resolution:
      raise ConfigError(f'config.resolution={config.resolution} exceeds the prepared '
                        f'crops ({stored} px); prepare the data at {config.resolution} px')
