"""Compiling the train step for a GPU this host does not have (``tools/benchmark.py
--compile_for``).

XLA compiles for a described GPU without one ("deviceless" ahead-of-time compilation): with
JAX's CUDA plugin installed (``pip install 'jax[cuda12]'``, no driver needed), a CPU host
builds the very program a GPU would run (``compile_only_mesh``) and reports its compile time
and XLA's buffer assignment. What it cannot do is autotune: on a GPU, XLA also times
candidate cuDNN and Triton kernels for every convolution and matmul, so a GPU's compile takes
this compile's time (on its own host CPU) plus the autotuning.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from sdgan_jax import networks as networks_lib
from sdgan_jax import train_step
from sdgan_jax.perf import benchmarking

# The GPUs' facts that XLA's GPU compiler reads (its GpuTargetConfig proto). H100 SXM and
# H200 are the same GH100 chip (compute capability 9.0, 132 SMs, 50 MiB L2, 228 KiB shared
# memory per SM of which 227 KiB per block on request, 64 Ki registers per SM) with
# different memories (nvidia-smi's totals; XLA uses memory size and bandwidth only in cost
# and scheduling heuristics). CUDA 12.9 and cuDNN 9.28 are what the CUDA-12 wheels of JAX
# 0.10 install.
GPU_TARGETS = {
  'h100': {'name': 'NVIDIA H100 80GB HBM3', 'memory_mib': 81559, 'bandwidth_gbs': 3352},
  'h200': {'name': 'NVIDIA H200', 'memory_mib': 143771, 'bandwidth_gbs': 4800},
}
_GH100 = {
  'threads_per_block_limit': 1024,
  'threads_per_warp': 32,
  'shared_memory_per_block': 48 * 1024,
  'shared_memory_per_core': 228 * 1024,
  'shared_memory_per_block_optin': 227 * 1024,
  'threads_per_core_limit': 2048,
  'core_count': 132,
  'fpus_per_core': 128,
  'block_dim_limit_x': 2**31 - 1,
  'block_dim_limit_y': 65535,
  'block_dim_limit_z': 65535,
  'l2_cache_size': 50 * 2**20,
  'clock_rate_ghz': 1.98,
  'registers_per_core_limit': 65536,
  'registers_per_block_limit': 65536,
}
_CUDA, _CUDNN = (12, 9), (9, 28)


def gpu_target_config(target: str) -> str:
  """XLA's ``GpuTargetConfig`` (text proto) of ``target``, a key of ``GPU_TARGETS``."""
  if target not in GPU_TARGETS:
    raise ValueError(f'unknown GPU target {target!r}: choose from {sorted(GPU_TARGETS)}')
  facts = GPU_TARGETS[target]
  info = dict(
    _GH100,
    device_memory_size=facts['memory_mib'] * 2**20,
    memory_bandwidth=facts['bandwidth_gbs'] * 10**9,
  )
  fields = '\n'.join(f'  {k}: {v}' for k, v in info.items())
  return (
    f'gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 minor: 0 }}\n}}\n'
    f'runtime_version {{ major: {_CUDA[0]} minor: {_CUDA[1]} }}\n'
    f'dnn_version_info {{ major: {_CUDNN[0]} minor: {_CUDNN[1]} }}\n'
    f'platform_name: "CUDA"\ndevice_description_str: "{facts["name"]}"\n'
  )


def compile_only_mesh(target: str) -> jax.sharding.Mesh:
  """A one-device 'data' mesh of a compile-only ``target`` GPU (programs lowered for it
  compile but cannot run)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

  config = gpu_target_config(target)
  try:
    topology = topologies.get_topology_desc('', 'cuda', target_config=config, topology='1x1x1')
  except (NotImplementedError, RuntimeError) as error:
    raise RuntimeError(
      f"compiling for the {target} target without its GPU needs JAX's CUDA plugin: pip install "
      f'"jax[cuda12]=={jax.__version__}" (no GPU or driver needed; run with '
      f'JAX_PLATFORMS=cpu). JAX said: {error}'
    ) from error
  return jax.sharding.Mesh(
    np.array(topology.devices), ('data',), axis_types=(jax.sharding.AxisType.Auto,)
  )


def compile_train_step(
  config: ml_collections.ConfigDict,
  batch_size: int,
  mesh: jax.sharding.Mesh,
  name: str = 'train_step_compile',
) -> dict[str, Any]:
  """Traces, lowers and compiles the train step for ``mesh``'s devices (they need not be
  this host's) on abstract inputs, and returns the times and the program's size: XLA's
  buffer assignment in bytes, its fusions (about one GPU kernel each) and its convolutions.
  """
  config = config.copy_and_resolve_references()
  config.train.batch_size = batch_size
  networks = networks_lib.Networks(config)
  state = jax.eval_shape(
    lambda key: train_step.create_train_state(networks, key), jax.random.key(0)
  )
  batch = jax.tree_util.tree_map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), benchmarking.train_batch(config, batch_size)
  )
  device = mesh.devices.flat[0]
  benchmarking.phase(
    name, f'lowering for {device.device_kind} (batch {batch_size}, {config.dtype})'
  )
  start = time.perf_counter()
  lowered = train_step.jit_train_step(networks, mesh).lower(state, batch)
  lowered_at = time.perf_counter()
  benchmarking.phase(name, 'compiling')
  compiled = lowered.compile()
  done = time.perf_counter()
  program, lowered_text = compiled.as_text(), lowered.as_text()
  memory = compiled.memory_analysis()
  return dict(
    bench=name,
    target=device.device_kind,
    platform=device.platform,
    compiled_on=f'{os.cpu_count()}-core host',
    jax=jax.__version__,
    date=datetime.date.today().isoformat(),
    dtype=config.dtype,
    batch=batch_size,
    resolution=int(config.resolution),
    identity_dim=int(config.identity_dim),
    generator=dict(config.model.generator).get('preset', 'paper'),
    trace_lower_s=lowered_at - start,
    compile_s=done - lowered_at,
    program_bytes=benchmarking.program_bytes(memory),
    argument_bytes=int(memory.argument_size_in_bytes),
    fusions=program.count(' fusion('),
    convolutions=lowered_text.count('stablehlo.convolution'),
    while_loops=lowered_text.count('stablehlo.while'),
  )
