"""Drawing a target other than the source (paper §3.4: the generator is pulled towards "the
desired identity", a person other than the one in the input).

Every target draw is the same idea: uniform over ``[0, total)`` without the source's own
block ``[start, start + count)``. A draw from ``[0, total - count)`` is moved past the block,
so every other entry is equally likely and the source's is never drawn, with one random
number per face and no rejection loop. The callers:

* the input pipeline's target example (and its other-identity pair): examples sorted by
  identity, the block the source's identity (``input_pipeline.plan.TrainPlan``);
* ``IdentityBank.sample_targets``: bank rows, the block the source's own row (count 1);
* the evaluation's model rows (``evaluation.rows``): bank rows, the block the face's own
  row when the bank holds its person, else none (count 0: a test face may get any row).

The anonymizer draws from the whole bank on purpose: the person in a photo is not known to
be in the bank, so there is no row to exclude.
"""

from __future__ import annotations

import numpy as np


def skip_block(draw, start, count):
  """Maps draws from ``[0, total - count)`` onto ``[0, total)`` without the block
  ``[start, start + count)``; numpy or JAX arrays (works under ``jax.jit``)."""
  return draw + (draw >= start) * count


def draw_outside_block(rng: np.random.Generator, total, start, count, dtype=np.int64) -> np.ndarray:
  """Uniform draws from ``[0, total)`` without ``[start, start + count)``, one per entry of
  ``start`` and ``count`` (broadcast); ``count`` 0 excludes nothing."""
  size = np.broadcast_shapes(np.shape(start), np.shape(count))
  return skip_block(rng.integers(0, total - count, size, dtype=dtype), start, count)
