"""The XLA compiler options this project sets, and where; each one was chosen by measurement.

Options go to single programs (``jax.jit(..., compiler_options=...)``), never to the whole
process. An option that ``$XLA_FLAGS`` sets is left to it (a user's or the test suite's
explicit flag wins), and one this XLA build does not know is dropped, so that another jaxlib
compiles with its own defaults instead of failing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import numpy as np

# Initialisers run once, so their compile is all that counts: XLA at -O0 compiles the demo's
# state initialiser much faster and it still runs fast. Almost all of that program is
# random-number kernels.
INIT = {'xla_backend_optimization_level': 0}

# XLA's CPU backend hands dots, convolutions and reductions to YNNPACK by default (jaxlib
# 0.10.2). Its convolutions ran our networks slower than XLA's own (Eigen) ones, so CPU
# programs of networks keep YNNPACK for dots and reductions only.
CPU_NETWORKS = {
  'xla_cpu_experimental_ynn_fusion_type': (
    'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'
  )
}

# A train step runs thousands of times, so it keeps optimised code, but on CPUs LLVM's -O1
# compiles the demo's step faster than XLA's default level and the step runs as fast.
# Accelerators keep their default.
CPU_STEP = {'xla_backend_optimization_level': 1, **CPU_NETWORKS}

# No YNNPACK at all: its fusion of BlazeFace's blocks ran them slower and, on jaxlib 0.10,
# computed them wrong (docs/detection.md).
CPU_NO_YNNPACK = {'xla_cpu_experimental_ynn_fusion_type': ''}


def unless_in_xla_flags(options: dict) -> dict | None:
  """``options`` less those that ``$XLA_FLAGS`` sets: a user's (or the test suite's)
  explicit flag wins over the defaults chosen here."""
  flags = os.environ.get('XLA_FLAGS', '')
  kept = {k: v for k, v in options.items() if f'--{k}=' not in flags}
  return kept or None


@functools.cache
def known(name: str, value) -> bool:
  """Whether this XLA build compiles with option ``name`` set to ``value`` (one tiny
  compile per option, once per process)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={name: value})(np.zeros(1, np.float32))
  except Exception:  # pylint: disable=broad-except  # XLA raises a generic runtime error
    return False
  return True


def for_platform(platform: str, cpu: dict) -> dict | None:
  """``cpu`` for programs on CPUs (none elsewhere), less the options that ``$XLA_FLAGS``
  sets or this XLA build does not know; None when nothing is left."""
  chosen = (unless_in_xla_flags(cpu) if platform == 'cpu' else None) or {}
  return {k: v for k, v in chosen.items() if known(k, v)} or None


def jit_network(fn: Callable, cpu_options: dict = CPU_NETWORKS, **jit_kwargs) -> Callable:
  """``jax.jit`` for a program of network passes on the default backend: on CPUs compiled
  with ``cpu_options`` (``for_platform``)."""
  return jax.jit(
    fn, compiler_options=for_platform(jax.default_backend(), cpu_options), **jit_kwargs
  )
