"""The SDGAN train step: one TrainState, one jitted update of all three networks (eq. 2-9).

``train_step(networks, state, batch) -> (state, metrics)`` updates, in order, the Siamese
identity network (contrastive loss on real pairs, eq. 8), the discriminator (LSGAN, eq. 2)
and the generator (``config.train.g_steps`` times: eq. 3 + SSIM + perceptual + the
contrastive pull towards the target person, eq. 9 and §3.4), then the generator's EMA.
docs/training.md describes the step; docs/deviations.md where it differs from the paper.

Batches (``config.train.fresh_batches``): either every update of a step sees the same batch,
and the discriminator's fake and the first generator update share one generator forward
pass (its VJP is kept), or, as in the authors' code, every update gets its own batch
(identity net, D's fakes, D's reals, each generator update), stacked on a leading slot axis
(``batch_slots``). No TensorFlow here (the GPU benchmark imports this module).

Batch (numpy or jax arrays, leading axis = global batch):
  image [B,R,R,3] f32 in [0,1], mask [B,R,R,1] f32, semantic [B,R,R] int (class ids),
  pair_image [B,R,R,3] f32, pair_same [B] f32 (1 = same identity as ``image``),
  target_image [B,R,R,3] f32 (an image of another person, the target) and
  target_identity [B,D] f32 (that person's identity feature, paper §3.3);
  with fresh batches every array has a leading slot axis, [K,B,...].
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import PartitionSpec

from sdgan_jax import losses, parallel, trainer
from sdgan_jax.networks import (Networks, apply_with_stats, example_batch, generate,
                                init_generator, one_hot, split_variables)

BATCH_KEYS = ('image', 'mask', 'semantic', 'pair_image', 'pair_same', 'target_image',
              'target_identity')


class NetState(train_state.TrainState):
  """One network's training state: flax's ``TrainState`` (step, params, optimizer) plus
  ``stats``, its other variable collections (spectral-norm vectors, batch norm)."""
  stats: Any = None

  def run(self, *args, params=None, train: bool = False, **kwargs):
    """The network on ``args`` (with ``params`` instead of its own when given); returns
    ``(output, stats)``, the statistics advanced only when ``train``."""
    return apply_with_stats(self.apply_fn, self.params if params is None else params,
                            self.stats, *args, train=train, **kwargs)


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
  # EMA of the generator's other collections (batch-norm running statistics, spectral-norm
  # vectors), paired with ema_params at evaluation and export (docs/training.md "Inference")
  ema_stats: Any = None


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


def create_train_state(networks: Networks, rng: jax.Array,
                       perceptual_params: Any | None = None) -> TrainState:
  """Initialises all three networks and their optimizers (``config.optim`` each).

  ``perceptual_params`` are the converted VGG-16 weights (``load_weights('vgg16_imagenet')``);
  None initialises VGG-16 randomly, which only tests and smoke runs should do.
  """
  config = networks.config
  batch = example_batch(config)
  onehot = one_hot(batch['semantic'], config.num_classes)
  k_g, k_d, k_id, k_vgg, k_state = jax.random.split(rng, 5)

  def net_state(module, params_and_stats):
    params, stats = params_and_stats
    return NetState.create(apply_fn=module.apply, params=params, stats=stats,
                           tx=trainer.optimizer(config.optim))

  generator = net_state(networks.generator, init_generator(networks, k_g))
  discriminator = net_state(networks.discriminator, split_variables(
      networks.discriminator.init(k_d, batch['image'], onehot)))
  identity = net_state(networks.identity,
                       split_variables(networks.identity.init(k_id, batch['image'])))
  if perceptual_params is None:
    perceptual_params = networks.vgg.init(k_vgg, batch['image'],
                                          taps=networks.perceptual_tap)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), rng=k_state, generator=generator,
                    discriminator=discriminator, identity=identity,
                    ema_params=generator.params, perceptual_params=perceptual_params,
                    ema_stats=generator.stats)


# The platform the step is being traced for, set by ``update_loops_for`` (None: JAX's default).
_LOOPS_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    'update_loops_platform', default=None)


def unrolls_update_loops(platform: str | None = None) -> bool:
  """Repeated updates are written out one after another on CPUs, where XLA runs
  convolutions inside a while loop or a conditional many times slower (BENCHMARKS.md, CPU
  train step rows); on accelerators they stay one loop body, which keeps the program and
  its compile time at the size of one update. ``platform``: the devices' platform; default
  the one ``update_loops_for`` set (``jit_train_step``: its mesh's), else JAX's default
  backend."""
  return (platform or _LOOPS_PLATFORM.get() or jax.default_backend()) == 'cpu'


@contextlib.contextmanager
def update_loops_for(platform: str) -> Iterator[None]:
  """Steps traced inside take ``platform``'s loop structure (``unrolls_update_loops``), so a
  program compiled for a mesh's devices follows those devices, not the default backend
  (a GPU program compiled from a CPU host, ``compile_only.compile_train_step``). It holds
  for functions first traced inside: ``jax.jit`` reuses a function's earlier trace."""
  token = _LOOPS_PLATFORM.set(platform)
  try:
    yield
  finally:
    _LOOPS_PLATFORM.reset(token)


def traced_once(fn: Callable) -> Callable:
  """``fn`` traced once per distinct input shapes and inlined into the caller's program at
  every call: written-out updates reuse one trace instead of tracing a copy each (over a
  third off the demo step's tracing; the program is the same). Not inlined, the nested
  calls would run about 1.5x slower on XLA's CPU backend (BENCHMARKS.md, compile times).
  Where updates stay one loop body (accelerators) that body is traced once anyway: ``fn``."""
  return jax.jit(fn, inline=True) if unrolls_update_loops() else fn


def scan_updates(update: Callable, carry, xs, length: int | None = None, *,
                 trace_once: bool = True):
  """``jax.lax.scan(update, carry, xs, length)``: one loop body on accelerators, the same
  updates as straight-line code on CPUs (``unrolls_update_loops``); the outputs are stacked
  either way. ``xs`` (arrays or None) index the iterations. Written out, ``update`` is
  ``traced_once`` unless ``trace_once`` is False (for one that branches on a concrete x)."""
  if not unrolls_update_loops():
    return jax.lax.scan(update, carry, xs, length=length)
  count = length if xs is None else len(jax.tree_util.tree_leaves(xs)[0])
  update = traced_once(update) if trace_once else update
  outputs = []
  for i in range(count):
    x = None if xs is None else jax.tree_util.tree_map(lambda a, i=i: a[i], xs)
    carry, out = update(carry, x)
    outputs.append(out)
  return carry, jax.tree_util.tree_map(lambda *o: jnp.stack(o), *outputs)


def _last(metrics):
  return jax.tree_util.tree_map(lambda m: m[-1], metrics)


def _repeat(update: Callable[[NetState], tuple[NetState, dict]], net: NetState,
            times: int) -> tuple[NetState, dict]:
  """``times`` updates of one network (``scan_updates``); the last one's metrics."""
  if times == 0:
    return net, {}
  if times == 1:
    return update(net)
  net, metrics = scan_updates(lambda carry, _: update(carry), net, None, length=times)
  return net, _last(metrics)


def identity_update(networks: Networks, net: NetState, batch) -> tuple[NetState, dict]:
  """Siamese identity network on real pairs, contrastive loss (eq. 8)."""
  loss_cfg = networks.config.loss

  def loss_fn(params):
    images = jnp.concatenate([batch['image'], batch['pair_image']], axis=0)
    out, new_stats = net.run(images, params=params, train=True)
    e1, e2 = jnp.split(out['embedding'], 2)
    loss = losses.contrastive_loss(e1, e2, batch['pair_same'], loss_cfg.contrastive_margin,
                                   loss_cfg.contrastive_mode)
    return loss, new_stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
  return net.apply_gradients(grads=grads, stats=stats), {'id_contrastive': loss}


def discriminator_update(net: NetState, real, real_onehot, fake, fake_onehot):
  """LSGAN discriminator update, eq. 2: real images and composites, each with its map."""

  def loss_fn(params):
    both = jnp.concatenate([real, fake], axis=0)
    logits, new_stats = net.run(both, jnp.concatenate([real_onehot, fake_onehot], axis=0),
                                params=params, train=True)
    split = lambda x: jnp.split(x, 2)
    if isinstance(logits, (list, tuple)):
      real_logits, fake_logits = zip(*map(split, logits))
    else:
      real_logits, fake_logits = split(logits)
    return losses.lsgan_d_loss(real_logits, fake_logits), new_stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
  return net.apply_gradients(grads=grads, stats=stats), {'d_lsgan': loss}


def generator_forward(networks: Networks, net: NetState, batch):
  """G's training forward pass and its VJP: ``(composite, vjp_fn, new_stats)``.

  One forward serves both the discriminator update (as the fake) and the first generator
  update (through ``vjp_fn``): the step runs G forward once less than if each recomputed it.
  """
  classes = networks.config.num_classes
  return jax.vjp(lambda p: generate(networks.generator, p, net.stats, batch, classes,
                                    train=True), net.params, has_aux=True)


G_LOSS_NETWORK_MODES = ('eval', 'train')


def judges_train(config) -> bool:
  """Whether the identity net and D run in training mode inside G's loss
  (``config.train.g_loss_networks``, docs/training.md "The networks inside the generator's
  loss"): 'eval' (default) uses the running batch-norm statistics and leaves D's
  spectral-norm vectors alone; 'train' (the authors') uses batch statistics, with separate
  identity passes for the output and the real image, and advances both networks' statistics
  on every generator update."""
  mode = config.train.get('g_loss_networks', 'eval')
  if mode not in G_LOSS_NETWORK_MODES:
    raise ValueError(f'config.train.g_loss_networks={mode!r}: use one of '
                     f'{", ".join(map(repr, G_LOSS_NETWORK_MODES))}')
  return mode == 'train'


def reference_features(networks: Networks, state: TrainState, batch) -> dict:
  """What the generator loss compares its output with, fixed while G updates on ``batch``:
  the real images' VGG-16 features (eq. 7) and the identity embeddings (eq. 8) of the
  target person's image and, for the optional push, of the source image. Computed once
  per batch, not once per generator update (the identity net is already updated). With
  the identity net in training mode inside G's loss (``judges_train``) the embeddings are
  left to ``generator_update``: each of its passes advances the running statistics."""
  reference = {}
  weights = losses.LossWeights.from_config(networks.config.loss)
  if weights.perceptual:
    reference['vgg'] = networks.vgg_features(state.perceptual_params, batch['image'])
  if judges_train(networks.config):
    return jax.lax.stop_gradient(reference)
  embed = lambda images: state.identity.run(images)[0]['embedding']
  if weights.contrastive and weights.source_push:
    reference['target'], reference['source'] = jnp.split(
        embed(jnp.concatenate([batch['target_image'], batch['image']])), 2)
  elif weights.contrastive:
    reference['target'] = embed(batch['target_image'])
  elif weights.source_push:
    reference['source'] = embed(batch['image'])
  return jax.lax.stop_gradient(reference)


def generator_update(networks: Networks, state: TrainState, batch, forward, reference: dict):
  """Generator update, eq. 9: L_adv(G) + l1*L_SSIM + l2*L_perceptual + l3*L_contrastive.

  ``forward`` is ``generator_forward`` at ``state.generator``: the loss is differentiated
  with respect to the composite and pulled back to G's parameters through its VJP;
  ``reference`` is ``reference_features``. The contrastive term labels (output, target
  person's image) as the *same* identity: G is pulled towards the person whose identity
  feature it was given (paper §3.4), as the authors' code does. The optional
  ``source_push`` term labels (output, source image) as *different*.

  Returns ``(state, metrics)``: ``state`` with the updated generator and, when D and the
  identity net run in training mode here (``judges_train``), their advanced statistics.
  """
  loss_cfg = networks.config.loss
  weights = losses.LossWeights.from_config(loss_cfg)
  onehot = one_hot(batch['semantic'], networks.config.num_classes)
  train = judges_train(networks.config)
  identity = state.identity
  if train and (weights.contrastive or weights.source_push):
    # The authors' order is fake then real; the real passes run first here, so that their
    # embeddings are fixed inputs of the loss. Only the running averages see the order.
    reference = dict(reference)
    for key, images, used in (('target', batch['target_image'], weights.contrastive),
                              ('source', batch['image'], weights.source_push)):
      if used:
        out, stats = identity.run(images, train=True)
        reference[key] = jax.lax.stop_gradient(out['embedding'])
        identity = identity.replace(stats=stats)

  def loss_fn(out):
    logits, d_stats = state.discriminator.run(out, onehot, train=train)
    terms = {'adv': losses.lsgan_g_loss(logits)}
    if weights.ssim:
      terms['ssim'] = losses.ssim_loss(out, batch['image'])
    if weights.perceptual:
      terms['perceptual'] = losses.perceptual_loss(
          lambda x: networks.vgg_features(state.perceptual_params, x), out, batch['image'],
          loss_cfg.get('perceptual_feature_scale', 1.0), target_features=reference['vgg'])
    if weights.l1:
      terms['l1'] = losses.l1_loss(out, batch['image'])
    id_stats = identity.stats
    if weights.contrastive or weights.source_push:
      embedded, id_stats = identity.run(out, train=train)
      contrast = lambda other, same: losses.contrastive_loss(
          embedded['embedding'], other, jnp.full(out.shape[0], same),
          loss_cfg.contrastive_margin, loss_cfg.contrastive_mode)
      if weights.contrastive:
        terms['contrastive'] = contrast(reference['target'], 1.0)
      if weights.source_push:
        terms['source_push'] = contrast(reference['source'], 0.0)
    total, metrics = losses.generator_total_loss(terms, weights)
    return total, (metrics, d_stats, id_stats)

  out, vjp_fn, stats = forward
  (_, (metrics, d_stats, id_stats)), grad_out = jax.value_and_grad(
      loss_fn, has_aux=True)(out)
  grads, = vjp_fn(grad_out)
  new_state = state.replace(
      generator=state.generator.apply_gradients(grads=grads, stats=stats),
      discriminator=state.discriminator.replace(stats=d_stats),
      identity=identity.replace(stats=id_stats))
  return new_state, {f'g_{k}': v for k, v in metrics.items()}


def _adversarial_updates(networks: Networks, state: TrainState, batch):
  """``d_steps`` discriminator updates (eq. 2), then ``g_steps`` generator updates (eq. 9).

  Each generator update runs G forward once, and the first one's forward also gives the
  discriminator its fake, so the discriminator updates run inside the first iteration.
  Several generator updates are one loop body (``scan_updates``) whose ``lax.cond`` runs
  that D phase at the first iteration only: the program holds one generator update and one
  D phase whatever the ratio. Written out on CPUs, the D phase is in the first only.
  """
  cfg = networks.config.train
  onehot = one_hot(batch['semantic'], networks.config.num_classes)
  reference = reference_features(networks, state, batch) if cfg.g_steps else None

  def d_phase(disc: NetState, fake):
    return _repeat(lambda net: discriminator_update(net, batch['image'], onehot, fake, onehot),
                   disc, cfg.d_steps)

  first_d_metrics = {}  # written-out iterations: the D phase's, to zero in the later ones
  # the iterations branch on their concrete index, so their generator parts are traced once
  forward_fn = traced_once(functools.partial(generator_forward, networks))
  update_fn = traced_once(functools.partial(generator_update, networks))

  def iteration(nets, index):
    gen, disc, ident = nets
    forward = forward_fn(gen, batch)
    fake = jax.lax.stop_gradient(forward[0])
    # Later iterations leave D alone; their zero D metrics keep the loop's output structure.
    if not isinstance(index, (int, np.integer)):  # traced inside a loop body
      shapes = jax.eval_shape(d_phase, disc, fake)[1]
      skip = lambda d, _: (d, {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()})
      disc, d_metrics = jax.lax.cond(index == 0, d_phase, skip, disc, fake)
    elif index == 0:
      disc, d_metrics = d_phase(disc, fake)
      first_d_metrics.update(d_metrics)
    else:  # written out: no second trace of the D phase just for its metrics' shapes
      d_metrics = jax.tree_util.tree_map(jnp.zeros_like, dict(first_d_metrics))
    if not cfg.g_steps:
      return (gen, disc, ident), (d_metrics, {})
    # D and the identity net ride in the carry: in training mode (``judges_train``) each
    # generator update advances their statistics
    new, g_metrics = update_fn(state.replace(generator=gen, discriminator=disc,
                                             identity=ident), batch, forward, reference)
    return (new.generator, new.discriminator, new.identity), (d_metrics, g_metrics)

  nets = (state.generator, state.discriminator, state.identity)
  if cfg.g_steps <= 1:
    (gen, disc, ident), (d_metrics, g_metrics) = iteration(nets, 0)
  else:
    (gen, disc, ident), (d_metrics, g_metrics) = scan_updates(
        iteration, nets, np.arange(cfg.g_steps), trace_once=False)
    d_metrics = jax.tree_util.tree_map(lambda m: m[0], d_metrics)  # the D phase's
    g_metrics = _last(g_metrics)
  return (state.replace(generator=gen, discriminator=disc, identity=ident),
          {**d_metrics, **g_metrics})


def _fresh_batch_updates(networks: Networks, state: TrainState, batch: dict):
  """The authors' schedule: each update on its own batch (``batch_slots`` order).

  The discriminator's fakes come from the generator run on their own batch (no gradient;
  its normalisation statistics still advance, as a PyTorch forward in training mode does)
  and are judged beside a separate batch of real images.
  """
  t, classes = networks.config.train, networks.config.num_classes
  ends = np.cumsum([t.identity_steps, t.d_steps, t.d_steps, t.g_steps])
  ident_b, fake_b, real_b, gen_b = (
      jax.tree_util.tree_map(lambda x, lo=lo, hi=hi: x[lo:hi], batch)
      for lo, hi in zip([0, *ends[:-1]], ends))
  metrics = {}

  def d_update(nets, pair):
    gen, disc = nets
    fakes, reals = pair
    fake, g_stats = generate(networks.generator, gen.params, gen.stats, fakes, classes,
                             train=True)
    disc, m = discriminator_update(disc, reals['image'], one_hot(reals['semantic'], classes),
                                   jax.lax.stop_gradient(fake),
                                   one_hot(fakes['semantic'], classes))
    return (gen.replace(stats=g_stats), disc), m

  def g_update(nets, b):
    gen, disc, ident = nets
    current = state.replace(generator=gen, discriminator=disc, identity=ident)
    new, m = generator_update(networks, current, b, generator_forward(networks, gen, b),
                              reference_features(networks, current, b))
    return (new.generator, new.discriminator, new.identity), m

  if t.identity_steps:
    identity, m = scan_updates(lambda net, b: identity_update(networks, net, b),
                               state.identity, ident_b)
    state = state.replace(identity=identity)
    metrics.update(_last(m))
  if t.d_steps:
    (gen, disc), m = scan_updates(d_update, (state.generator, state.discriminator),
                                  (fake_b, real_b))
    state = state.replace(generator=gen, discriminator=disc)
    metrics.update(_last(m))
  if t.g_steps:
    (gen, disc, ident), m = scan_updates(
        g_update, (state.generator, state.discriminator, state.identity), gen_b)
    state = state.replace(generator=gen, discriminator=disc, identity=ident)
    metrics.update(_last(m))
  return state, metrics


def train_step(networks: Networks, state: TrainState, batch: dict
               ) -> tuple[TrainState, dict]:
  """One SDGAN step: identity net, discriminator, ``g_steps`` generator updates, EMA."""
  cfg = networks.config
  if batch_slots(cfg.train) > 1:
    state, metrics = _fresh_batch_updates(networks, state, batch)
  else:
    identity, metrics = _repeat(lambda net: identity_update(networks, net, batch),
                                state.identity, cfg.train.identity_steps)
    state, m = _adversarial_updates(networks, state.replace(identity=identity), batch)
    metrics = {**metrics, **m}

  ema = optax.incremental_update(state.generator.params, state.ema_params,
                                 1.0 - cfg.train.ema_decay)
  ema_stats = optax.incremental_update(state.generator.stats, state.ema_stats,
                                       1.0 - cfg.train.ema_decay)
  metrics = {f'train/{k}': v.astype(jnp.float32) for k, v in metrics.items()}
  finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in metrics.values()]))
  metrics['train/all_finite'] = finite.astype(jnp.float32)
  return state.replace(step=state.step + 1, ema_params=ema, ema_stats=ema_stats), metrics


def jit_train_step(networks: Networks, mesh: jax.sharding.Mesh) -> Callable:
  """``train_step`` jitted over ``mesh``: batch split on 'data', state replicated, donated;
  its update loops those of the mesh's platform (``update_loops_for``)."""
  platform = mesh.devices.flat[0].platform

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    with update_loops_for(platform):
      return train_step(networks, state, batch)

  return parallel.jit_step(step, mesh, batch_partition(networks.config.train))


def init_train_state(networks: Networks, rng: jax.Array, mesh: jax.sharding.Mesh,
                     perceptual_params=None, *, on_host: bool | None = None) -> TrainState:
  """``create_train_state`` placed replicated on ``mesh`` (``parallel.init_replicated``)."""
  return parallel.init_replicated(lambda key, vgg: create_train_state(networks, key, vgg),
                                  mesh, rng, perceptual_params, on_host=on_host)
