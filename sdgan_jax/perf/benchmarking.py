"""Speed of the jitted train step and of generator inference (``tools/benchmark.py``,
docs/performance.md).

Each measurement compiles once (timed), runs warm-up calls, then times ``steps`` calls with
one ``block_until_ready`` at the end (no host synchronisation inside the timed loop), and
returns one flat dict: images/s, seconds per step, compile seconds, XLA's FLOP count for the
program (``cost_analysis``), the achieved TFLOP/s and its share of the device's peak, and
memory (XLA's per-program estimate and the device allocator's peak). FLOPs are counted in
``perf.flops``, kernel profiles taken in ``perf.profiling``.

Inputs are random arrays of the real shapes already on the device: this times the step,
not the input pipeline (which prefetches onto the device in training). No TensorFlow here:
the GPU machines have none.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sdgan_jax import networks as networks_lib
from sdgan_jax import parallel, train_step
from sdgan_jax.perf import flops as flops_lib
from sdgan_jax.perf import profiling

# Dense (no sparsity) datasheet peaks in TFLOP/s, by device_kind prefix. fp32 matmuls on
# these GPUs run as TF32 under JAX's default precision, hence the TF32 figure.
DEVICE_PEAK_TFLOPS = {
  'NVIDIA H100': {'bfloat16': 989.0, 'float32': 494.0},
  'NVIDIA H200': {'bfloat16': 989.0, 'float32': 494.0},
  'NVIDIA A100': {'bfloat16': 312.0, 'float32': 156.0},
  'TPU v4': {'bfloat16': 275.0, 'float32': 275.0},
  'TPU v5 lite': {'bfloat16': 197.0, 'float32': 197.0},
  'TPU v5p': {'bfloat16': 459.0, 'float32': 459.0},
}


def device_info() -> dict[str, Any]:
  device = jax.devices()[0]
  return {
    'platform': device.platform,
    'device': device.device_kind,
    'device_count': jax.device_count(),
    'jax': jax.__version__,
    'date': datetime.date.today().isoformat(),
  }


def peak_tflops(dtype: str) -> float | None:
  kind = jax.devices()[0].device_kind
  for prefix, peaks in DEVICE_PEAK_TFLOPS.items():
    if kind.startswith(prefix):
      return peaks[dtype]
  return None


def authors_shapes_config(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The authors' released setting: 128 px, 11 classes, 2048-d identity, their generator,
  global discriminator and Siamese identity network, one identity-net + D + G update per
  step, each on its own batch (their schedule: 4 batches of ``batch_size`` per step)."""
  config = base.copy_and_resolve_references()
  config.resolution = 128
  config.identity_dim = 2048
  config.model.generator = ml_collections.ConfigDict({'preset': 'authors'})
  config.model.discriminator = ml_collections.ConfigDict({'kind': 'global'})
  config.model.identity = ml_collections.ConfigDict({'preset': 'authors'})
  config.train.identity_steps = 1
  config.train.d_steps = 1
  config.train.g_steps = 1
  config.train.fresh_batches = True
  return config


def phase(name: str, message: str) -> None:
  """Progress on stderr, so that a run cut off by a time limit shows where it was."""
  import sys  # pylint: disable=import-outside-toplevel

  print(f'[{time.strftime("%H:%M:%S")}] {name}: {message}', file=sys.stderr, flush=True)


def program_bytes(analysis) -> int:
  """A compiled program's memory by XLA's buffer assignment (``memory_analysis()``): temps,
  arguments and outputs, less the outputs that reuse (alias) donated arguments."""
  return int(
    analysis.temp_size_in_bytes
    + analysis.argument_size_in_bytes
    + analysis.output_size_in_bytes
    - analysis.alias_size_in_bytes
  )


def _memory(compiled) -> dict[str, Any]:
  out = {}
  try:
    out['program_bytes'] = program_bytes(compiled.memory_analysis())
  except Exception:  # pylint: disable=broad-except
    pass  # not every backend reports it
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    out['device_peak_bytes'] = int(stats['peak_bytes_in_use'])
  if 'bytes_limit' in stats:
    out['device_bytes_limit'] = int(stats['bytes_limit'])
  return out


def _time(compiled_call: Callable[[], Any], steps: int, warmup: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(compiled_call())
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = compiled_call()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def _summary(name, config, batch_size, step_s, compile_s, flops, memory, extra=None):
  dtype = config.get('dtype', 'float32')
  peak = peak_tflops(dtype)
  achieved = flops / step_s / 1e12 if flops else None
  row = dict(
    device_info(),
    bench=name,
    dtype=dtype,
    batch=batch_size,
    resolution=int(config.resolution),
    identity_dim=int(config.identity_dim),
    generator=dict(config.model.generator).get('preset', 'paper'),
    img_per_s=batch_size / step_s,
    step_s=step_s,
    compile_s=compile_s,
    gflop_per_image=flops / batch_size / 1e9 if flops else None,
    tflops=achieved,
    peak_tflops=peak,
    peak_share=achieved / peak if achieved and peak else None,
    # set, a second run's compile_s is a warm start (loaded from the cache)
    compilation_cache=jax.config.jax_compilation_cache_dir or None,
  )
  row.update(memory)
  row.update(extra or {})
  return row


def _random_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  r = config.resolution
  mask = np.zeros((batch_size, r, r, 1), np.float32)
  mask[:, r // 4 : 3 * r // 4, r // 5 : 4 * r // 5] = 1
  return dict(
    image=rng.uniform(size=(batch_size, r, r, 3)).astype(np.float32),
    mask=mask,
    semantic=rng.integers(0, config.num_classes, (batch_size, r, r)).astype(np.int32),
    pair_image=rng.uniform(size=(batch_size, r, r, 3)).astype(np.float32),
    pair_same=(np.arange(batch_size) % 2).astype(np.float32),
    target_image=rng.uniform(size=(batch_size, r, r, 3)).astype(np.float32),
    target_identity=rng.normal(size=(batch_size, config.identity_dim)).astype(np.float32),
  )


def train_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
  """A random batch of the train step's shapes for ``config``: with fresh batches, one per
  update slot, stacked (``train_step.batch_slots``)."""
  slots = train_step.batch_slots(config.train)
  parts = [_random_batch(config, batch_size, seed) for seed in range(slots)]
  return parts[0] if slots == 1 else {k: np.stack([p[k] for p in parts]) for k in parts[0]}


def bench_train_step(
  config: ml_collections.ConfigDict,
  batch_size: int,
  steps: int = 10,
  warmup: int = 2,
  name: str = 'train_step',
  profile_dir: str | None = None,
) -> dict[str, Any]:
  """The whole jitted train step (identity net, D, G updates, EMA) on ``batch_size`` images;
  with ``profile_dir``, also a kernel-level profile of 3 more steps (``profiling.profile``)."""
  config = config.copy_and_resolve_references()
  config.train.batch_size = batch_size
  networks = networks_lib.Networks(config)
  mesh = parallel.make_mesh()
  phase(name, f'initialising the state (batch {batch_size}, {config.dtype})')
  state = jax.block_until_ready(train_step.init_train_state(networks, jax.random.key(0), mesh))
  slots = train_step.batch_slots(config.train)
  batch = parallel.shard_batch(
    train_batch(config, batch_size),
    mesh,
    train_step.BATCH_KEYS,
    train_step.batch_partition(config.train),
  )
  phase(name, 'compiling the train step')
  start = time.perf_counter()
  lowered = train_step.jit_train_step(networks, mesh).lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  phase(name, f'compiled in {compile_s:.1f} s; timing')
  holder = {'state': state}

  def call():
    holder['state'], metrics = compiled(holder['state'], batch)  # state is donated
    return metrics

  step_s = _time(call, steps, warmup)
  extra = {
    'updates_per_step': (
      f'identity {config.train.identity_steps}, D {config.train.d_steps}, G {config.train.g_steps}'
    ),
    'batches_per_step': slots,
  }
  repeated = max(config.train.identity_steps, config.train.d_steps, config.train.g_steps) > 1
  if repeated and not train_step.unrolls_update_loops(mesh.devices.flat[0].platform):
    # repeated updates are one lax.scan body, which XLA's cost analysis counts once; on CPUs
    # they are written out and every one is counted
    extra['flops_counted'] = 'one update of each network'
  if profile_dir:
    phase(name, f'profiling 3 steps into {profile_dir}')
    extra.update(profiling.try_profile(call, profile_dir))
  flops = flops_lib.lowered_flops(lowered)
  return _summary(name, config, batch_size, step_s, compile_s, flops, _memory(compiled), extra)


def _init_on_host(init_fn: Callable, *args):
  """``parallel.jit_init(init_fn)(*args)``, on the host CPU when the default device is an
  accelerator (``parallel.init_on_host_by_default``, as ``parallel.init_replicated`` does:
  a GPU compile of an initialiser costs more device time than the generator's whole
  benchmark, and an eager init runs its forward op by op)."""
  if parallel.init_on_host_by_default(jax.devices()[0].platform):
    return parallel.run_on_host(init_fn, *args)
  return parallel.jit_init(init_fn)(*args)


def bench_generator(
  config: ml_collections.ConfigDict,
  batch_size: int,
  steps: int = 20,
  warmup: int = 2,
  name: str = 'generator',
  profile_dir: str | None = None,
) -> dict[str, Any]:
  """Generator inference (paper §3.4: masked face + semantic map + identity -> composite)
  on device-resident inputs: the accelerator's throughput; with ``profile_dir``, also a
  kernel-level profile of 3 more calls (``profiling.profile``)."""
  config = config.copy_and_resolve_references()
  generator = _untrained_generator(config, batch_size)
  batch = _random_batch(config, batch_size)
  args = [jnp.asarray(batch[k]) for k in ('image', 'mask', 'semantic', 'target_identity')]
  params = (generator.params, generator.stats)
  phase(name, f'compiling the generator (batch {batch_size}, {config.dtype})')
  start = time.perf_counter()
  lowered = generator.generate_fn.lower(*params, *args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  phase(name, f'compiled in {compile_s:.1f} s; timing')
  call = lambda: compiled(*params, *args)
  step_s = _time(call, steps, warmup)
  extra = {}
  if profile_dir:
    phase(name, f'profiling 3 calls into {profile_dir}')
    extra.update(profiling.try_profile(call, profile_dir))
  flops = flops_lib.lowered_flops(lowered)
  return _summary(name, config, batch_size, step_s, compile_s, flops, _memory(compiled), extra)


def bench_anonymize_batch(
  config: ml_collections.ConfigDict,
  batch_size: int,
  steps: int = 10,
  warmup: int = 1,
  name: str = 'anonymize_generate',
) -> dict[str, Any]:
  """What the anonymizer pays per batch of aligned crops: uint8 host arrays in, float host
  arrays out (``TrainedGenerator.generate``: transfers, padding and the generator)."""
  config = config.copy_and_resolve_references()
  generator = _untrained_generator(config, batch_size)
  batch = _random_batch(config, batch_size)
  image = (batch['image'] * 255).astype(np.uint8)
  start = time.perf_counter()
  generator.generate(image, batch['mask'], batch['semantic'], batch['target_identity'])
  compile_s = time.perf_counter() - start
  step_s = _time(
    lambda: generator.generate(image, batch['mask'], batch['semantic'], batch['target_identity']),
    steps,
    warmup,
  )
  return _summary(
    name, config, batch_size, step_s, compile_s, None, {}, {'compile_s_includes_first_call': True}
  )


def _untrained_generator(config, batch_size):
  from sdgan_jax import inference  # pylint: disable=import-outside-toplevel

  networks = networks_lib.Networks(config)
  params, stats = jax.device_put(
    _init_on_host(lambda key: networks_lib.init_generator(networks, key), jax.random.key(0)),
    jax.devices()[0],
  )
  return inference.TrainedGenerator(config, params, stats, batch_size=batch_size)
