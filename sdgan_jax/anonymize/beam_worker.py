"""The Beam pipeline's workers: ``AnonymizeFiles`` anonymizes batches of files with the
CLI's ``Runner`` on the worker's ``FaceAnonymizer`` and yields one report row per file
(docs/scale.md, "What it does, and what it guarantees").
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from sdgan_jax.anonymize import jobs as anonymize_jobs
from sdgan_jax.anonymize.anonymizer import FaceAnonymizer
from sdgan_jax.anonymize.beam_inputs import Source
from sdgan_jax.anonymize.beam_spec import COUNTERS, RunSpec, is_local, join, write_atomic
from sdgan_jax.anonymize.jobs import Job
from sdgan_jax.anonymize.runner import Runner
from sdgan_jax.perf import compile_cache


class _WorkerRunner:
  """A worker process's ``Runner`` of one run (and so its model), shared through Beam's
  ``Shared`` by every copy of the run's ``AnonymizeFiles``: a runner makes one copy per
  thread or bundle processor, and each would otherwise load the model and compile its
  programs again. A plain class: ``Shared`` holds it by weak reference."""

  def __init__(self, runner: Runner):
    self.runner = runner
    self.lock = threading.Lock()  # one batch at a time through the model


class AnonymizeFiles(beam.DoFn):
  """Anonymizes a batch of files with the CLI's ``Runner``; yields one report row each.

  Args:
    spec: the run.
    load: makes the worker's ``FaceAnonymizer`` (default ``spec.load``: the CLI's
      ``build_anonymizer``); called once per worker process, at its first batch (a worker
      given no batch loads nothing, leaving the cores to those that work), and shared by
      the process's threads one batch at a time. Beam's ``Shared`` keeps the process's
      last runner alive after its copies are torn down (a runner that starts new
      threads for new work items gets it back without loading again); a later run in
      the same process releases it: at most one idle model per process.
  """

  def __init__(self, spec: RunSpec, load: Callable[[], FaceAnonymizer] | None = None):
    self._spec = spec
    self._load = load
    self._fingerprint = spec.fingerprint()
    self._counters = {
      name: Metrics.counter(COUNTERS, name) for name in ('files', 'faces', 'fallbacks', 'errors')
    }
    self._shared = shared.Shared()  # pickled with the DoFn: one key for all its copies
    self._worker: _WorkerRunner | None = None
    self._scratch = None

  def setup(self):
    self._scratch = pathlib.Path(tempfile.mkdtemp(prefix='sdgan_beam_'))

  def teardown(self):
    self._worker = None  # Shared decides when the model goes (class doc)
    if self._scratch is not None:
      shutil.rmtree(self._scratch, ignore_errors=True)

  def _make_worker(self) -> _WorkerRunner:
    # As the CLI: the persistent compilation cache (None: the default folder; '': off), so
    # a worker loads the programs a previous run (or the CLI) compiled.
    compile_cache.enable(self._spec.compilation_cache)
    anonymizer = (self._load or self._spec.load)()
    return _WorkerRunner(
      Runner(
        anonymizer, self._spec.output, visualize=self._spec.visualize, progress=False, replace=True
      )
    )

  def process(self, batch: Sequence[Source]):
    if self._worker is None:  # the first batch of this copy: the process's runner
      self._worker = self._shared.acquire(self._make_worker)
    worker = self._worker
    with worker.lock:
      rows = self._rows(worker.runner, list(batch))
      for source, row in rows:
        self._finish(worker.runner, source, row)
    yield from (row for _, row in rows)

  def _rows(self, runner: Runner, batch: list[Source]) -> list[tuple[Source, dict]]:
    """(source, report row) per source: the batch together; if that raises, one by one."""
    work = pathlib.Path(tempfile.mkdtemp(dir=self._scratch))
    try:
      rows, staged = [], []
      for k, source in enumerate(batch):
        try:
          staged.append((source, self._job(source, work / str(k))))
        except Exception as e:  # pylint: disable=broad-except  (a remote file unreadable)
          rows.append((source, _error_row(source, e)))
      jobs = [job for _, job in staged]
      try:
        entries = {e['input']: e for e in runner.process_jobs(jobs)}
      except Exception as e:  # pylint: disable=broad-except
        if len(staged) > 1:
          return rows + [pair for source, _ in staged for pair in self._rows(runner, [source])]
        entries = {job.key(): _error_row(source, e) for source, job in staged}
      for source, job in staged:
        row = entries.get(job.key()) or _error_row(
          source, RuntimeError('the run returned no row for this file')
        )
        rows.append((source, self._publish(source, job, row)))
      return rows
    finally:
      shutil.rmtree(work, ignore_errors=True)

  def _job(self, source: Source, work: pathlib.Path) -> Job:
    """The CLI's job of ``source``; a remote file is read from (and written to) a local
    copy, named in the report by its URL."""
    dest = self._spec.dest(source.rel)
    if source.kind not in ('image', 'video'):
      return Job(pathlib.Path(source.url), pathlib.Path(dest), source.kind, reason=source.reason)
    local_src = pathlib.Path(source.url)
    name = None
    if not is_local(source.url):
      local_src = work / 'in' / source.rel.rsplit('/', 1)[-1]
      local_src.parent.mkdir(parents=True)
      with (
        FileSystems.open(source.url, compression_type='uncompressed') as f,
        open(local_src, 'wb') as out,
      ):
        shutil.copyfileobj(f, out)
      name = source.url
    local_dest = (
      pathlib.Path(dest) if is_local(dest) else work / 'out' / source.rel.rsplit('/', 1)[-1]
    )
    job = anonymize_jobs._job(local_src, local_dest, source.kind, self._spec.visualize)  # pylint: disable=protected-access
    return dataclasses.replace(job, name=name)

  def _publish(self, source: Source, job: Job, row: dict) -> dict:
    """A remote output copied to its URL (whole objects); the row names the URLs."""
    dest = self._spec.dest(source.rel)
    if is_local(dest) or 'output' not in row:
      return row
    row = dict(row)
    try:
      for key, local in (('output', job.dest), ('visualization', job.visualization)):
        if key in row and local is not None:
          url = (
            dest
            if key == 'output'
            else join(self._spec.output, posixpath.join(posixpath.dirname(source.rel), local.name))
          )
          write_atomic(url, local.read_bytes())
          row[key] = url
    except Exception as e:  # pylint: disable=broad-except
      row.pop('output', None)
      row.update(status='error', error=f'writing failed: {type(e).__name__}: {e}')
    return row

  def _finish(self, runner: Runner, source: Source, row: dict) -> None:
    """Records a finished file (after its output: resuming trusts the record) and counts."""
    if source.kind in ('image', 'video') and row['status'] != 'error':
      record = {
        'fingerprint': self._fingerprint,
        'method': runner.anonymizer.method,
        'semantic_maps': runner.anonymizer.semantic_maps,
        'row': row,
      }
      write_atomic(self._spec.record(source.rel), json.dumps(record).encode('utf-8'))
    self._counters['files'].inc()
    self._counters['faces'].inc(row.get('faces_found', 0))
    self._counters['fallbacks'].inc(row.get('fallbacks', 0))
    if row['status'] == 'error':
      self._counters['errors'].inc()


def _error_row(source: Source, error: Exception) -> dict:
  """The row of a file whose work raised outside the ``Runner``'s own handling."""
  return {
    'input': source.url,
    'kind': source.kind,
    'status': 'error',
    'error': f'{type(error).__name__}: {error}',
  }
