"""Anonymize every face in photos and videos: ``sdgan_jax.anonymize.cli`` from a source
checkout (``python tools/anonymize.py --help``; installed, ``sdgan-anonymize`` or
``python -m sdgan_jax.anonymize`` run the same).
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sdgan_jax.anonymize.cli import main, parse_args  # noqa: E402

__all__ = ['main', 'parse_args']  # tests call the tool's parse_args

if __name__ == '__main__':
  sys.exit(main())
