"""Resuming a Beam run: the batches whose files a previous run of the same options
finished are not redone (``SkipFinished``), and ``prepare_output`` marks the output prefix
as this run's (``.sdgan_beam/run.json``) and clears what a killed run left. docs/scale.md,
"Resumable", describes the rules.
"""

from __future__ import annotations

import dataclasses
import json
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from sdgan_jax import media
from sdgan_jax.anonymize.beam_inputs import Source
from sdgan_jax.anonymize.beam_spec import (
  COUNTERS,
  RunSpec,
  exists,
  is_local,
  read_json,
  write_atomic,
)


class SkipFinished(beam.DoFn):
  """Batches whose files are all finished (matching records and outputs) to ``done`` as
  their rows; the others to ``todo`` whole (a batch is redone as the CLI made it)."""

  def __init__(self, spec: RunSpec):
    self._spec = spec
    self._fingerprint = spec.fingerprint()
    self._resumed = Metrics.counter(COUNTERS, 'resumed')

  def process(self, batch: list[Source]):
    spec = self._spec
    media_files = [s for s in batch if s.kind in ('image', 'video')]
    if not media_files:
      yield batch  # skipped and error rows cost nothing to redo
      return
    if not spec.overwrite:
      records = [self._finished(s) for s in media_files]
      if all(r is not None for r in records):
        self._resumed.inc(len(records))
        for record in records:
          yield beam.pvalue.TaggedOutput('done', record['row'])
        return
      if not spec.resume:  # never replace a file that is not this run's
        taken = [s for s in media_files if exists(spec.dest(s.rel))]
        for source in taken:
          yield beam.pvalue.TaggedOutput(
            'done',
            {
              'input': source.url,
              'status': 'error',
              'error': (
                f'not written: {spec.dest(source.rel)} already exists: pass --overwrite to '
                'replace existing outputs, or choose another --output'
              ),
            },
          )
        batch = [s for s in batch if s not in taken]
        if not batch:
          return
    yield batch

  def _finished(self, source: Source) -> dict | None:
    """The record of ``source`` if it was finished under these options, its output there."""
    path = self._spec.record(source.rel)
    try:
      record = read_json(path) if exists(path) else None
    except (OSError, ValueError):
      return None  # unreadable: redo the file
    if not record or record.get('fingerprint') != self._fingerprint:
      return None
    row = record.get('row', {})
    if row.get('input') != source.url or row.get('status') not in ('ok', 'skipped'):
      return None  # errors are retried
    if row.get('status') == 'ok' and not all(
      exists(p) for p in (row.get('output'), row.get('visualization')) if p
    ):
      return None
    return record


def prepare_output(spec: RunSpec) -> None:
  """Marks the output as this run's, and removes what a killed run left: its temporary
  files (local outputs) and the row shards of an earlier run (their count may differ)."""
  write_atomic(
    spec.run_record,
    json.dumps(
      {
        'fingerprint': spec.fingerprint(),
        'options': dataclasses.asdict(spec.options),
        'checkpoint': spec.checkpoint,
        'step': spec.step,
        'baseline': spec.baseline,
        'visualize': spec.visualize,
      },
      default=str,
    ).encode('utf-8'),
  )
  if is_local(spec.output):
    for folder, _, _ in os.walk(spec.output):
      media.remove_stale_temporaries(folder)
  for pattern in (spec.rows_prefix + '-*-of-*.jsonl', spec.rows_prefix + '.errors-*-of-*.jsonl'):
    old = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if old:
      FileSystems.delete(old)
