"""Shared test set-up: CPU only, full-precision float32 matmuls, cheap XLA compiles.

Compilation, not execution, dominates these small-shape tests on a 2-core CPU, so the
suite (and only the suite) trades generated-code speed for compile speed: LLVM at -O0 and
JAX's non-partitionable threefry sampler, whose per-shape compile is several times cheaper.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
jax.config.update('jax_threefry_partitionable', False)
