"""Face-detection recall and speed on the recall set built from the sample photos.

  python tools/benchmark_detection.py                        # every detector, seed 0
  python tools/benchmark_detection.py --seed 2 --detectors ensemble,hog --output det.jsonl

Builds the recall set (``sdgan_jax.evaluation.recall_set``: the sample photos' faces on
1920x1080 canvases, 20 px to the whole frame, turned up to 45 degrees, mirrored, occluded,
plain and cluttered backgrounds) and, with ``--crowd``, one 6000x4000 crowd of small faces;
then, per detector, prints one JSON line: recall overall and per size bucket, angle,
occlusion, mirroring and background, false boxes, seconds per image and the faces missed.
Detectors: ``ensemble`` (the anonymizer's default), each BlazeFace network alone, dlib's
HOG at upsample 1 (the anonymizer's detector before the ensemble) and 2, and dlib's CNN
(``cnn``, slow on CPUs: not in the default list). Needs `make weights`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = 'ensemble,blazeface_short_range,blazeface_full_range,hog1,hog2'


def make_detector(name: str, weights_dir):
  from sdgan_jax.faces import blazeface, detect, ensemble  # pylint: disable=import-outside-toplevel

  if name == 'ensemble':
    return ensemble.EnsembleDetector(weights_dir=weights_dir)
  if name in blazeface.CONFIGS:
    return blazeface.BlazeFaceDetector(name, weights_dir=weights_dir)
  if name in ('hog1', 'hog2', 'hog0'):
    return detect.FaceDetector('hog', upsample=int(name[-1]))
  if name == 'cnn':
    return detect.FaceDetector('cnn', upsample=1)
  raise ValueError(f'unknown detector {name!r}: ensemble, {", ".join(blazeface.CONFIGS)}, '
                   'hog0, hog1, hog2, cnn')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--detectors', default=DEFAULT)
  parser.add_argument('--seed', type=int, default=0, help='recall set seed (0: tuning set)')
  parser.add_argument('--num_faces', type=int, default=120)
  parser.add_argument('--crowd', action='store_true', help='also a 6000x4000 crowd photo')
  parser.add_argument('--cache_dir', default=str(ROOT / 'outputs' / 'cache'),
                      help='where the sample photos are downloaded')
  parser.add_argument('--weights_dir')
  parser.add_argument('--output', help='append the JSON lines to this file too')
  args = parser.parse_args(argv)

  import jax  # pylint: disable=import-outside-toplevel

  from sdgan_jax.datasets import samples  # pylint: disable=import-outside-toplevel
  from sdgan_jax.evaluation import recall_set as rs  # pylint: disable=import-outside-toplevel

  try:
    detectors = {name: make_detector(name, args.weights_dir)
                 for name in args.detectors.split(',') if name}
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  sources = rs.face_sources(samples.fetch_sample_photos(args.cache_dir))
  sets = {'recall_set': rs.build_recall_set(sources, args.num_faces, seed=args.seed)}
  if args.crowd:
    sets['crowd_6000x4000'] = [rs.crowd_canvas(sources, seed=args.seed)]
  device = jax.devices()[0]
  machine = (f'{platform.processor() or platform.machine()}, {jax.device_count()} '
             f'{device.platform} device(s) ({device.device_kind})')
  for set_name, canvases in sets.items():
    for name, detector in detectors.items():
      row = {'date': datetime.date.today().isoformat(), 'machine': machine, 'set': set_name,
             'seed': args.seed, 'images': len(canvases),
             'size': list(canvases[0].image.shape[1::-1]), 'detector': name,
             **rs.evaluate(detector, canvases)}
      line = json.dumps(row)
      print(line, flush=True)
      if args.output:
        with open(args.output, 'a') as f:
          f.write(line + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
