"""The reference configs, importable from an installed package.

``configs/NAME.py`` at the repository root loads ``sdgan_jax.configs.NAME``, so
``python run.py --config=configs/celeba.py`` works from a checkout; an installed package
finds the same files with ``config_path(NAME)``.
"""

from __future__ import annotations

import pathlib

NAMES = ('celeba', 'demo', 'eagrnet_folder', 'eagrnet_polygons')


def config_path(name: str) -> pathlib.Path:
  """The file of the reference config ``name`` (one of ``NAMES``) inside the package."""
  if name not in NAMES:
    raise ValueError(f'unknown reference config {name!r}; use one of {", ".join(NAMES)}')
  return pathlib.Path(__file__).with_name(f'{name}.py')
