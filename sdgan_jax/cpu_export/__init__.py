"""CPU inference on TensorFlow's oneDNN kernels: bfloat16 on the matrix units where the CPU
has them (AMX-BF16, AVX512-BF16), XLA elsewhere (docs/cpu_inference.md).

XLA's CPU backend does not reach the matrix units, so in bfloat16 it ran the generator
slower than in float32 (issue 31). Here a network's traced program is written out as
TensorFlow ops (``lowering``) and saved, cached by checksum (``artefact``); oneDNN runs
its convolutions and matrix products in bfloat16 on those cores.

Which path runs is chosen per network kind at run time (``route``) from the requested
backend (``set_backend``; the anonymizer's ``--cpu_backend``; ``$SDGAN_CPU_BACKEND``):

* ``auto`` (default): the generator on TensorFlow in bfloat16 when ``/proc/cpuinfo`` lists
  ``amx_bf16`` or ``avx512_bf16``; else, and for the detectors (BlazeFace, the face mesh)
  always, XLA in float32. On the AVX2-only development CPU TensorFlow's float32 ran the
  authors' generator and BlazeFace slower than XLA (BENCHMARKS.md), and the detectors'
  time goes to element-wise work (their depthwise convolutions are slices and products)
  that matrix units do not speed up.
* ``xla``: today's path for every network.
* ``tf_float32`` / ``tf_bfloat16``: every network on TensorFlow in that precision.

Only CPUs: on an accelerator every network stays on XLA. The identity re-check (dlib's
ResNet, ``anonymize.identity_check``) never comes here: it stays float32 on XLA.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

BACKENDS = ('auto', 'xla', 'tf_float32', 'tf_bfloat16')
KINDS = ('generator', 'detector')
# The network kinds ``auto`` moves to TensorFlow bfloat16 on CPUs with bf16 matrix units.
AUTO_TF_KINDS = ('generator',)
MATRIX_FLAGS = ('amx_bf16', 'avx512_bf16')
ENV = 'SDGAN_CPU_BACKEND'

_state = {'backend': None}
_used: dict[str, str] = {}
_lock = threading.Lock()


def check_backend(name: str) -> str:
  if name not in BACKENDS:
    raise ValueError(f'cpu_backend must be one of {", ".join(BACKENDS)}, got {name!r}')
  return name


def set_backend(name: str) -> None:
  """The backend the networks built from now on use (``BACKENDS``)."""
  _state['backend'] = check_backend(name)


def backend() -> str:
  """The requested backend: ``set_backend``'s, else ``$SDGAN_CPU_BACKEND``, else xla."""
  return _state['backend'] or check_backend(os.environ.get(ENV) or 'xla')


@functools.cache
def cpu_flags(path: str = '/proc/cpuinfo') -> frozenset[str]:
  """The first processor's flags in ``path`` (empty where there is no such file)."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith('flags'):
          return frozenset(line.split(':', 1)[1].split())
  except OSError:
    pass
  return frozenset()


def cpu_name(path: str = '/proc/cpuinfo') -> str:
  try:
    with open(path) as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return 'unknown CPU'


def has_bf16_matrix_units(flags=None) -> bool:
  """Whether the CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
  flags = cpu_flags() if flags is None else flags
  return any(f in flags for f in MATRIX_FLAGS)


def route(
  kind: str, requested: str | None = None, flags=None, platform: str | None = None
) -> tuple[str, str]:
  """``(runtime, precision)`` for a network of ``kind``: ('xla', 'float32'), or ('tf',
  'float32' | 'bfloat16')."""
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  if platform is None:
    import jax  # pylint: disable=import-outside-toplevel

    platform = jax.default_backend()
  requested = check_backend(requested or backend())
  if platform != 'cpu' or requested == 'xla':
    return 'xla', 'float32'
  if requested == 'auto':
    if kind in AUTO_TF_KINDS and has_bf16_matrix_units(flags):
      return 'tf', 'bfloat16'
    return 'xla', 'float32'
  return 'tf', requested.split('_', 1)[1]


def describe() -> dict:
  """For the run's report: the CPU, the requested backend and the path each network took."""
  return {
    'requested': backend(),
    'cpu': cpu_name(),
    'bf16_matrix_units': has_bf16_matrix_units(),
    'networks': dict(_used),
  }


class Network:
  """``network(*weights, *inputs)``, on the path ``route`` chooses for its kind.

  ``jitted`` is the XLA program (a ``jax.jit`` function) whose first ``num_weights``
  arguments are weights. On the TensorFlow path it is exported (``artefact.export``) for
  the weights and input shapes of its first call, again for new ones; a network the
  lowering cannot write stays on XLA, with a warning.
  """

  def __init__(self, name: str, kind: str, jitted: Callable, num_weights: int = 1):
    self.name = name
    self.jitted = jitted
    self.num_weights = num_weights
    self.runtime, self.precision = route(kind)
    self._exports: dict = {}
    self._lock = threading.Lock()
    self._note(f'{self.runtime} {self.precision}')

  def _note(self, text: str) -> None:
    with _lock:
      _used[self.name] = text

  def __call__(self, *args):
    if self.runtime == 'xla':
      return self.jitted(*args)
    weights, inputs = args[: self.num_weights], args[self.num_weights :]
    exported = self._exported(weights, inputs)
    return self.jitted(*args) if exported is None else exported(*inputs)

  def _exported(self, weights, inputs):
    import numpy as np  # pylint: disable=import-outside-toplevel

    key = (
      tuple(id(w) for w in weights),
      tuple((np.shape(x), str(np.asarray(x).dtype)) for x in inputs),
    )
    with self._lock:
      if key not in self._exports:
        self._exports[key] = self._export(weights, inputs)
      return self._exports[key]

  def _export(self, weights, inputs):
    from sdgan_jax.cpu_export import artefact, lowering  # pylint: disable=import-outside-toplevel

    plain = getattr(self.jitted, '__wrapped__', self.jitted)
    try:
      return artefact.export(
        lambda w, *x: plain(*w, *x),
        tuple(weights),
        inputs,
        precision=self.precision,
        name=self.name,
      )
    except lowering.UnsupportedPrimitive as e:
      logging.warning('%s stays on XLA: %s', self.name, e)
      self.runtime, self.precision = 'xla', 'float32'
      self._note(f'xla float32 ({e})')
      return None


def network(name: str, kind: str, jitted: Callable, num_weights: int = 1) -> Callable:
  """``jitted`` itself where XLA runs it, else a ``Network`` on TensorFlow."""
  net = Network(name, kind, jitted, num_weights)
  return jitted if net.runtime == 'xla' else net


def used() -> dict[str, Any]:
  """Network name -> the path it took in this process ('xla float32', 'tf bfloat16')."""
  return dict(_used)
