"""Demo of what exists so far: one forward pass of the SDGAN generator on a real face photo.

  python tools/demo.py --output outputs/demo

The generator is untrained (random weights) and the face mask and semantic map are a
placeholder ellipse: the landmark-based masks, the training loop and the anonymizer come
with the next issues. The output PNG shows, left to right: the photo, the mask, the
semantic map, the masked input, the raw generator output and the composite.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data as skdata  # noqa: E402

from sdgan_jax.config import load_config  # noqa: E402
from sdgan_jax.models.generator import composite, generator_from_config, mask_image  # noqa: E402


def sample_face(resolution: int) -> np.ndarray:
  """The astronaut photo bundled with scikit-image (NASA, public domain), face-centred."""
  crop = skdata.astronaut()[20:220, 125:325]
  img = Image.fromarray(crop).resize((resolution, resolution), Image.BICUBIC)
  return np.asarray(img, np.float32) / 255.0


def ellipse_mask(resolution: int) -> np.ndarray:
  """Placeholder face mask: an ellipse over the face of the crop above."""
  yy, xx = np.mgrid[:resolution, :resolution] / resolution
  inside = ((xx - 0.5) / 0.25) ** 2 + ((yy - 0.5) / 0.33) ** 2 <= 1.0
  return inside.astype(np.float32)[..., None]


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
  palette = np.random.default_rng(0).uniform(0.2, 1.0, size=(num_classes, 3))
  palette[0] = 0
  return palette[labels]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/demo.py')
  parser.add_argument('--output', default='outputs/demo')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  config = load_config(args.config)
  res, classes = config.resolution, config.num_classes
  image = sample_face(res)[None]
  mask = ellipse_mask(res)[None]
  labels = mask[..., 0].astype(np.int32)  # 1 = skin inside the ellipse, 0 = background
  semantic = jax.nn.one_hot(labels, classes)
  identity = jax.random.normal(jax.random.key(args.seed + 1), (1, config.identity_dim))

  model = generator_from_config(config.model.generator)
  start = time.perf_counter()
  variables = jax.jit(model.init)(jax.random.key(args.seed), mask_image(image, mask), semantic,
                                  identity)
  generated = jax.jit(model.apply)(variables, mask_image(image, mask), semantic, identity)
  generated = np.asarray(jax.block_until_ready(generated))
  seconds = time.perf_counter() - start
  out = np.asarray(composite(image, mask, generated))

  panels = [image[0], np.repeat(mask[0], 3, -1), colorize(labels[0], classes),
            np.asarray(mask_image(image, mask))[0], np.clip(generated[0], 0, 1), out[0]]
  strip = np.concatenate(panels, axis=1)
  strip = (np.clip(strip, 0, 1) * 255).round().astype(np.uint8)
  out_dir = pathlib.Path(args.output)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / 'generator_forward.png'
  Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3), Image.NEAREST).save(path)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))
  print(f'generator: {n_params / 1e6:.2f} M parameters, {res}x{res} px, '
        f'init + forward (incl. compilation) {seconds:.1f} s on {jax.devices()[0].platform}')
  print(f'wrote {path}  (untrained generator: the face region is noise until training exists)')


if __name__ == '__main__':
  main()
