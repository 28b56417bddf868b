"""The paper's Tables 1 and 3 (detection, identification, re-identification, FID, SSIM, PSNR)
for the classic baselines and trained SDGAN models on a prepared face dataset.

  # CelebA test identities (paper §4.1), one or more run.py workdirs:
  python tools/eval.py --checkpoint workdirs/celeba128 --data data/sdgan_faces/celeba_128/1.0.0
  # the embedded sample faces: their test split holds one person, so take both splits:
  python tools/eval.py --checkpoint workdirs/demo --data data/sdgan_faces/samples_128/1.0.0 \
      --split train,test --paper

A model gets the kind of semantic map it was trained on (WORKDIR/semantic_maps.json): the
dataset's own when they are of that kind, else its face parser's maps of the crops (EAGRNet,
paper §3.2; --parser PARSER_WORKDIR when the parser has moved) or landmark polygons.

Writes OUTPUT/eval.json, OUTPUT/eval.md (the tables) and OUTPUT/eval_grid.png (rows:
original, each baseline, each model) and prints the tables. Needs the converted weights of
`make weights` (FID Inception, dlib ResNet; FaceNet's are used instead of dlib ResNet when
converted, see README "Pretrained networks").
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# TensorFlow's C++ warnings (e.g. each record a damaged file fails to parse) would bury the
# one-line error the tool prints; its errors still show.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from sdgan_jax import media, semantic_source  # noqa: E402
from sdgan_jax.evaluation import eval_options, runner, streams, tables  # noqa: E402
from sdgan_jax.perf import compile_cache  # noqa: E402


class _Parser(argparse.ArgumentParser):
  """Usage errors as one line (``eval.py: error: ...``), exit status 2."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def _at_least(least: int):
  """An argparse type: an integer >= ``least``."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < least:
      raise argparse.ArgumentTypeError(f'{value} is not >= {least}')
    return value

  parse.__name__ = f'integer >= {least}'
  return parse


def _default(name: str):
  """The library's default of ``EvalOptions.<name>`` (the flags never restate it)."""
  return eval_options.EvalOptions.__dataclass_fields__[name].default


def _parser() -> _Parser:
  parser = _Parser(
    prog='eval.py', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  at_least = {name: _at_least(least) for name, least in eval_options.LEAST.items()}
  parser.add_argument(
    '--checkpoint',
    action='append',
    default=[],
    metavar='WORKDIR',
    help='a run.py workdir (repeat for several models); none: baselines only',
  )
  parser.add_argument(
    '--data',
    required=True,
    metavar='PREPARED_DATASET',
    help='a prepared dataset directory, e.g. data/sdgan_faces/celeba_128/1.0.0',
  )
  parser.add_argument(
    '--split',
    default=_default('split'),
    help=f"comma-separated splits (default: {_default('split')}; samples: 'train,test')",
  )
  parser.add_argument('--output', default='outputs/eval', help='where the outputs go')
  parser.add_argument(
    '--resolution',
    type=at_least['resolution'],
    default=_default('resolution'),
    help=f'evaluation crop size (paper: {eval_options.PAPER_RESOLUTION})',
  )
  parser.add_argument('--batch_size', type=at_least['batch_size'], default=_default('batch_size'))
  parser.add_argument('--seed', type=int, default=_default('seed'))
  parser.add_argument(
    '--max_faces',
    type=at_least['max_faces'],
    default=_default('max_faces'),
    help='evaluate this many faces, evenly spaced',
  )
  parser.add_argument(
    '--grid_faces',
    type=at_least['grid_faces'],
    default=_default('grid_faces'),
    help='faces in the image grid',
  )
  parser.add_argument(
    '--baselines', default=','.join(_default('baselines')), help='comma-separated baseline rows'
  )
  parser.add_argument(
    '--detectors',
    default=','.join(_default('detectors')),
    help="detection columns, comma-separated: hog (dlib HOG, the paper's "
    "Dlib), blazeface (the anonymizer's BlazeFace ensemble) and/or cnn "
    "(dlib's MMOD CNN, slow on a CPU: see BENCHMARKS.md); the deep ones take "
    "the column of the paper's SSH, whose weights are not available",
  )
  # Its range is checked by EvalOptions, whose message says what 0 and 1 mean.
  parser.add_argument(
    '--detection_processes',
    type=int,
    default=_default('detection_processes'),
    help='worker processes for the dlib detectors (default '
    f'{_default("detection_processes")}; 0: one per CPU core, 1: none)',
  )
  parser.add_argument(
    '--embedding',
    help='identity network weights name (default: FaceNet if converted, else dlib_resnet)',
  )
  parser.add_argument(
    '--weights_dir',
    help='converted weights (default: $SDGAN_WEIGHTS_DIR or '
    '~/.cache/sdgan_jax/weights; `make weights` fills it)',
  )
  parser.add_argument(
    '--parser',
    metavar='PARSER_WORKDIR',
    help='the face parser (EAGRNet workdir) of the models trained on parser '
    'maps, if not where their semantic_maps.json says (same weights)',
  )
  parser.add_argument(
    '--paper', action='store_true', help="print the paper's CelebA numbers beside ours"
  )
  parser.add_argument('--no_progress', action='store_true')
  compile_cache.add_argument(parser)
  return parser


def _options(args, parser: _Parser) -> eval_options.EvalOptions:
  """The flags as ``EvalOptions``; its checks (ranges, known names) are usage errors."""
  try:
    return eval_options.EvalOptions(
      dataset=args.data,
      checkpoints=args.checkpoint,
      split=args.split,
      resolution=args.resolution,
      batch_size=args.batch_size,
      seed=args.seed,
      max_faces=args.max_faces,
      grid_faces=args.grid_faces,
      baselines=[b for b in args.baselines.split(',') if b],
      detectors=[d for d in args.detectors.split(',') if d],
      detection_processes=args.detection_processes,
      embedding=args.embedding,
      weights_dir=args.weights_dir,
      progress=not args.no_progress,
      parser=args.parser,
    )
  except ValueError as e:  # the messages start with the option's name, the flag's too
    parser.error(f'--{e}')


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  options = _options(args, parser)
  try:  # before the (long) evaluation, as the anonymizer does
    media.check_writable(args.output)
  except OSError as e:
    parser.error(
      f'cannot write into --output {args.output} ({e.strerror or e}): choose a '
      'writable folder or fix its permissions'
    )
  compile_cache.enable(args.compilation_cache)
  try:
    result, grid = runner.evaluate(options)
  except (semantic_source.SemanticMapsError, streams.DatasetError, FileNotFoundError) as e:
    print(f'{parser.prog}: error: {e}', file=sys.stderr)
    return 2
  try:
    paths = runner.write_outputs(result, grid, args.output, with_paper=args.paper)
  except OSError as e:  # e.g. the disk filled up during the evaluation: keep the tables
    paths = {}
    print(
      f'{parser.prog}: error: could not write the outputs into {args.output} '
      f'({e.strerror or e}); the tables follow',
      file=sys.stderr,
    )
  print(tables.markdown(result, with_paper=args.paper))
  print(
    f'{result["num_faces"]} faces in {result["seconds"]:.1f} s '
    f'({result["faces_per_second"]:.1f} faces/s on {result["device"]})'
  )
  for kind, path in paths.items():
    print(f'{kind}: {path}')
  return 0 if paths else 1


if __name__ == '__main__':
  sys.exit(main())
