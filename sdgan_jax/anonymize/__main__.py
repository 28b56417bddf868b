"""``python -m sdgan_jax.anonymize``: the anonymizer's command line (``cli``)."""

from __future__ import annotations

import sys

from sdgan_jax.anonymize.cli import main

if __name__ == '__main__':
  sys.exit(main(prog='python -m sdgan_jax.anonymize'))
