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

from sdgan_jax import cpu_export
from sdgan_jax.anonymize.anonymizer import build_anonymizer
from sdgan_jax.anonymize.jobs import REPORT_NAME, InputError, check_not_busy, plan_jobs
from sdgan_jax.anonymize.options import (
  BASELINES,
  FALLBACK_BLOCKS,
  FALLBACKS,
  LANDMARK_SOURCES,
  MAX_AUTO_WORKERS,
  MAX_DETECT_MIN_FACE_PX,
  TARGET_MODES,
  Options,
  defaults,
)
from sdgan_jax.anonymize.report import IDENTITY_CHECK_OFF
from sdgan_jax.anonymize.runner import Interrupted, ReportWriteError, anonymize_paths
from sdgan_jax.faces import ensemble
from sdgan_jax.perf import compile_cache

# ``Options`` fields set by the flag of the same name: their errors name the flag.
SAME_NAME_OPTIONS = (
  'target',
  'seed',
  'fallback',
  'fallback_blocks',
  'min_face_px',
  'detect_min_face_px',
  'upsample',
  'track_cover_frames',
  'keep_exif',
  'quality',
  'workers',
  'batch_size',
  'images_per_batch',
  'frames_per_batch',
  'verify_faces',
  'presence_threshold',
  'landmarks',
  'cpu_backend',
)
DEFAULTS = defaults()


def _add_model_flags(parser) -> None:
  parser.add_argument(
    '--checkpoint',
    metavar='WORKDIR',
    help='training workdir with config.json and checkpoints/ (make demo: workdirs/demo)',
  )
  parser.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  parser.add_argument(
    '--parser',
    metavar='PARSER_WORKDIR',
    help='the face parser (EAGRNet workdir) of a model trained on parser '
    'maps, if not where WORKDIR/semantic_maps.json says (same weights)',
  )
  parser.add_argument(
    '--baseline',
    choices=sorted(BASELINES),
    help='run a classic method instead of the generator, on the same '
    'detection path: blur (Gaussian 17x17), pixelate (8x8 blocks), mask '
    '(solid fill); needs no checkpoint',
  )
  parser.add_argument(
    '--target',
    choices=TARGET_MODES,
    default=DEFAULTS['target'],
    help='target identity from the identity bank: seeded (the same for a '
    'file, face and --seed), random, or farthest from the source face',
  )
  parser.add_argument('--seed', type=int, default=DEFAULTS['seed'])
  parser.add_argument(
    '--batch_size',
    type=int,
    default=DEFAULTS['batch_size'],
    help='faces per generator call (default: 8 on CPU, 64 on accelerators)',
  )
  parser.add_argument(
    '--weights_dir',
    help='converted weights (default: $SDGAN_WEIGHTS_DIR or '
    '~/.cache/sdgan_jax/weights; `make weights` fills it)',
  )


def _add_check_flags(parser) -> None:
  parser.add_argument(
    '--fallback',
    choices=FALLBACKS,
    default=DEFAULTS['fallback'],
    help='cover for faces that cannot be anonymized',
  )
  parser.add_argument(
    '--fallback_blocks',
    type=int,
    default=DEFAULTS['fallback_blocks'],
    help='pixelation blocks across the fallback region, '
    f'{FALLBACK_BLOCKS[0]}-{FALLBACK_BLOCKS[1]}; a pixelated face that still '
    'matches its source is pixelated coarser, then filled',
  )
  parser.add_argument(
    '--identity_threshold',
    type=float,
    default=DEFAULTS['identity_threshold'],
    help='an output face whose dlib ResNet descriptor is closer than this to '
    "the source face's gets the fallback (dlib's same-person convention: "
    '%(default)s; higher is stricter; must be > 0: turn the check off with '
    '--no_identity_check)',
  )
  parser.add_argument(
    '--no_identity_check',
    action='store_true',
    help='do not re-check the output faces against the source person '
    '(faster, needs no dlib ResNet weights; the report warns)',
  )
  parser.add_argument(
    '--min_face_px',
    type=float,
    default=DEFAULTS['min_face_px'],
    help='faces with a smaller detection box get the fallback',
  )
  parser.add_argument(
    '--track_cover_frames',
    type=int,
    default=DEFAULTS['track_cover_frames'],
    help='videos: a tracked face no detector finds in a frame is covered '
    'there when it was seen within this many frames before or after '
    '(0: off)',
  )


def _add_detection_flags(parser) -> None:
  parser.add_argument(
    '--detectors',
    default=','.join(DEFAULTS['detectors']),
    help='face detectors, comma-separated, whose detections are merged: '
    f'{", ".join(ensemble.DETECTORS)} (default: both BlazeFace networks, '
    "chosen by measured recall; hog/cnn are dlib's)",
  )
  parser.add_argument(
    '--detector_threshold',
    action='append',
    default=[],
    metavar='NAME=SCORE',
    help='score threshold of one detector, e.g. blazeface_short_range=0.5 '
    '(lower finds more faces and more false ones; BlazeFace: between 0 '
    "and 1, dlib's: -1 to 2); repeatable",
  )
  parser.add_argument(
    '--detect_min_face_px',
    type=float,
    default=DEFAULTS['detect_min_face_px'],
    help='smallest face width (px) the BlazeFace detectors look for; '
    f'smaller is slower; at most {MAX_DETECT_MIN_FACE_PX:g}',
  )
  parser.add_argument(
    '--upsample',
    type=int,
    default=DEFAULTS['upsample'],
    help="dlib detectors' upsampling: each step finds 2x smaller faces, ~4x slower",
  )
  parser.add_argument(
    '--no_verify_faces',
    dest='verify_faces',
    action='store_false',
    help='keep every candidate of the detectors: no second stage by the '
    'face mesh (more generated faces on hands, clothes and seats)',
  )
  parser.add_argument(
    '--presence_threshold',
    type=float,
    default=DEFAULTS['presence_threshold'],
    help="the face mesh's presence score (0-1) from which a candidate is a "
    'face; lower keeps more candidates',
  )
  parser.add_argument(
    '--landmarks',
    choices=LANDMARK_SOURCES,
    default=DEFAULTS['landmarks'],
    help="where each face's 68 points come from: the face mesh (any pose) "
    "or dlib's shape predictor",
  )


def _add_run_flags(parser) -> None:
  parser.add_argument(
    '--images_per_batch',
    type=int,
    default=DEFAULTS['images_per_batch'],
    help='photos detected in parallel and whose faces are generated together',
  )
  parser.add_argument(
    '--frames_per_batch',
    type=int,
    default=DEFAULTS['frames_per_batch'],
    help='video frames whose faces are generated together',
  )
  parser.add_argument(
    '--workers',
    type=int,
    default=DEFAULTS['workers'],
    help='threads detecting and pasting back the faces of different photos '
    'or frames at once '
    f'(default %(default)s: one per CPU core, at most {MAX_AUTO_WORKERS})',
  )
  parser.add_argument(
    '--cpu_backend',
    choices=cpu_export.BACKENDS,
    default=DEFAULTS['cpu_backend'],
    help='on CPUs: xla (default: every network on XLA), auto (the generator in bfloat16 on '
    'TensorFlow where the CPU has AMX-BF16 or AVX512-BF16, else XLA), '
    'tf_float32 or tf_bfloat16 (every network on TensorFlow); the report '
    'says which ran',
  )
  parser.add_argument(
    '--keep_exif',
    action='store_true',
    default=DEFAULTS['keep_exif'],
    help='copy EXIF (camera, date) to the outputs; GPS and the orientation '
    'tag are still removed, XMP is never copied',
  )
  parser.add_argument('--quality', type=int, default=DEFAULTS['quality'], help='JPEG/WebP quality')
  parser.add_argument(
    '--visualize',
    action='store_true',
    help='also write NAME.detections.png: the output with each detection '
    'drawn (green: anonymized, red: fallback and why); photos only',
  )
  parser.add_argument(
    '--report',
    help=f'JSON report path (default: DIR/{REPORT_NAME}); never an input or an output of the run',
  )
  parser.add_argument(
    '--overwrite',
    action='store_true',
    help='replace outputs (and the report) that already exist; without it the run refuses to start',
  )
  parser.add_argument('--no_progress', action='store_true')


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
  """The command line's flags; their defaults are ``Options``' (``options.defaults``)."""
  parser = argparse.ArgumentParser(
    prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('inputs', nargs='+', metavar='INPUT', help='images, folders, videos')
  parser.add_argument(
    '--output',
    '-o',
    required=True,
    metavar='DIR',
    help='output folder (must not be an input folder or inside one)',
  )
  _add_model_flags(parser.add_argument_group('the model and its target identities'))
  _add_check_flags(parser.add_argument_group('fail-closed checks and the fallback'))
  _add_detection_flags(parser.add_argument_group('detection'))
  _add_run_flags(parser.add_argument_group('the run: batches, threads, outputs'))
  compile_cache.add_argument(parser)
  return parser


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
  """The flags, with ``args.options`` (``Options``); bad ones are usage errors (exit 2)."""
  parser = build_parser(prog)
  return check_args(parser, parser.parse_args(argv))


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
  """Checks parsed flags (``parser.error`` on bad ones) and sets ``args.options``; the Beam
  tool (``beam_pipeline``) shares these checks."""
  if args.baseline and args.checkpoint:
    parser.error('give --checkpoint or --baseline, not both')
  if args.parser and args.baseline:
    parser.error(
      '--parser is for models trained on parser maps; the baselines use no semantic maps'
    )
  threshold = args.identity_threshold
  if args.no_identity_check:
    if threshold != DEFAULTS['identity_threshold']:
      parser.error('give --identity_threshold or --no_identity_check, not both')
    threshold = 0.0
  elif threshold == 0:  # the library's "off": never a silent way to turn the check off
    parser.error(
      "--identity_threshold must be > 0 (dlib's same-person distance is "
      f'{DEFAULTS["identity_threshold"]:g}), got 0; use --no_identity_check to '
      'turn the check off'
    )
  try:
    args.detectors = ensemble.parse_detectors(args.detectors)
    args.detector_thresholds = _thresholds(args.detector_threshold, args.detectors)
    args.options = Options(
      **{name: getattr(args, name) for name in SAME_NAME_OPTIONS},
      identity_threshold=threshold,
      detectors=args.detectors,
      detector_thresholds=args.detector_thresholds,
      parser_workdir=args.parser,
    )
  except ValueError as e:
    parser.error(flag_message(str(e)))
  return args


def flag_message(message: str) -> str:
  """An ``Options`` error ('quality must be ...') in the CLI's words ('--quality must ...')."""
  name = message.split(' ', 1)[0]
  if name in SAME_NAME_OPTIONS or name in ('identity_threshold', 'detector_threshold'):
    return f'--{message}'.replace(
      '(--no_identity_check, identity_threshold=0)', 'with --no_identity_check'
    )
  return message


def _thresholds(items, detectors) -> dict[str, float]:
  """--detector_threshold NAME=SCORE items -> {name: score}, for detectors in use."""
  out = {}
  for item in items:
    name, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--detector_threshold takes NAME=SCORE, got {item!r}')
    if name not in detectors:
      raise ValueError(f'--detector_threshold {name}: not one of --detectors {",".join(detectors)}')
    if name in out:
      raise ValueError(f'--detector_threshold {name} given twice: give it once')
    try:
      out[name] = float(value)
    except ValueError:
      raise ValueError(f'--detector_threshold {item!r}: {value!r} is not a number') from None
  return out


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
