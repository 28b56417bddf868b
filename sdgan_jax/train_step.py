"""The SDGAN train step: one TrainState, one jitted update of all three networks (eq. 2-9).

``train_step(networks, state, batch, unroll=...) -> (state, metrics)`` updates, in order,
the Siamese identity network (contrastive loss on real pairs, eq. 8), the discriminator
(LSGAN, eq. 2) and the generator (``config.train.g_steps`` times: eq. 3 + SSIM + perceptual + the
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

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import PartitionSpec

from sdgan_jax import optimizers, parallel
from sdgan_jax.network_updates import (
  discriminator_update,
  generator_forward,
  generator_update,
  identity_update,
  reference_features,
)
from sdgan_jax.networks import (
  Networks,
  apply_with_stats,
  example_batch,
  generate,
  init_generator,
  one_hot,
  split_variables,
)

BATCH_KEYS = (
  'image',
  'mask',
  'semantic',
  'pair_image',
  'pair_same',
  'target_image',
  'target_identity',
)


class NetState(train_state.TrainState):
  """One network's training state: flax's ``TrainState`` (step, params, optimizer) plus
  ``stats``, its other variable collections (spectral-norm vectors, batch norm)."""

  stats: Any = None

  def run(self, *args, params=None, train: bool = False, **kwargs):
    """The network on ``args`` (with ``params`` instead of its own when given); returns
    ``(output, stats)``, the statistics advanced only when ``train``."""
    return apply_with_stats(
      self.apply_fn,
      self.params if params is None else params,
      self.stats,
      *args,
      train=train,
      **kwargs,
    )


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree (checkpointed as a whole)."""

  step: jax.Array
  rng: jax.Array
  generator: NetState
  discriminator: NetState
  identity: NetState
  ema_params: Any  # EMA of the generator's params: what is evaluated and exported
  perceptual_params: Any  # frozen VGG-16 (eq. 7); carried here so it is sharded once
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
  return PartitionSpec('data') if batch_slots(train_config) == 1 else PartitionSpec(None, 'data')


def create_train_state(
  networks: Networks, rng: jax.Array, perceptual_params: Any | None = None
) -> TrainState:
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
    return NetState.create(
      apply_fn=module.apply, params=params, stats=stats, tx=optimizers.optimizer(config.optim)
    )

  generator = net_state(networks.generator, init_generator(networks, k_g))
  discriminator = net_state(
    networks.discriminator,
    split_variables(networks.discriminator.init(k_d, batch['image'], onehot)),
  )
  identity = net_state(
    networks.identity, split_variables(networks.identity.init(k_id, batch['image']))
  )
  if perceptual_params is None:
    perceptual_params = networks.vgg.init(k_vgg, batch['image'], taps=networks.perceptual_tap)[
      'params'
    ]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    rng=k_state,
    generator=generator,
    discriminator=discriminator,
    identity=identity,
    ema_params=generator.params,
    perceptual_params=perceptual_params,
    ema_stats=generator.stats,
  )


def unrolls_update_loops(platform: str) -> bool:
  """The ``unroll`` of a step compiled for ``platform``'s devices: True on CPUs, where XLA
  runs convolutions inside a while loop or a conditional many times slower; accelerators
  keep repeated updates as one loop body, which holds the program and its compile time at
  the size of one update."""
  return platform == 'cpu'


def repeat_updates(
  update: Callable, carry, xs=None, *, length: int | None = None, unroll: bool
) -> tuple[Any, dict]:
  """``update(carry, x) -> (carry, metrics)`` once per slice ``x`` of ``xs`` (arrays with a
  leading axis), or ``length`` times with ``x`` None; returns the carry and the last
  update's metrics ({} when there is none).

  ``unroll``: written out one after another, each a call of one trace of ``update``
  inlined into the program (``jax.jit(inline=True)``: traced once, not once per update);
  otherwise one ``lax.scan`` body. A single update is a plain call either way.
  """
  count = length if xs is None else len(jax.tree_util.tree_leaves(xs)[0])
  nth = lambda i: None if xs is None else jax.tree_util.tree_map(lambda a: a[i], xs)
  if count == 0:
    return carry, {}
  if count == 1:
    return update(carry, nth(0))
  if not unroll:
    carry, metrics = jax.lax.scan(update, carry, xs, length=count)
    return carry, jax.tree_util.tree_map(lambda m: m[-1], metrics)
  update = jax.jit(update, inline=True)
  for i in range(count):
    carry, metrics = update(carry, nth(i))
  return carry, metrics


class _UpdateBatches(NamedTuple):
  """The batches of one step's updates (``batch_slots``): with ``shared``, the one batch
  every update sees in each field; else each phase's own batches, stacked on a leading
  axis, one per update."""

  shared: bool
  identity: dict
  fake: dict
  real: dict
  generator: dict


def _update_batches(train_config, batch: dict) -> _UpdateBatches:
  if batch_slots(train_config) == 1:
    return _UpdateBatches(True, batch, batch, batch, batch)
  t = train_config
  ends = np.cumsum([t.identity_steps, t.d_steps, t.d_steps, t.g_steps])
  return _UpdateBatches(
    False,
    *(
      jax.tree_util.tree_map(lambda x, lo=lo, hi=hi: x[lo:hi], batch)
      for lo, hi in zip([0, *ends[:-1]], ends)
    ),
  )


def _identity_updates(
  networks: Networks, state: TrainState, batches: _UpdateBatches, unroll: bool
) -> tuple[TrainState, dict]:
  """``identity_steps`` updates of the identity network (eq. 8)."""
  update = lambda net, batch: identity_update(networks, net, batch)
  if batches.shared:
    identity, metrics = repeat_updates(
      lambda net, _: update(net, batches.identity),
      state.identity,
      length=networks.config.train.identity_steps,
      unroll=unroll,
    )
  else:
    identity, metrics = repeat_updates(update, state.identity, batches.identity, unroll=unroll)
  return state.replace(identity=identity), metrics


class _GeneratorCalls(NamedTuple):
  """``generator_forward`` and ``generator_update`` with the networks bound, as the
  discriminator and generator phases call them."""

  forward: Callable
  update: Callable
  separate: bool  # nested jits, left as calls


def _generator_calls(networks: Networks, batches: _UpdateBatches, unroll: bool) -> _GeneratorCalls:
  """Inlined calls, or, with a shared batch on accelerators, nested ``jax.jit``s left as
  calls in the program.

  There the first generator update is peeled from the loop of the others (it goes through
  the forward pass the discriminator judged): as calls, the peeled update and the loop body
  call one function body of each, where inlined they would hold two copies of the update.
  ``generator_forward``'s VJP is a pytree whose static part is its forward's trace; tracing
  the forward once (the jit's cache) gives both update calls the same argument structure,
  so the update too is traced and lowered once: one copy in the program JAX hands to XLA
  (XLA's own passes may still inline the calls). CPUs write the updates out, inlined.
  """
  forward = functools.partial(generator_forward, networks)
  update = functools.partial(generator_update, networks)
  if unroll or not batches.shared or networks.config.train.g_steps < 2:
    return _GeneratorCalls(forward, update, False)
  return _GeneratorCalls(jax.jit(forward), jax.jit(update), True)


def _discriminator_updates(
  networks: Networks,
  state: TrainState,
  batches: _UpdateBatches,
  calls: _GeneratorCalls,
  unroll: bool,
):
  """``d_steps`` discriminator updates (eq. 2), composites beside real images; returns
  ``(state, metrics, forward)``.

  With a shared batch, the composites are those of the generator's forward pass at its
  current parameters, ``forward`` (``generator_forward``), which the first generator update
  then reuses. With fresh batches, each update judges the generator's composites of its own
  batch (no gradient; its normalisation statistics still advance, as a PyTorch forward in
  training mode does) beside a separate batch of real images, and ``forward`` is None.
  """
  t, classes = networks.config.train, networks.config.num_classes
  if batches.shared:
    batch = batches.fake
    onehot = one_hot(batch['semantic'], classes)
    forward = calls.forward(state.generator, batch)
    fake = jax.lax.stop_gradient(forward[0])
    disc, metrics = repeat_updates(
      lambda net, _: discriminator_update(net, batch['image'], onehot, fake, onehot),
      state.discriminator,
      length=t.d_steps,
      unroll=unroll,
    )
    return state.replace(discriminator=disc), metrics, forward

  def update(nets, fakes_and_reals):
    gen, disc = nets
    fakes, reals = fakes_and_reals
    fake, g_stats = generate(networks.generator, gen.params, gen.stats, fakes, classes, train=True)
    disc, metrics = discriminator_update(
      disc,
      reals['image'],
      one_hot(reals['semantic'], classes),
      jax.lax.stop_gradient(fake),
      one_hot(fakes['semantic'], classes),
    )
    return (gen.replace(stats=g_stats), disc), metrics

  (gen, disc), metrics = repeat_updates(
    update, (state.generator, state.discriminator), (batches.fake, batches.real), unroll=unroll
  )
  return state.replace(generator=gen, discriminator=disc), metrics, None


def _generator_updates(
  networks: Networks,
  state: TrainState,
  batches: _UpdateBatches,
  forward,
  calls: _GeneratorCalls,
  unroll: bool,
) -> tuple[TrainState, dict]:
  """``g_steps`` generator updates (eq. 9), each through its own forward pass.

  With a shared batch, the first update goes through ``forward``, the pass whose
  composites the discriminator has just judged, and the other ``g_steps - 1`` run their
  own; all compare with the same ``reference_features``. With fresh batches, each update
  runs on its own batch, with that batch's reference features.
  """
  if not networks.config.train.g_steps:
    return state, {}

  def update(nets, batch, forward, reference):
    # D and the identity net ride along: in training mode (``judges_train``) each
    # generator update advances their statistics
    gen, disc, ident = nets
    current = state.replace(generator=gen, discriminator=disc, identity=ident)
    new, metrics = calls.update(current, batch, forward, reference)
    return (new.generator, new.discriminator, new.identity), metrics

  def own_forward_update(nets, batch, reference=None):
    forward = calls.forward(nets[0], batch)
    if reference is None:
      reference = reference_features(networks, state.replace(identity=nets[2]), batch)
    return update(nets, batch, forward, reference)

  nets = (state.generator, state.discriminator, state.identity)
  if batches.shared:
    batch = batches.generator
    reference = reference_features(networks, state, batch)
    nets, metrics = update(nets, batch, forward, reference)
    if calls.separate:
      # The loop's metrics replace these; unused, they would be pruned from this call
      # alone, which would then no longer call the loop body's function.
      nets, metrics = jax.lax.optimization_barrier((nets, metrics))
    nets, later = repeat_updates(
      lambda n, _: own_forward_update(n, batch, reference),
      nets,
      length=networks.config.train.g_steps - 1,
      unroll=unroll,
    )
    metrics = later or metrics
  else:
    nets, metrics = repeat_updates(own_forward_update, nets, batches.generator, unroll=unroll)
  gen, disc, ident = nets
  return state.replace(generator=gen, discriminator=disc, identity=ident), metrics


def train_step(
  networks: Networks, state: TrainState, batch: dict, *, unroll: bool
) -> tuple[TrainState, dict]:
  """One SDGAN step, in the order of the paper's training loop: the identity network
  (``identity_steps`` updates, eq. 8), the discriminator (``d_steps``, eq. 2), the generator
  (``g_steps``, eq. 9), then the generator's EMA.

  ``unroll`` (static; ``unrolls_update_loops`` of the devices): repeated updates written
  out one after another, as CPUs want, or one loop body each (``repeat_updates``).
  """
  cfg = networks.config
  batches = _update_batches(cfg.train, batch)
  state, id_metrics = _identity_updates(networks, state, batches, unroll)
  calls = _generator_calls(networks, batches, unroll)
  state, d_metrics, forward = _discriminator_updates(networks, state, batches, calls, unroll)
  state, g_metrics = _generator_updates(networks, state, batches, forward, calls, unroll)

  decay = cfg.train.ema_decay
  ema = optax.incremental_update(state.generator.params, state.ema_params, 1.0 - decay)
  ema_stats = optax.incremental_update(state.generator.stats, state.ema_stats, 1.0 - decay)
  metrics = {
    f'train/{k}': v.astype(jnp.float32) for k, v in {**id_metrics, **d_metrics, **g_metrics}.items()
  }
  finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in metrics.values()]))
  metrics['train/all_finite'] = finite.astype(jnp.float32)
  return state.replace(step=state.step + 1, ema_params=ema, ema_stats=ema_stats), metrics


def jit_train_step(networks: Networks, mesh: jax.sharding.Mesh) -> Callable:
  """``train_step`` jitted over ``mesh``: batch split on 'data', state replicated, donated;
  its update loops those of the mesh's devices (``unrolls_update_loops``), which need not
  be this host's (``compile_only``)."""
  unroll = unrolls_update_loops(mesh.devices.flat[0].platform)
  return parallel.jit_step(
    functools.partial(train_step, networks, unroll=unroll),
    mesh,
    batch_partition(networks.config.train),
  )


def init_train_state(
  networks: Networks,
  rng: jax.Array,
  mesh: jax.sharding.Mesh,
  perceptual_params=None,
  *,
  on_host: bool | None = None,
) -> TrainState:
  """``create_train_state`` placed replicated on ``mesh`` (``parallel.init_replicated``)."""
  return parallel.init_replicated(
    lambda key, vgg: create_train_state(networks, key, vgg),
    mesh,
    rng,
    perceptual_params,
    on_host=on_host,
  )
