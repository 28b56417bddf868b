"""The anonymizing command line's flags and their checks: ``add_flags`` adds them to a
parser, ``check_args`` checks the parsed ones and makes their ``Options``. Shared by
``cli`` and the Beam tool (``beam_pipeline``); docs/anonymize.md lists the flags.
"""

from __future__ import annotations

import argparse

from sdgan_jax import cpu_export
from sdgan_jax.anonymize.jobs import REPORT_NAME
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


def add_flags(parser: argparse.ArgumentParser) -> None:
  """The inputs, ``--output`` and every flag of the command line (``cli.build_parser``; the
  Beam tool's too); their defaults are ``Options``' (``options.defaults``)."""
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
