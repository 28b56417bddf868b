"""Speed of the jitted train step and of generator inference (``tools/benchmark.py``).

Each measurement compiles once (timed), runs warm-up calls, then times ``steps`` calls with
one ``block_until_ready`` at the end (no host synchronisation inside the timed loop), and
returns one flat dict: images/s, seconds per step, compile seconds, XLA's FLOP count for the
program (``cost_analysis``), the achieved TFLOP/s and its share of the device's peak, and
memory (XLA's per-program estimate and the device allocator's peak).

Inputs are random arrays of the real shapes already on the device: this times the step,
not the input pipeline (which prefetches onto the device in training). No TensorFlow here:
the GPU machines have none.
"""

from __future__ import annotations

import collections
import datetime
import glob
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import ml_collections
import numpy as np

from sdgan_jax import networks as networks_lib
from sdgan_jax import parallel, train_step
from sdgan_jax.models import discriminator as discriminator_lib
from sdgan_jax.models import generator as generator_lib
from sdgan_jax.models.layers import count_params

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


def _flops(lowered) -> float | None:
  """FLOPs of the program as lowered, before backend optimisation.

  The compiled program's cost analysis is not used: on GPU, convolutions become cuDNN
  custom calls that it does not count (an H200 run reported 0.08 GFLOP for a 42.9 GFLOP
  generator forward).
  """
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


# The authors' figures for their networks at 128 px, 11 classes, 2048-d identity:
# (forward GFLOP per image, trainable parameters).
AUTHORS_FIGURES = {
  'generator': (41.2, 16.88e6),
  'discriminator': (7.8, 18.24e6),
  'identity': (17.8, 12.92e6),
}


def _subjaxprs(params: dict):
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def _jaxpr_macs(jaxpr, repeat: int = 1) -> int:
  """Multiply-adds of the convolutions and dot products in ``jaxpr`` (nested ones too)."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      kernel, out = eqn.invars[1].aval, eqn.outvars[0].aval
      out_features = kernel.shape[eqn.params['dimension_numbers'].rhs_spec[0]]
      # every output element: kernel taps x input channels per group, padding included
      total += repeat * math.prod(out.shape) * (math.prod(kernel.shape) // out_features)
    elif name == 'dot_general':
      lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
      (contracting, _), _ = eqn.params['dimension_numbers']
      total += repeat * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contracting)
    else:
      times = repeat * (eqn.params.get('length', 1) if name == 'scan' else 1)
      for sub in _subjaxprs(eqn.params):
        total += _jaxpr_macs(sub, times)
  return total


def conv_dense_flops(fn: Callable, *args) -> int:
  """FLOPs of ``fn(*args)``'s convolutions and matmuls: 2 per multiply-add, counted from
  the traced jaxpr (``args`` may be ``jax.ShapeDtypeStruct``s: nothing runs)."""
  return 2 * _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def _network_inputs(config, network: str, batch: int) -> tuple:
  r, f32 = int(config.resolution), jnp.float32
  image = jax.ShapeDtypeStruct((batch, r, r, 3), f32)
  semantic = jax.ShapeDtypeStruct((batch, r, r, int(config.num_classes)), f32)
  if network == 'generator':
    return image, semantic, jax.ShapeDtypeStruct((batch, int(config.identity_dim)), f32)
  if network == 'discriminator':
    return image, semantic
  return (image,)


def build_networks(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The generator, discriminator and identity network a config describes, in float32."""
  config = config.copy_and_resolve_references()
  config.dtype = 'float32'
  networks = networks_lib.Networks(config)
  return {name: getattr(networks, name) for name in ('generator', 'discriminator', 'identity')}


def _authors_kind(network: str, module) -> bool:
  if network == 'generator':
    return isinstance(module, generator_lib.AuthorsGenerator)
  if network == 'discriminator':
    return isinstance(module, discriminator_lib.GlobalDiscriminator)
  return getattr(module, 'stem', None) == 'cifar'


def network_flops(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Per network: forward GFLOP per image, trainable parameters and the authors' figures.

  Nothing is compiled or run: variables come from ``jax.eval_shape`` and FLOPs from the
  traced / lowered inference-mode forward, so this takes seconds on a CPU.

  ``gflop_per_image`` follows the convention that reproduces the authors' figures (41.2,
  7.8 and 17.8 GFLOP at 128 px): convolutions and dense layers only, a multiply-add counts
  2 FLOP, and every kernel tap counts, those over zero padding included (output elements x
  kernel area x input channels per group). It is the count at batch 2 minus the count at
  batch 1, which drops the work that does not depend on the batch (spectral norm's power
  iteration on the weights). ``xla_gflop`` is XLA's cost analysis of the lowered batch-1
  forward (``_flops``), for comparison: it also counts elementwise work and the power
  iteration, but skips the taps over zero padding, so it reads lower for the zero-padded
  generator and identity network (40.4 and 17.2) and higher for the reflect-padded
  discriminator (7.9). ``authors_gflop`` / ``authors_params`` are given at 128 px for the
  authors' kinds of network only (``AuthorsGenerator``, ``GlobalDiscriminator``, the
  CIFAR-stem identity net), else None.
  """
  config = config.copy_and_resolve_references()
  rows = []
  for network, module in build_networks(config).items():
    forward = lambda variables, *inputs, module=module: module.apply(variables, *inputs)
    inputs1 = _network_inputs(config, network, 1)
    variables = jax.eval_shape(
      lambda *a, module=module: module.init(jax.random.key(0), *a), *inputs1
    )
    per_image = conv_dense_flops(
      forward, variables, *_network_inputs(config, network, 2)
    ) - conv_dense_flops(forward, variables, *inputs1)
    xla = _flops(jax.jit(forward).lower(variables, *inputs1))
    authors = (
      AUTHORS_FIGURES[network]
      if int(config.resolution) == 128 and _authors_kind(network, module)
      else (None, None)
    )
    rows.append(
      dict(
        network=network,
        resolution=int(config.resolution),
        gflop_per_image=per_image / 1e9,
        params=count_params(variables),
        xla_gflop=xla / 1e9 if xla else None,
        authors_gflop=authors[0],
        authors_params=authors[1],
      )
    )
  return rows


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


def summarize_trace(path: str, top: int = 15) -> list[dict[str, Any]]:
  """Per timeline of a profiler trace (``.xplane.pb``): events, busy time, span and the
  ``top`` names by total time.

  On a GPU the timelines are the device's streams and XLA-op lines, so busy time over span
  says how much of a step the device computes rather than waits for launches, and the top
  names say which kernels the time goes to. A CPU trace has only host threads: those whose
  name mentions XLA are kept, and their events nest (an executor's event holds its
  fusions'), so there busy time can exceed the span.
  """
  from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel

  data = ProfileData.from_file(path)
  planes = [p for p in data.planes if p.name.startswith('/device:')]
  host_only = not planes
  if host_only:
    planes = [p for p in data.planes if p.name == '/host:CPU']
  timelines = []
  for plane in planes:
    for line in plane.lines:
      if host_only and 'XLA' not in line.name:
        continue
      events = [e for e in line.events if e.duration_ns > 0]
      if not events:
        continue
      totals = collections.defaultdict(lambda: [0.0, 0])
      for e in events:
        totals[e.name][0] += e.duration_ns
        totals[e.name][1] += 1
      busy = sum(t for t, _ in totals.values())
      span = max(e.end_ns for e in events) - min(e.start_ns for e in events)
      ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
      timelines.append(
        {
          'plane': plane.name,
          'line': line.name,
          'events': len(events),
          'busy_ms': busy / 1e6,
          'span_ms': span / 1e6,
          'top': [
            {'name': n[:120], 'ms': t / 1e6, 'count': c, 'share': t / busy} for n, (t, c) in ranked
          ],
        }
      )
  return timelines


def profile(call: Callable[[], Any], steps: int, trace_dir: str, top: int = 15) -> dict[str, Any]:
  """Traces ``steps`` warm calls with ``jax.profiler`` and summarises the trace
  (``summarize_trace``); the raw ``.xplane.pb`` stays in ``trace_dir`` for TensorBoard or
  xprof."""
  jax.block_until_ready(call())
  with jax.profiler.trace(trace_dir):
    out = None
    for _ in range(steps):
      out = call()
    jax.block_until_ready(out)
  traces = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)
  if not traces:
    raise FileNotFoundError(f'jax.profiler wrote no .xplane.pb under {trace_dir}')
  path = max(traces, key=os.path.getmtime)
  return {'trace': path, 'profiled_steps': steps, 'timelines': summarize_trace(path, top)}


def _try_profile(call, profile_dir: str) -> dict[str, Any]:
  """``{'profile': ...}``, or ``{'profile_error': ...}``: a profiler that fails (no CUPTI,
  say) must not cost the timing already measured."""
  try:
    return {'profile': profile(call, 3, profile_dir)}
  except Exception as error:  # pylint: disable=broad-except
    return {'profile_error': repr(error)[:500]}


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
  with ``profile_dir``, also a kernel-level profile of 3 more steps (``profile``)."""
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
    extra.update(_try_profile(call, profile_dir))
  return _summary(
    name, config, batch_size, step_s, compile_s, _flops(lowered), _memory(compiled), extra
  )


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
  kernel-level profile of 3 more calls (``profile``)."""
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
    extra.update(_try_profile(call, profile_dir))
  return _summary(
    name, config, batch_size, step_s, compile_s, _flops(lowered), _memory(compiled), extra
  )


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
