"""Loading config files (``configs/*.py`` with a ``get_config``) outside absl flags."""

from __future__ import annotations

import difflib
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


class ConfigError(ValueError):
  """A config key or value (or the data it names) this code cannot run with; the CLIs print
  its message as one line and exit with status 2."""


def unknown_key_message(name: str, known) -> str:
  """'unknown config key 'a.b' (did you mean 'a.c'?); keys of config.a: ...' in one line."""
  parent, _, key = name.rpartition('.')
  known = sorted(str(k) for k in known)
  close = difflib.get_close_matches(key, known, n=1)
  prefix = f'{parent}.' if parent else ''
  guess = f' (did you mean {prefix + close[0]!r}?)' if close else ''
  where = f'config.{parent}' if parent else 'config'
  return f'unknown config key {name!r}{guess}; keys of {where}: {", ".join(known)}'


def override_error(config: ml_collections.ConfigDict, paths) -> str | None:
  """The message for the first dotted ``paths`` entry (``--config.PATH=...``) naming no
  field of ``config``, or None when all of them exist."""
  for path in paths:
    node, done = config, []
    for key in path.split('.'):
      if '[' in key:  # indexing (config_flags' ``a[0]``): not checked here
        break
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        return (
          f'config key {".".join(done)!r} holds a value ({type(node).__name__}), not '
          f'a group of keys: --config.{path} names no field'
        )
      if key not in node:
        return unknown_key_message('.'.join(done + [key]), node.keys())
      node = node[key]
      done.append(key)
  return None
