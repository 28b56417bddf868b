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
``errors`` and ``resumed``. Only this module and its stages' modules import
``apache_beam`` (``pip install sdgan_jax[beam]``): ``beam_spec`` (the run, its state and
file access), ``beam_inputs`` (stages 1 and 2), ``beam_resume`` (3), ``beam_worker`` (4)
and ``beam_summary`` (5). ``tools/anonymize_beam.py`` is its command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from sdgan_jax import media
from sdgan_jax.anonymize import cli as anonymize_cli
from sdgan_jax.anonymize import cli_flags
from sdgan_jax.anonymize import jobs as anonymize_jobs
from sdgan_jax.anonymize import report as run_report
from sdgan_jax.anonymize.beam_inputs import (
  GLOB,
  cli_batches,
  expand_inputs,
  match_input,
  one_per_output,
)
from sdgan_jax.anonymize.beam_resume import SkipFinished, prepare_output
from sdgan_jax.anonymize.beam_spec import RunSpec, exists, is_local, join, read_json
from sdgan_jax.anonymize.beam_summary import TotalsFn, write_summary
from sdgan_jax.anonymize.beam_worker import AnonymizeFiles
from sdgan_jax.anonymize.jobs import InputError

if TYPE_CHECKING:
  from sdgan_jax.anonymize.anonymizer import FaceAnonymizer


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
      write_summary,
      beam.pvalue.AsSingleton(fresh_totals),
      beam.pvalue.AsSingleton(resumed_totals),
      spec=spec,
      start=start,
      inputs=list(inputs),
    )
  )


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
  return cli_flags.check_args(parser, args), beam_args


def run_spec(args: argparse.Namespace) -> RunSpec:
  """The run of checked flags; refuses (``InputError``) an output inside an input, a
  missing checkpoint, and an output holding a run with other options (unless
  ``--overwrite``). Sets ``resume`` when the output holds this run."""
  output = str(args.output)
  if not args.baseline and args.runner == 'DirectRunner':  # elsewhere, the workers' path
    _check_checkpoint(args.checkpoint)
  for pattern, base, _, _ in expand_inputs(args.inputs):
    base = base.rstrip('/')
    if is_local(output) and is_local(base):
      inside = pathlib.Path(output).absolute().resolve().is_relative_to(
        pathlib.Path(base or '.').absolute().resolve()
      ) and not (os.path.isfile(pattern) and not GLOB & set(pattern))
    else:
      inside = (output.rstrip('/') + '/').startswith(base + '/')
    if inside:
      raise InputError(
        f'the output {output} is inside the input {pattern}: outputs would '
        'mix with (and on a re-run be read as) the inputs; choose an --output '
        'outside it'
      )
  report = str(args.report) if args.report else join(output, anonymize_jobs.REPORT_NAME)
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
  previous = read_json(spec.run_record) if exists(spec.run_record) else None
  if previous is not None and previous.get('fingerprint') != spec.fingerprint():
    if not args.overwrite:
      raise InputError(
        f'{output} holds a run with other options ({spec.run_record}): pass '
        '--overwrite to redo every file with these, or choose another --output'
      )
  return dataclasses.replace(spec, resume=previous is not None and not args.overwrite)


def _check_checkpoint(checkpoint) -> None:
  """The CLI's checkpoint check (a missing workdir names the training command)."""
  from sdgan_jax.anonymize import loading  # pylint: disable=import-outside-toplevel

  loading.check_workdir(checkpoint)


def run(
  args: argparse.Namespace,
  beam_args: Sequence[str],
  *,
  load: Callable[[], FaceAnonymizer] | None = None,
) -> dict:
  """Runs the pipeline to its end; returns the summary (also written to ``--report``)."""
  spec = run_spec(args)
  lock = None
  if is_local(spec.output):  # a second run into it is refused, as the CLI's
    os.makedirs(spec.output, exist_ok=True)
    try:
      lock = media.FolderLock(pathlib.Path(spec.output).absolute().resolve()).acquire()
    except media.FolderBusyError as e:
      raise InputError(f'{e.strerror} (--output {spec.output})') from None
  try:
    prepare_output(spec)
    options = PipelineOptions(list(beam_args) + [f'--runner={args.runner}'])
    start = time.time()
    with beam.Pipeline(options=options) as pipeline:
      build(pipeline, spec, args.inputs, load=load, start=start)
  finally:
    if lock is not None:
      lock.release()
  return read_json(spec.report)


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
