"""Anonymizer throughput on the sample photos: images/s and faces/s, with a stage breakdown.

  python tools/benchmark_anonymize.py                       # after `make demo`
  python tools/benchmark_anonymize.py --checkpoint WORKDIR --inputs DIR --repeats 3

Reads the photos once, runs one untimed pass (XLA compilation, dlib model loading), then
times ``--repeats`` passes of ``FaceAnonymizer.process`` over the photos in memory (decoding
and writing files are not included) and prints images/s, faces/s and the seconds spent per
stage: detection (the ``--detectors`` ensemble), landmarks + alignment, generation,
paste-back, the identity check and the fallback. Defaults: the demo's photos (outputs/demo/photos)
and model (workdirs/demo).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdgan_jax import anonymize, media  # noqa: E402
from sdgan_jax.anonymize.cli_flags import DEFAULTS, flag_message  # noqa: E402
from sdgan_jax.faces import ensemble  # noqa: E402


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--checkpoint', default='workdirs/demo')
  parser.add_argument(
    '--baseline',
    choices=sorted(anonymize.BASELINES),
    help='time a classic method instead of the generator',
  )
  parser.add_argument(
    '--inputs',
    default='outputs/demo/photos',
    help='folder of photos (make demo writes the sample photos there)',
  )
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--images_per_batch', type=int, default=DEFAULTS['images_per_batch'])
  parser.add_argument(
    '--workers',
    type=int,
    default=DEFAULTS['workers'],
    help='threads for detection and paste-back (0: one per CPU core, at most '
    f'{anonymize.MAX_AUTO_WORKERS})',
  )
  parser.add_argument('--batch_size', type=int, default=DEFAULTS['batch_size'])
  parser.add_argument(
    '--detectors',
    default=','.join(DEFAULTS['detectors']),
    help=f'comma-separated, from {", ".join(ensemble.DETECTORS)}',
  )
  return parser


def _photos(folder: pathlib.Path) -> list[pathlib.Path]:
  if not folder.is_dir():
    return []
  return sorted(p for p in folder.rglob('*') if media.media_kind(p) == 'image')


def _time_passes(anonymizer, groups, repeats: int) -> tuple[int, float, float]:
  """(faces per pass, warm-up seconds, seconds of ``repeats`` timed passes)."""

  def one_pass() -> int:
    return sum(len(f) for group in groups for _, f in anonymizer.process(group))

  start = time.perf_counter()
  faces = one_pass()
  warmup = time.perf_counter() - start
  anonymizer.timings.clear()
  start = time.perf_counter()
  for _ in range(repeats):
    one_pass()
  return faces, warmup, time.perf_counter() - start


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    detectors = ensemble.parse_detectors(args.detectors)
    options = anonymize.Options(
      workers=args.workers,
      detectors=detectors,
      batch_size=args.batch_size,
      images_per_batch=args.images_per_batch,
    )
  except ValueError as e:
    parser.error(flag_message(str(e)))
  if args.repeats < 1:
    parser.error(f'--repeats must be >= 1, got {args.repeats}')

  import jax  # pylint: disable=import-outside-toplevel

  paths = _photos(pathlib.Path(args.inputs))
  if not paths:
    print(
      f'error: no photos in {args.inputs}: run `make demo` first (it writes the sample '
      'photos there), or pass --inputs',
      file=sys.stderr,
    )
    return 2
  try:
    anonymizer = anonymize.build_anonymizer(
      None if args.baseline else args.checkpoint, baseline=args.baseline, options=options
    )
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  images = [media.read_image(p).rgb for p in paths]
  groups = [
    images[i : i + args.images_per_batch] for i in range(0, len(images), args.images_per_batch)
  ]
  faces, warmup, seconds = _time_passes(anonymizer, groups, args.repeats)
  pixels = sum(im.shape[0] * im.shape[1] for im in images) / len(images)
  device = jax.devices()[0]
  print(
    f'{anonymizer.method} on {device.platform} ({device.device_kind}), '
    f'{jax.device_count()} device(s); {len(images)} photos (mean {pixels / 1e6:.2f} MP), '
    f'{faces} faces, {args.repeats} timed passes after a {warmup:.1f} s warm-up; '
    f'{anonymizer.options.resolved_workers()} thread(s), '
    f'{args.images_per_batch} photos per batch; detectors {",".join(detectors)}'
  )
  print(f'images/s: {len(images) * args.repeats / seconds:.3f}')
  print(f'faces/s:  {faces * args.repeats / seconds:.3f}')
  for stage, spent in anonymizer.timings.items():
    print(f'  {stage:15s} {spent / args.repeats:7.2f} s per pass ({spent / seconds:5.1%})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
