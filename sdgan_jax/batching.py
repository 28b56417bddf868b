"""Running a jitted function over arrays of any length in batches of one fixed size.

XLA compiles one program per input shape, so every caller pads its last, shorter batch up to
the compiled size instead of compiling another program, and drops the padded rows' outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def pad_rows(array: np.ndarray, size: int, fill: str = 'zeros') -> np.ndarray:
  """``array`` with rows appended up to ``size``: zeros, or copies of its first row
  (``fill='first'``, for functions that must not see an all-zero input)."""
  short = size - len(array)
  if short < 0:
    raise ValueError(f'{len(array)} rows do not fit a batch of {size}')
  if not short:
    return array
  if fill == 'first':
    extra = np.repeat(array[:1], short, axis=0)
  elif fill == 'zeros':
    extra = np.zeros((short,) + array.shape[1:], array.dtype)
  else:
    raise ValueError(f"unknown fill {fill!r}: use 'zeros' or 'first'")
  return np.concatenate([array, extra])


def map_batches(fn: Callable, *arrays, batch_size: int, fill: str = 'zeros'):
  """``fn(*chunks)`` over consecutive ``batch_size`` rows of ``arrays`` (equal lengths), the
  last chunk padded (``pad_rows``); returns the outputs of the real rows, concatenated.

  ``fn`` returns an array or a tuple of arrays, each with the batch as its leading axis.
  With no rows ``fn`` is never called and None is returned: the caller knows the shape.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  arrays = [np.asarray(a) for a in arrays]
  total = len(arrays[0])
  if any(len(a) != total for a in arrays):
    raise ValueError(f'arrays of different lengths: {[len(a) for a in arrays]}')
  pieces = []
  for lo in range(0, total, batch_size):
    chunk = [a[lo : lo + batch_size] for a in arrays]
    valid = len(chunk[0])
    out = fn(*(pad_rows(c, batch_size, fill) for c in chunk))
    if isinstance(out, tuple):
      pieces.append(tuple(np.asarray(o)[:valid] for o in out))
    else:
      pieces.append(np.asarray(out)[:valid])
  if not pieces:
    return None
  if isinstance(pieces[0], tuple):
    return tuple(np.concatenate(parts) for parts in zip(*pieces))
  return np.concatenate(pieces)
