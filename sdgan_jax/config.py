"""Loading config files (``configs/*.py`` with a ``get_config``) outside absl flags."""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads ``path/to/config.py`` or ``path/to/config.py:ARG`` (ARG goes to get_config)."""
  path, _, arg = spec.partition(':')
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f'config file {path!r} not found (expected e.g. configs/demo.py)')
  module_spec = importlib.util.spec_from_file_location(f'_sdgan_config_{file.stem}', file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path} defines no get_config()')
  return module.get_config(arg) if arg else module.get_config()
