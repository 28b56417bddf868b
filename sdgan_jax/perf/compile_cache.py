"""JAX's persistent compilation cache for the entry points (run.py and the tools).

Compiling the train step takes minutes (cuDNN autotuning included on GPUs), and the
anonymizer's generator minutes on a CPU: with the cache, a
restarted run or a second tool call loads the compiled programs instead. Library code never
turns it on; entry points do, before their first compile.
"""

from __future__ import annotations

import os

ENV = 'JAX_COMPILATION_CACHE_DIR'


def default_dir() -> str:
  """``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/sdgan_jax/xla``
  (``~/.cache/sdgan_jax/xla``)."""
  if os.environ.get(ENV):
    return os.environ[ENV]
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'sdgan_jax', 'xla')


def enable(directory: str | None = None) -> str | None:
  """Caches compiled programs in ``directory`` (None: ``default_dir()``; '' turns it off).

  Returns the directory in use, or None when off or when it cannot be created (a read-only
  home only costs the cache, not the run).
  """
  if directory == '':
    return None
  directory = os.path.abspath(os.path.expanduser(directory or default_dir()))
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as error:
    import logging  # pylint: disable=import-outside-toplevel

    logging.warning('compilation cache off: cannot create %s (%s)', directory, error)
    return None
  # Imported here, not at the top: the command lines import this module for their flags,
  # and the Beam launcher (which compiles nothing) should not pay for loading JAX.
  import jax  # pylint: disable=import-outside-toplevel

  jax.config.update('jax_compilation_cache_dir', directory)
  return directory


HELP = (
  'persistent XLA compilation cache: a second run skips the compiles (default '
  "$JAX_COMPILATION_CACHE_DIR or ~/.cache/sdgan_jax/xla; '' turns it off)"
)


def add_argument(parser) -> None:
  """``--compilation_cache DIR`` for an argparse CLI (pass its value to ``enable``)."""
  parser.add_argument('--compilation_cache', metavar='DIR', help=HELP)
