"""Batches of a face-parsing folder for EAGRNet's training and evaluation (docs/training.md):
numpy, decoded with PIL on a thread pool, each step a function of ``(seed, step)`` like the
input pipeline's. The folders themselves are read by ``parsing_folders``.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from collections.abc import Iterator

import numpy as np

from sdgan_jax.datasets.parsing_folders import ParsingFolder
from sdgan_jax.faces.masks import MIRROR_CLASSES


def _read_batch(folder: ParsingFolder, indices, resolution: int, pool) -> tuple:
  loaded = list(pool.map(lambda i: folder.load(int(i), resolution), indices))
  images = np.stack([x for x, _ in loaded])
  labels = np.stack([y for _, y in loaded])
  return images, labels


def _shard(batch_size: int, process_index, process_count) -> tuple[int, int]:
  import jax  # pylint: disable=import-outside-toplevel

  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  if batch_size % n:
    raise ValueError(f'batch_size {batch_size} must be a multiple of the process count {n}')
  local = batch_size // n
  return p * local, local


def train_batches(
  folder: ParsingFolder,
  *,
  batch_size: int,
  resolution: int,
  seed: int,
  start_step: int = 0,
  flip_prob: float = 0.5,
  workers: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches of this process: 'image' f32 [b,R,R,3] in [0,1], 'semantic'
  int32 [b,R,R].

  Step ``k`` is determined by ``(seed, k)``: epoch ``e`` visits a permutation seeded by
  ``(seed, e)`` (remainder dropped), each example is flipped with ``flip_prob`` (left/right
  classes swapped), and process ``p`` takes its contiguous slice of every global batch.
  """
  per_epoch = len(folder) // batch_size
  if per_epoch == 0:
    raise ValueError(
      f'{len(folder)} examples in {folder.root} ({folder.split}) are fewer '
      f'than one batch of {batch_size}'
    )
  lo, local = _shard(batch_size, process_index, process_count)
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
    step = start_step
    while True:
      epoch, j = divmod(step, per_epoch)
      perm = np.random.default_rng([seed, epoch]).permutation(len(folder))
      index = perm[j * batch_size : (j + 1) * batch_size][lo : lo + local]
      flips = np.random.default_rng([seed, epoch, j, 1]).uniform(size=batch_size)[lo : lo + local]
      images, labels = _read_batch(folder, index, resolution, pool)
      flip = flips < flip_prob
      images[flip] = images[flip][:, :, ::-1]
      labels[flip] = MIRROR_CLASSES[labels[flip][:, :, ::-1]]
      yield {'image': images.astype(np.float32) / 255.0, 'semantic': labels.astype(np.int32)}
      step += 1


def eval_batches(
  folder: ParsingFolder,
  *,
  batch_size: int,
  resolution: int,
  max_batches: int | None = None,
  workers: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Evaluation batches in order, the last one padded; adds 'valid' f32 [b] (0 = padding)."""
  lo, local = _shard(batch_size, process_index, process_count)
  n = len(folder)
  num = math.ceil(n / batch_size)
  if max_batches is not None:
    num = min(num, max_batches)
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
    for b in range(num):
      index = np.arange(b * batch_size, (b + 1) * batch_size)[lo : lo + local]
      valid = index < n
      images, labels = _read_batch(folder, np.where(valid, index, 0), resolution, pool)
      images[~valid], labels[~valid] = 0, 0
      yield {
        'image': images.astype(np.float32) / 255.0,
        'semantic': labels.astype(np.int32),
        'valid': valid.astype(np.float32),
      }
