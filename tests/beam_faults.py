"""Anonymizers that fail or stall on purpose, for the Beam tests (``test_beam.py``).

Beam's worker processes import this module (the tests put ``tests/`` on their
PYTHONPATH), so a test can hand ``beam_pipeline.run`` a ``load`` that makes one of these.
Run as a script, it starts a Beam run whose anonymizer stalls on one photo, for a test to
kill part-way: ``python beam_faults.py WEIGHTS_DIR INPUT OUTPUT [BEAM FLAGS...]``.
"""

from __future__ import annotations

import functools
import sys
import time

from sdgan_jax import anonymize

RAISE_SIZE = (150, 150)  # a photo of this size raises in the worker
RAISE_VIDEO_NAME = 'raises_mid'  # a video whose name holds this raises in its 2nd frame batch
STALL_NAME = 'zz_stall'  # a photo whose name holds this stalls its worker


def with_faults(anonymizer: anonymize.FaceAnonymizer) -> anonymize.FaceAnonymizer:
  """``anonymizer``, but a photo of ``RAISE_SIZE`` raises, a video named with
  ``RAISE_VIDEO_NAME`` raises in its second frame batch, and a file named with
  ``STALL_NAME`` stalls for ten minutes."""
  process = anonymizer.process
  batches: dict[str, int] = {}

  def faulty(images, keys=None, trackers=None):
    if any(image.shape[:2] == RAISE_SIZE for image in images):
      raise RuntimeError('worker blew up on this photo')
    for key in set(keys or ()):
      if STALL_NAME in key:
        time.sleep(600)
      if RAISE_VIDEO_NAME in key:
        batches[key] = batches.get(key, 0) + 1
        if batches[key] == 2:
          raise RuntimeError('worker blew up mid-video')
    return process(images, keys, trackers)

  anonymizer.process = faulty
  return anonymizer


def faulty_model(*args, **kwargs) -> anonymize.FaceAnonymizer:
  """``anonymize.build_anonymizer(*args, **kwargs)`` ``with_faults``."""
  return with_faults(anonymize.build_anonymizer(*args, **kwargs))


def faulty_anonymizer(weights_dir, options: anonymize.Options) -> anonymize.FaceAnonymizer:
  """The pixelate baseline ``with_faults``."""
  return with_faults(
    anonymize.FaceAnonymizer(baseline='pixelate', options=options, weights_dir=weights_dir)
  )


def main(argv) -> None:
  from sdgan_jax.anonymize import beam_pipeline  # pylint: disable=import-outside-toplevel

  weights_dir, *rest = argv
  args, beam_args = beam_pipeline.parse_args(rest)
  beam_pipeline.run(
    args, beam_args, load=functools.partial(faulty_anonymizer, weights_dir, args.options)
  )


if __name__ == '__main__':
  main(sys.argv[1:])
