"""The Beam run's summary (``anonymize_report.json``): the CLI report's fields, and its
totals (``report.file_totals``) summed over the workers' rows (``TotalsFn``); the rows
themselves are in the JSON-lines shards beside it (docs/scale.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Sequence

import apache_beam as beam

from sdgan_jax.anonymize import report as run_report
from sdgan_jax.anonymize.beam_spec import RunSpec, write_atomic


class TotalsFn(beam.CombineFn):
  """``report.file_totals`` summed over the rows."""

  def create_accumulator(self):
    return {}

  def add_input(self, acc, row):
    for key, value in run_report.file_totals([row]).items():
      acc[key] = acc.get(key, 0) + value
    return acc

  def merge_accumulators(self, accumulators):
    out = {}
    for acc in accumulators:
      for key, value in acc.items():
        out[key] = out.get(key, 0) + value
    return out

  def extract_output(self, acc):
    return {**run_report.file_totals([]), **acc}


def summary(
  fresh: dict,
  resumed: dict,
  spec: RunSpec,
  *,
  start: float,
  inputs: Sequence[str],
  shards: Sequence[str],
) -> dict:
  """The run's summary: the CLI report's fields and totals, its rows in ``shards``; rates
  over the files done in this run (``resumed``: the files a previous run finished)."""
  counts = {k: fresh.get(k, 0) + resumed.get(k, 0) for k in run_report.file_totals([])}
  seconds = time.time() - start
  totals = run_report.finish_totals(counts, seconds)
  rates = run_report.finish_totals(fresh, seconds)
  for key in ('images_per_s', 'faces_per_s'):
    totals[key] = rates[key]
  warnings = [] if spec.options.identity_check else [run_report.IDENTITY_CHECK_OFF]
  return {
    'tool': 'sdgan_jax.anonymize',
    'runner': 'beam',
    'method': spec.method,
    'created': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'options': dataclasses.asdict(spec.options),
    'warnings': warnings,
    'totals': totals,
    'resumed': resumed.get('files', 0),
    'inputs': list(inputs),
    'output_dir': spec.output,
    'overwrite': spec.overwrite,
    'report': spec.report,
    'rows': list(shards),
  }


def write_summary(_, fresh, resumed, spec: RunSpec, start: float, inputs: Sequence[str]):
  shards = [spec.rows_prefix + '-*-of-*.jsonl', spec.rows_prefix + '.errors-*-of-*.jsonl']
  report = summary(fresh, resumed, spec, start=start, inputs=inputs, shards=shards)
  report['semantic_maps'] = _semantic_maps(spec)
  write_atomic(spec.report, (json.dumps(report, indent=1) + '\n').encode('utf-8'))
  yield report


def _semantic_maps(spec: RunSpec) -> str | None:
  """The report's ``semantic_maps`` of the model (``FaceAnonymizer.semantic_maps``) from
  its workdir's record, without loading it."""
  if spec.baseline is not None:
    return None
  from sdgan_jax import semantic_source  # pylint: disable=import-outside-toplevel

  return semantic_source.read_record(spec.checkpoint).label
