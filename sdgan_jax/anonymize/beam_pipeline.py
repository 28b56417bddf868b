"""Anonymizing a whole dataset on Apache Beam: the CLI's anonymizer on any Beam runner.

One pipeline runs on a laptop (DirectRunner) and on a cluster (Dataflow, Flink, Spark;
docs/scale.md). It is built from the CLI's own pieces: each worker loads one
``FaceAnonymizer`` (``build_anonymizer``) in ``DoFn.setup`` and runs its batches through a
``runner.Runner`` (``Runner.process_jobs``), so detection, the face stages, the identity
re-check, the fail-closed fallback, the writers and the per-file report rows are the CLI's.

The stages (each a labelled transform):

1. ``MatchInputs``: each input (a file, a folder or a file pattern, through Beam's
   filesystems: local paths, ``gs://``, ``s3://``) -> the files it names, each with its path
   under the output prefix: relative to the pattern's folder, as the CLI mirrors a folder
   (several inputs: under the folder's name). ``OneSourcePerOutput`` keeps one input per
   output path: another that would land there ends as an error row.
2. ``CliBatches``: the CLI's batches across files: its photos in its order,
   ``images_per_batch`` consecutive ones together (their faces share generator and
   identity-check batches); a video is one element (its tracks never cross workers). Not
   ``BatchElements``' batches: a photo's output can differ by one level in a few pixels with
   the photos it shares a generator batch with (XLA's rounding), so the CLI's batches
   give the CLI's bytes, on any runner and any number of workers. The file list is
   gathered on one worker to order it (about 100 bytes a file).
3. ``SkipFinished``: resuming. Every finished file has a record under
   ``OUTPUT/.sdgan_beam/rows/`` (its report row and the options' fingerprint), written
   after its output. Without ``overwrite``, a batch whose files all have records matching
   the options and their outputs is not redone: their rows are reused; any other batch is
   redone whole. An output that exists without a record is never replaced, unless the
   output prefix holds this run (its ``.sdgan_beam/run.json`` matches the options: a killed
   run's output) or ``overwrite``.
4. ``Anonymize``: the CLI's ``Runner``: each output written atomically (a temporary name,
   then a rename; object stores publish an object whole), and exactly one report row per
   input: 'ok', 'skipped' or 'error' with the reason. A batch whose run raises anyway is
   redone one file at a time, and a file that still raises ends as an error row.
5. ``WriteRows``: the rows as JSON-lines shards beside the summary
   (``anonymize_report-SSSSS-of-NNNNN.jsonl``), the error rows again apart (the
   dead-letter output, ``anonymize_report.errors-*.jsonl``), and ``WriteSummary``: the
   summary (``anonymize_report.json``) with the CLI report's totals
   (``report.file_totals``), summed over the workers.

Beam metrics (namespace ``sdgan_anonymize``): ``files``, ``faces``, ``fallbacks``,
``errors`` and ``resumed``. Only this module imports ``apache_beam`` (``pip install
sdgan_jax[beam]``); ``tools/anonymize_beam.py`` is its command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import posixpath
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from sdgan_jax import media
from sdgan_jax.anonymize import cli as anonymize_cli
from sdgan_jax.anonymize import jobs as anonymize_jobs
from sdgan_jax.anonymize import report as run_report
from sdgan_jax.anonymize.anonymizer import FaceAnonymizer, build_anonymizer
from sdgan_jax.anonymize.jobs import InputError, Job
from sdgan_jax.anonymize.options import Options
from sdgan_jax.anonymize.runner import Runner

STATE_DIR = '.sdgan_beam'  # under the output prefix: run.json and rows/
COUNTERS = 'sdgan_anonymize'
_GLOB = frozenset('*?[')


def _local(path: str) -> bool:
  return FileSystems.get_scheme(path) is None


def _join(prefix: str, rel: str) -> str:
  return FileSystems.join(prefix, *rel.split('/')) if rel else prefix


def _exists(path: str) -> bool:
  return FileSystems.exists(path)


def _read_json(path: str):
  with FileSystems.open(path, compression_type='uncompressed') as f:
    return json.loads(f.read().decode('utf-8'))


def _write_atomic(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` whole or not at all: locally a temporary name then a
  rename (``media.atomic_path``); an object store shows an object once it is complete."""
  if _local(path):
    with media.atomic_path(path) as tmp:
      tmp.write_bytes(data)
  else:
    with FileSystems.create(path, compression_type='uncompressed') as f:
      f.write(data)


@dataclasses.dataclass(frozen=True)
class Source:
  """One input file and its path (``/``-separated) under the output prefix."""

  url: str
  rel: str
  kind: str | None  # 'image', 'video', None (skipped) or 'error'
  reason: str | None = None  # why skipped or an error
  input: int = 0  # which input (in the command line's order) named it


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What a worker needs to know of the run (pickled into the ``DoFn``s)."""

  output: str
  report: str  # the summary's path; the row shards go beside it
  options: Options
  checkpoint: str | None = None
  step: int | None = None
  baseline: str | None = None
  weights_dir: str | None = None
  visualize: bool = False
  overwrite: bool = False
  resume: bool = False  # the output prefix holds this run (``run.json`` matches)
  compilation_cache: str | None = None

  def fingerprint(self) -> str:
    """What an output depends on: a finished file is reused only under the same one."""
    fields = {
      'options': dataclasses.asdict(self.options),
      'checkpoint': self.checkpoint,
      'step': self.step,
      'baseline': self.baseline,
      'visualize': self.visualize,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]

  @property
  def method(self) -> str:
    return f'baseline:{self.baseline}' if self.baseline else 'sdgan'

  def dest(self, rel: str) -> str:
    return _join(self.output, rel)

  def record(self, rel: str) -> str:
    """The finished file's record (its report row), named by its output path."""
    digest = hashlib.sha256(rel.encode('utf-8', 'surrogateescape')).hexdigest()[:24]
    return _join(self.output, f'{STATE_DIR}/rows/{digest[:2]}/{digest}.json')

  @property
  def run_record(self) -> str:
    return _join(self.output, f'{STATE_DIR}/run.json')

  @property
  def rows_prefix(self) -> str:
    return self.report[: -len('.json')] if self.report.endswith('.json') else self.report

  def load(self) -> FaceAnonymizer:
    return build_anonymizer(
      self.checkpoint,
      baseline=self.baseline,
      options=self.options,
      weights_dir=self.weights_dir,
      step=self.step,
    )


# -- 1. inputs


def expand_inputs(inputs: Sequence[str]) -> list[tuple[str, str, str, int]]:
  """(pattern, its folder, the prefix of its outputs, its index) per input: a pattern's
  folder is the part before its first wildcard; a folder is every file under it; a file
  is itself."""
  out = []
  for index, raw in enumerate(inputs):
    raw = str(raw)
    if _GLOB & set(raw):
      cut = min(raw.index(c) for c in _GLOB if c in raw)
      base = raw[:cut].rsplit('/', 1)[0]
      pattern, is_file = raw, False
    elif os.path.isdir(raw) if _local(raw) else not _exists(raw):
      base = raw.rstrip('/') or '/'
      pattern, is_file = _join(base, '**'), False
    else:
      base, pattern, is_file = os.path.dirname(raw), raw, True
    # The CLI's layout: one folder is mirrored into the output itself, several each into a
    # subfolder of its name; files named as inputs go to the top.
    prefix = '' if is_file or len(inputs) == 1 else base.rstrip('/').rsplit('/', 1)[-1]
    out.append((pattern, base, prefix, index))
  return out


def match_input(item: tuple[str, str, str, int], visualize: bool) -> Iterable[Source]:
  """The files of one input; hidden files and folders, other types: skipped rows."""
  pattern, base, prefix, index = item
  result = FileSystems.match([pattern])[0]
  if not result.metadata_list:
    yield Source(
      pattern,
      prefix or os.path.basename(pattern),
      'error',
      f'input {pattern} matches no file',
      index,
    )
  for meta in result.metadata_list:
    path = meta.path
    rel = (
      path[len(base) :].lstrip('/') if base and path.startswith(base) else (path.rsplit('/', 1)[-1])
    )
    if media.TEMP_PATTERN.match(rel.rsplit('/', 1)[-1]):
      continue  # a killed run's temporary file, not an input
    parts = rel.split('/')
    hidden = next((k for k, part in enumerate(parts[:-1]) if part.startswith('.')), None)
    if hidden is not None:  # one row for the folder, as the CLI's (``OneSourcePerOutput``)
      folder = '/'.join(parts[: hidden + 1])
      yield Source(
        path[: len(path) - len(rel)] + folder,
        '/'.join(filter(None, [prefix, folder])),
        None,
        'hidden folder (its name starts with a dot): not searched; rename it '
        'or give it as an input to include it',
        index,
      )
      continue
    rel = '/'.join(filter(None, [prefix, rel]))
    job = anonymize_jobs._file_job(pathlib.Path(path), pathlib.Path(rel), visualize)  # pylint: disable=protected-access
    yield Source(path, rel, job.kind, job.reason, index)


def one_per_output(item: tuple[str, Iterable[Source]]) -> Iterable[Source]:
  """The first (by name) of the inputs that would land on one output; the others: errors."""
  rel, sources = item
  sources = sorted(set(sources), key=lambda s: s.url)
  yield sources[0]
  for other in sources[1:]:
    yield dataclasses.replace(
      other,
      kind='error',
      reason=(
        f'{other.url} and {sources[0].url} would both be written to {rel}: give them '
        'separately or rename one'
      ),
    )


def cli_order(source: Source, index: int) -> tuple:
  """Where the CLI takes ``source`` up (``jobs.plan_jobs``): input by input; in a folder,
  its files by name before its subfolders (``os.walk`` top-down, sorted)."""
  *folders, name = source.rel.split('/')
  return (index, *((1, d) for d in folders), (0, name))


def cli_batches(sources: list[Source], images_per_batch: int) -> Iterable[list[Source]]:
  """The CLI's batches: photos in its order, ``images_per_batch`` consecutive ones
  together (``Runner``); a video (one track never crosses workers), a skipped file or an
  error alone. A photo's output can differ by a level in a few pixels with the photos it
  shares its generator batches with (XLA's rounding), so the batches are the CLI's: the
  same bytes as the CLI, for any runner and any number of workers."""
  ordered = sorted(sources, key=lambda s: cli_order(s, s.input))
  photos = [s for s in ordered if s.kind == 'image']
  for lo in range(0, len(photos), images_per_batch):
    yield photos[lo : lo + images_per_batch]
  for source in ordered:
    if source.kind != 'image':
      yield [source]


# -- 2. resuming


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
        taken = [s for s in media_files if _exists(spec.dest(s.rel))]
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
      record = _read_json(path) if _exists(path) else None
    except (OSError, ValueError):
      return None  # unreadable: redo the file
    if not record or record.get('fingerprint') != self._fingerprint:
      return None
    row = record.get('row', {})
    if row.get('input') != source.url or row.get('status') not in ('ok', 'skipped'):
      return None  # errors are retried
    if row.get('status') == 'ok' and not all(
      _exists(p) for p in (row.get('output'), row.get('visualization')) if p
    ):
      return None
    return record


# -- 4. anonymizing


class AnonymizeFiles(beam.DoFn):
  """Anonymizes a batch of files with the CLI's ``Runner``; yields one report row each.

  Args:
    spec: the run.
    load: makes the worker's ``FaceAnonymizer`` (default ``spec.load``: the CLI's
      ``build_anonymizer``); called once per worker, in ``setup``.
  """

  def __init__(self, spec: RunSpec, load: Callable[[], FaceAnonymizer] | None = None):
    self._spec = spec
    self._load = load
    self._fingerprint = spec.fingerprint()
    self._counters = {
      name: Metrics.counter(COUNTERS, name) for name in ('files', 'faces', 'fallbacks', 'errors')
    }
    self._runner = None
    self._scratch = None

  def setup(self):
    if self._spec.compilation_cache is not None:
      from sdgan_jax.perf import compile_cache  # pylint: disable=import-outside-toplevel

      compile_cache.enable(self._spec.compilation_cache)
    anonymizer = (self._load or self._spec.load)()
    self._runner = Runner(
      anonymizer, self._spec.output, visualize=self._spec.visualize, progress=False, replace=True
    )
    self._scratch = pathlib.Path(tempfile.mkdtemp(prefix='sdgan_beam_'))

  def teardown(self):
    if self._scratch is not None:
      shutil.rmtree(self._scratch, ignore_errors=True)

  def process(self, batch: Sequence[Source]):
    batch = list(batch)
    for source, row in self._rows(batch):
      self._finish(source, row)
      yield row

  def _rows(self, batch: list[Source]) -> list[tuple[Source, dict]]:
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
        entries = {e['input']: e for e in self._runner.process_jobs(jobs)}
      except Exception as e:  # pylint: disable=broad-except
        if len(staged) > 1:
          return rows + [pair for source, _ in staged for pair in self._rows([source])]
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
    if not _local(source.url):
      local_src = work / 'in' / source.rel.rsplit('/', 1)[-1]
      local_src.parent.mkdir(parents=True)
      with (
        FileSystems.open(source.url, compression_type='uncompressed') as f,
        open(local_src, 'wb') as out,
      ):
        shutil.copyfileobj(f, out)
      name = source.url
    local_dest = (
      pathlib.Path(dest) if _local(dest) else work / 'out' / source.rel.rsplit('/', 1)[-1]
    )
    job = anonymize_jobs._job(local_src, local_dest, source.kind, self._spec.visualize)  # pylint: disable=protected-access
    return dataclasses.replace(job, name=name)

  def _publish(self, source: Source, job: Job, row: dict) -> dict:
    """A remote output copied to its URL (whole objects); the row names the URLs."""
    dest = self._spec.dest(source.rel)
    if _local(dest) or 'output' not in row:
      return row
    row = dict(row)
    try:
      for key, local in (('output', job.dest), ('visualization', job.visualization)):
        if key in row and local is not None:
          url = (
            dest
            if key == 'output'
            else _join(self._spec.output, posixpath.join(posixpath.dirname(source.rel), local.name))
          )
          _write_atomic(url, local.read_bytes())
          row[key] = url
    except Exception as e:  # pylint: disable=broad-except
      row.pop('output', None)
      row.update(status='error', error=f'writing failed: {type(e).__name__}: {e}')
    return row

  def _finish(self, source: Source, row: dict) -> None:
    """Records a finished file (after its output: resuming trusts the record) and counts."""
    runner = self._runner
    if source.kind in ('image', 'video') and row['status'] != 'error':
      record = {
        'fingerprint': self._fingerprint,
        'method': runner.anonymizer.method,
        'semantic_maps': runner.anonymizer.semantic_maps,
        'row': row,
      }
      _write_atomic(self._spec.record(source.rel), json.dumps(record).encode('utf-8'))
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


# -- 5. the report


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


def _write_summary(_, fresh, resumed, spec: RunSpec, start: float, inputs: Sequence[str]):
  shards = [spec.rows_prefix + '-*-of-*.jsonl', spec.rows_prefix + '.errors-*-of-*.jsonl']
  report = summary(fresh, resumed, spec, start=start, inputs=inputs, shards=shards)
  report['semantic_maps'] = _semantic_maps(spec)
  _write_atomic(spec.report, (json.dumps(report, indent=1) + '\n').encode('utf-8'))
  yield report


def build(
  pipeline: beam.Pipeline,
  spec: RunSpec,
  inputs: Sequence[str],
  *,
  load: Callable[[], FaceAnonymizer] | None = None,
  start: float | None = None,
):
  """Adds the anonymizing transforms (module doc) to ``pipeline``; returns the summary's
  PCollection."""
  start = time.time() if start is None else start
  sources = (
    pipeline
    | 'Inputs' >> beam.Create(expand_inputs(inputs))
    | 'MatchInputs' >> beam.FlatMap(match_input, spec.visualize)
    | 'KeyByOutput' >> beam.Map(lambda s: (s.rel, s))
    | 'GroupByOutput' >> beam.GroupByKey()
    | 'OneSourcePerOutput' >> beam.FlatMap(one_per_output)
  )
  groups = (
    sources
    | 'AllSources' >> beam.combiners.ToList()
    | 'CliBatches' >> beam.FlatMap(cli_batches, spec.options.images_per_batch)
  )
  split = groups | 'SkipFinished' >> beam.ParDo(SkipFinished(spec)).with_outputs(
    'done', main='todo'
  )
  batches = split.todo | 'Spread' >> beam.Reshuffle()
  fresh = batches | 'Anonymize' >> beam.ParDo(AnonymizeFiles(spec, load))
  rows = (fresh, split.done) | 'AllRows' >> beam.Flatten()
  (
    rows
    | 'RowsToJson' >> beam.Map(json.dumps)
    | 'WriteRows' >> beam.io.WriteToText(spec.rows_prefix, file_name_suffix='.jsonl')
  )
  (
    rows
    | 'ErrorRows' >> beam.Filter(lambda r: r['status'] == 'error')
    | 'ErrorsToJson' >> beam.Map(json.dumps)
    | 'WriteErrors' >> beam.io.WriteToText(spec.rows_prefix + '.errors', file_name_suffix='.jsonl')
  )
  fresh_totals = fresh | 'FreshTotals' >> beam.CombineGlobally(TotalsFn())
  resumed_totals = split.done | 'ResumedTotals' >> beam.CombineGlobally(TotalsFn())
  return (
    pipeline
    | 'Once' >> beam.Create([None])
    | 'WriteSummary'
    >> beam.ParDo(
      _write_summary,
      beam.pvalue.AsSingleton(fresh_totals),
      beam.pvalue.AsSingleton(resumed_totals),
      spec=spec,
      start=start,
      inputs=list(inputs),
    )
  )


def _semantic_maps(spec: RunSpec) -> str | None:
  """The report's ``semantic_maps`` of the model (``FaceAnonymizer.semantic_maps``) from
  its workdir's record, without loading it."""
  if spec.baseline is not None:
    return None
  from sdgan_jax import semantic_source  # pylint: disable=import-outside-toplevel

  return semantic_source.read_record(spec.checkpoint).label


# -- the command line


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
  """The CLI's flags (``cli.build_parser``) plus the runner's; Beam's own pipeline options
  (``--project``, ``--region``, ``--num_workers``...) pass through."""
  parser = anonymize_cli.build_parser(prog)
  parser.description = __doc__
  group = parser.add_argument_group('Apache Beam (other Beam pipeline options pass through)')
  group.add_argument(
    '--runner',
    default='DirectRunner',
    help='Beam runner: DirectRunner (this machine), DataflowRunner, '
    'FlinkRunner, SparkRunner... (docs/scale.md)',
  )
  return parser


def parse_args(argv=None, prog: str | None = None) -> tuple[argparse.Namespace, list[str]]:
  """(the CLI's flags, checked by the CLI's ``check_args``; Beam's pipeline options)."""
  parser = build_parser(prog)
  args, beam_args = parser.parse_known_args(argv)
  return anonymize_cli.check_args(parser, args), beam_args


def run_spec(args: argparse.Namespace) -> RunSpec:
  """The run of checked flags; refuses (``InputError``) an output inside an input, a
  missing checkpoint, and an output holding a run with other options (unless
  ``--overwrite``). Sets ``resume`` when the output holds this run."""
  output = str(args.output)
  if not args.baseline and args.runner == 'DirectRunner':  # elsewhere, the workers' path
    _check_checkpoint(args.checkpoint)
  for pattern, base, _, _ in expand_inputs(args.inputs):
    base = base.rstrip('/')
    if _local(output) and _local(base):
      inside = pathlib.Path(output).absolute().resolve().is_relative_to(
        pathlib.Path(base or '.').absolute().resolve()
      ) and not (os.path.isfile(pattern) and not _GLOB & set(pattern))
    else:
      inside = (output.rstrip('/') + '/').startswith(base + '/')
    if inside:
      raise InputError(
        f'the output {output} is inside the input {pattern}: outputs would '
        'mix with (and on a re-run be read as) the inputs; choose an --output '
        'outside it'
      )
  report = str(args.report) if args.report else _join(output, anonymize_jobs.REPORT_NAME)
  spec = RunSpec(
    output=output,
    report=report,
    options=args.options,
    checkpoint=args.checkpoint,
    step=args.step,
    baseline=args.baseline,
    weights_dir=args.weights_dir,
    visualize=args.visualize,
    overwrite=args.overwrite,
    compilation_cache=args.compilation_cache,
  )
  previous = _read_json(spec.run_record) if _exists(spec.run_record) else None
  if previous is not None and previous.get('fingerprint') != spec.fingerprint():
    if not args.overwrite:
      raise InputError(
        f'{output} holds a run with other options ({spec.run_record}): pass '
        '--overwrite to redo every file with these, or choose another --output'
      )
  return dataclasses.replace(spec, resume=previous is not None and not args.overwrite)


def _check_checkpoint(checkpoint) -> None:
  """The CLI's checkpoint check (a missing workdir names the training command)."""
  from sdgan_jax.anonymize import anonymizer  # pylint: disable=import-outside-toplevel

  anonymizer._checked_workdir(checkpoint)  # pylint: disable=protected-access


def _prepare_output(spec: RunSpec) -> None:
  """Marks the output as this run's, and removes what a killed run left: its temporary
  files (local outputs) and the row shards of an earlier run (their count may differ)."""
  _write_atomic(
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
  if _local(spec.output):
    for folder, _, _ in os.walk(spec.output):
      media.remove_stale_temporaries(folder)
  for pattern in (spec.rows_prefix + '-*-of-*.jsonl', spec.rows_prefix + '.errors-*-of-*.jsonl'):
    old = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if old:
      FileSystems.delete(old)


def run(
  args: argparse.Namespace,
  beam_args: Sequence[str],
  *,
  load: Callable[[], FaceAnonymizer] | None = None,
) -> dict:
  """Runs the pipeline to its end; returns the summary (also written to ``--report``)."""
  spec = run_spec(args)
  lock = None
  if _local(spec.output):  # a second run into it is refused, as the CLI's
    os.makedirs(spec.output, exist_ok=True)
    try:
      lock = media.FolderLock(pathlib.Path(spec.output).absolute().resolve()).acquire()
    except media.FolderBusyError as e:
      raise InputError(f'{e.strerror} (--output {spec.output})') from None
  try:
    _prepare_output(spec)
    options = PipelineOptions(list(beam_args) + [f'--runner={args.runner}'])
    start = time.time()
    with beam.Pipeline(options=options) as pipeline:
      build(pipeline, spec, args.inputs, load=load, start=start)
  finally:
    if lock is not None:
      lock.release()
  return _read_json(spec.report)


def main(argv=None, prog: str | None = None) -> int:
  """The command line (``tools/anonymize_beam.py``); returns the exit status."""
  args, beam_args = parse_args(argv, prog)
  if not args.options.identity_check:
    print(f'warning: {run_report.IDENTITY_CHECK_OFF}', file=sys.stderr)
  try:
    report = run(args, beam_args)
  except (InputError, FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  totals = report['totals']
  print(
    f'{anonymize_cli.summary_line(totals)}; {report["resumed"]} finished before '
    f'(resumed); rows: {report["rows"][0]}; errors: {report["rows"][1]}; '
    f'report: {anonymize_cli.printable(report["report"])}'
  )
  return 1 if totals['errors'] else 0
