"""Converts a facenet-pytorch FaceNet state dict (.pt) into sdgan_jax weights.

  python tools/convert_facenet.py --input 20180402-114759-vggface2.pt --name facenet_vggface2

The .pt files are on facenet-pytorch's GitHub release page only; run without --input to
print where to download them. The logits head is kept when the file has one.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sdgan_jax.converters import facenet  # noqa: E402
from sdgan_jax.weights import add_output_flags  # noqa: E402


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    '--input',
    type=pathlib.Path,
    help='facenet-pytorch state dict, e.g. 20180402-114759-vggface2.pt',
  )
  add_output_flags(
    parser, 'facenet_vggface2', 'weights name (facenet_vggface2 or facenet_casia_webface)'
  )
  args = parser.parse_args(argv)
  if args.input is None:
    facenet.print_instructions()
    return 2
  if not args.input.is_file():
    print(f'error: no such file {args.input}\n', file=sys.stderr)
    facenet.print_instructions()
    return 2
  try:
    path = facenet.convert_file(args.input, args.name, args.weights_dir)
  except facenet.ConversionError as e:
    print(f'error: {args.input}: {e}', file=sys.stderr)
    return 1
  meta = json.loads(path.with_suffix('.json').read_text())
  head = (
    f'with a {meta["num_classes"]}-class logits head'
    if meta['num_classes']
    else 'without a logits head'
  )
  print(f'wrote {path} ({head}) and {path.with_suffix(".json").name}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
