"""Anonymize a whole dataset on Apache Beam (``sdgan_jax.anonymize.beam_pipeline``): the
flags of tools/anonymize.py, plus ``--runner`` and Beam's pipeline options
(docs/scale.md). Needs ``pip install sdgan_jax[beam]``.

  python tools/anonymize_beam.py 'photos/**' --output anon/ --checkpoint workdirs/demo \\
      --direct_num_workers=2 --direct_running_mode=multi_processing
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sdgan_jax.anonymize.beam_pipeline import main, parse_args  # noqa: E402

__all__ = ['main', 'parse_args']

if __name__ == '__main__':
  sys.exit(main())
