"""Placing training on devices: the mesh, batch sharding, prefetch, host-side initialisation.

Both trainers (SDGAN, ``sdgan_jax.train``; face parser, ``sdgan_jax.train_parser``) run one
``jax.jit`` program over a 1-D 'data' mesh of every device of every process: batches are
split along it with ``NamedSharding``, states are replicated and XLA inserts the gradient
all-reduces. Multi-host safe: every process feeds its own part of the global batch.
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sdgan_jax.perf import xla_options

PREFETCH_BATCHES = 2  # batches on their way to the devices while a step runs
DATA = PartitionSpec('data')


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D 'data' mesh over every device of every process.

  The axis is 'Auto' (XLA propagates shardings and inserts the gradient all-reduces), not
  the 'Explicit' default of recent ``jax.make_mesh``, under which contractions over the
  sharded batch axis (the weight gradients) would need explicit output shardings.
  """
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def jit_step(step: Callable, mesh: jax.sharding.Mesh, partition: PartitionSpec = DATA) -> Callable:
  """``step(state, batch) -> (state, metrics)`` jitted over ``mesh``: the batch split by
  ``partition``, state and metrics replicated, the input state donated; on CPUs compiled
  with ``xla_options.CPU_STEP``."""
  replicated = NamedSharding(mesh, PartitionSpec())
  options = xla_options.for_platform(mesh.devices.flat[0].platform, xla_options.CPU_STEP)
  return jax.jit(
    step,
    in_shardings=(replicated, NamedSharding(mesh, partition)),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
    compiler_options=options,
  )


def host_cpu() -> jax.Device | None:
  """This process's first CPU device, or None when ``JAX_PLATFORMS`` leaves the CPU out."""
  try:
    return jax.local_devices(backend='cpu')[0]
  except RuntimeError:
    return None


def jit_init(init: Callable, **jit_kwargs) -> Callable:
  """``jax.jit`` for a program that runs once, such as an initialiser: compiled with
  ``xla_options.INIT`` on every platform."""
  return jax.jit(
    init, compiler_options=xla_options.unless_in_xla_flags(xla_options.INIT), **jit_kwargs
  )


def run_on_host(init: Callable, *args):
  """``init(*args)`` compiled (``jit_init``) for and run on the host CPU (``host_cpu``)."""
  cpu = host_cpu()
  if cpu is None:
    raise ValueError('running on the host needs the CPU backend; JAX_PLATFORMS excludes it')
  with jax.default_device(cpu):
    return jit_init(init)(*jax.device_put(args, cpu))


def init_on_host_by_default(platform: str) -> bool:
  """Whether initialisers for ``platform``'s devices run on the host CPU instead: when those
  devices are accelerators and this process has a CPU backend (see ``init_replicated``)."""
  return platform != 'cpu' and host_cpu() is not None


def keys_as_data(state):
  """``state`` with its typed PRNG key field ``rng`` as raw uint32 data (how it is
  checkpointed and copied between backends)."""
  return state.replace(rng=jax.random.key_data(state.rng))


def keys_from_data(state):
  """The inverse of ``keys_as_data``."""
  return state.replace(rng=jax.random.wrap_key_data(state.rng))


def init_replicated(init: Callable, mesh: jax.sharding.Mesh, *args, on_host: bool | None = None):
  """``init(*args)``, a state with an ``rng`` key field, placed replicated on ``mesh``.

  Placing it with the sharding the train step returns means the step compiles once, not
  once for the initial state and again for every later one. ``on_host`` (default: when the
  mesh is on accelerators) runs ``init`` on the host CPU and copies the state over: the
  initialisers' random-number kernels compile much faster there than for a GPU. Every process
  computes the same state from the same
  arguments, as multi-host placement requires.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  if on_host is None:
    on_host = init_on_host_by_default(mesh.devices.flat[0].platform)
  if not on_host:
    return jit_init(init, out_shardings=replicated)(*args)
  placed = jax.tree_util.tree_map(
    lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)),
    keys_as_data(run_on_host(init, *args)),
  )
  return keys_from_data(placed)


def shard_batch(
  batch: dict, mesh: jax.sharding.Mesh, keys: Sequence[str], partition: PartitionSpec = DATA
) -> dict:
  """Places this process's part of the global batch, the arrays named by ``keys``, on its
  devices, split by ``partition`` (multi-host safe)."""
  data = NamedSharding(mesh, partition)
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f'batch lacks {missing}; the train step needs {list(keys)}')
  return {k: jax.make_array_from_process_local_data(data, np.asarray(batch[k])) for k in keys}


def prefetch_to_mesh(
  batches: Iterable[dict],
  mesh: jax.sharding.Mesh,
  keys: Sequence[str],
  partition: PartitionSpec = DATA,
  size: int = PREFETCH_BATCHES,
) -> Iterator[tuple[dict, dict]]:
  """Yields ``(host batch, device batch)`` with ``size`` batches already sent to the devices.

  The copies are asynchronous, so the next batches travel while the current step runs and
  the step never waits for its input (the host batch is kept for image summaries).
  """
  queue = collections.deque()
  batches = iter(batches)
  place = functools.partial(shard_batch, mesh=mesh, keys=keys, partition=partition)

  def enqueue(n):
    for host in itertools.islice(batches, n):
      queue.append((host, place(host)))

  enqueue(size)
  while queue:
    current = queue.popleft()
    enqueue(1)  # before yielding: ``size`` batches stay in flight while this one is used
    yield current


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
