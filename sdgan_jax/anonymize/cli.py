"""Anonymize every face in photos and videos (paper §3: crop, de-identify, paste back).

  python -m sdgan_jax.anonymize INPUT... --output DIR --checkpoint WORKDIR
  python -m sdgan_jax.anonymize photos/ clip.mp4 --output anon/ --checkpoint workdirs/demo
  python -m sdgan_jax.anonymize photos/ --output anon/ --baseline pixelate   # no model needed

(Also `sdgan-anonymize` once installed, and `python tools/anonymize.py` in a source checkout.)

INPUT: image files (JPEG, PNG, WebP, GIF, TIFF; every frame of an animated GIF, APNG or
WebP and every page of a TIFF, timing and loop kept), folders (recursive; the tree is
mirrored under DIR; hidden files, links to folders, other types and dangling links are
reported) and videos
(mp4, mov, m4v, mkv, avi, webm; audio kept where the container takes it).
WORKDIR is a training workdir (`python run.py ... --workdir=WORKDIR`; `make demo` makes
workdirs/demo). A model trained on a face parser's semantic maps (`prepare_data.py
--parser`; WORKDIR/semantic_maps.json names the parser) gets that parser's maps of the
aligned faces (EAGRNet, paper §3.2); --parser PARSER_WORKDIR gives its workdir when it has
moved (the weights must be the recorded ones). The report's "semantic_maps" says which
maps were used.

Detection: by default two BlazeFace networks (MediaPipe's short- and full-range models,
converted by `make weights`) over tile pyramids that find faces from ~20 px to the whole
frame, tilted or turned; their detections are merged and the report says which detector
found each face. A face no detector finds cannot be covered: lower --detect_min_face_px
or a --detector_threshold for crowds of tiny faces (a threshold outside the detector's
score range is refused). The summary and the report list the files in which no face was
found: they are written unchanged, so check them.

Fail closed: a detected face that cannot be anonymized -- too small, landmarks failed, the
mask misses it, the generator failed, or its output still matches the source person under
the dlib ResNet descriptor (distance below --identity_threshold) -- is covered by the
fallback (coarse pixelation or a solid fill) and reported. --no_identity_check turns
that last check off (the report and the console warn). Inputs are never overwritten, nor
are existing outputs unless --overwrite is given, and no two outputs (nor the report) share
a path: all checked, with the folders' writability, before the work starts. Outputs are
written atomically, upright (EXIF orientation applied) and without EXIF, GPS or XMP
metadata, never over a file that appeared during the run (without --overwrite). A run
locks DIR: a second run into it (or above or below it) is refused; this tool's temporary
files a killed run left are removed by the next run. Unreadable files
are reported and the run goes on. The JSON report (DIR/anonymize_report.json) lists per
file the faces found, anonymized, covered, errors, notes on conversions and time; Ctrl-C
stops the run and writes the report of the files finished. Exit status: 0 when every file
was processed, 1 when some failed (or the report could not be written), 2 on bad
arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys

from sdgan_jax.anonymize import cli_flags
from sdgan_jax.anonymize.folder_run import anonymize_paths
from sdgan_jax.anonymize.jobs import InputError, check_not_busy, plan_jobs
from sdgan_jax.anonymize.loading import build_anonymizer
from sdgan_jax.anonymize.report import IDENTITY_CHECK_OFF
from sdgan_jax.anonymize.runner import Interrupted, ReportWriteError
from sdgan_jax.perf import compile_cache


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
  """The command line's flags; their defaults are ``Options``' (``options.defaults``)."""
  parser = argparse.ArgumentParser(
    prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  cli_flags.add_flags(parser)
  return parser


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
  """The flags, with ``args.options`` (``Options``); bad ones are usage errors (exit 2)."""
  parser = build_parser(prog)
  return cli_flags.check_args(parser, parser.parse_args(argv))


def _run(args: argparse.Namespace) -> dict:
  """Checks the paths, loads the model, runs; returns the report."""
  # Check the paths (outputs, report, writability) before the (slow) model load.
  jobs = plan_jobs(
    args.inputs,
    args.output,
    visualize=args.visualize,
    overwrite=args.overwrite,
    report_path=args.report,
  )
  check_not_busy(args.output, jobs)  # another run writing there: refused before the load
  anonymizer = build_anonymizer(
    args.checkpoint,
    baseline=args.baseline,
    options=args.options,
    weights_dir=args.weights_dir,
    step=args.step,
  )
  return anonymize_paths(
    args.inputs,
    args.output,
    anonymizer,
    report_path=args.report,
    visualize=args.visualize,
    progress=not args.no_progress,
    overwrite=args.overwrite,
    images_per_batch=args.options.images_per_batch,
    frames_per_batch=args.options.frames_per_batch,
  )


# The "no face found" files printed at most; the report lists them all.
MAX_NO_FACE_LINES = 20


def summary_line(totals: dict) -> str:
  """The run's last line: its report's totals."""
  return (
    f'{totals["files"]} files: {totals["faces_found"]} faces found, '
    f'{totals["anonymized"]} anonymized, {totals["fallbacks"]} covered by the fallback; '
    f'{totals["no_face_found"]} with no face found (written unchanged: check them); '
    f'{totals["errors"]} errors, {totals["skipped"]} skipped; '
    f'{totals["images_per_s"]:.2f} images/s, {totals["faces_per_s"]:.2f} faces/s'
  )


def _print_summary(report: dict) -> None:
  print(summary_line(report['totals']))
  no_face = report['no_face_found']
  for path in no_face[:MAX_NO_FACE_LINES]:
    print(f'  no face found: {printable(path)}')
  if len(no_face) > MAX_NO_FACE_LINES:
    print(
      f'  ... and {len(no_face) - MAX_NO_FACE_LINES} more with no face found (the '
      'report\'s "no_face_found" lists them all)'
    )
  for entry in report['files']:
    if entry['status'] != 'ok':
      print(
        f'  {entry["status"]}: {printable(entry["input"])}: {printable(entry.get("error", ""))}',
        file=sys.stderr,
      )
  print(f'report: {printable(report["report"])}')


def printable(text: str) -> str:
  """``text`` with the bytes of a file name that is not UTF-8 (surrogate escapes) shown as
  backslash escapes: printing them as they are would raise."""
  return str(text).encode('utf-8', 'backslashreplace').decode('utf-8')


def main(argv=None, prog: str | None = None) -> int:
  """The command line (module doc); returns the exit status."""
  args = parse_args(argv, prog)
  compile_cache.enable(args.compilation_cache)
  if not args.options.identity_check:
    print(f'warning: {IDENTITY_CHECK_OFF}', file=sys.stderr)
  try:
    report = _run(args)
  except Interrupted as e:
    done = sum(f['status'] != 'skipped' for f in e.report['files'])
    where = e.report_error or f'report: {e.report["report"]}'
    left = len(e.report.get('unfinished', []))
    print(
      f'interrupted: {done} file{"s" * (done != 1)} finished, {left} not started or not '
      f'finished (run again with --overwrite to redo them all); {where}',
      file=sys.stderr,
    )
    return 130
  except KeyboardInterrupt:
    print('interrupted before any file was processed: nothing was written', file=sys.stderr)
    return 130
  except ReportWriteError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except (InputError, FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  _print_summary(report)
  return 1 if report['totals']['errors'] else 0
