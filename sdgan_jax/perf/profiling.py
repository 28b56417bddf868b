"""Kernel-level profiles of a jitted call (``tools/benchmark.py --profile_dir``,
docs/performance.md): ``profile`` traces warm calls with ``jax.profiler`` and
``summarize_trace`` says, per device timeline, how busy it was and which kernels took the
time."""

from __future__ import annotations

import collections
import glob
import os
from collections.abc import Callable
from typing import Any

import jax


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


def try_profile(call, profile_dir: str) -> dict[str, Any]:
  """``{'profile': ...}``, or ``{'profile_error': ...}``: a profiler that fails (no CUPTI,
  say) must not cost the timing already measured."""
  try:
    return {'profile': profile(call, 3, profile_dir)}
  except Exception as error:  # pylint: disable=broad-except
    return {'profile_error': repr(error)[:500]}
