"""Which examples, pairs, targets and seeds make training step k, and each process's share
of the evaluation (pure numpy; the contract is in the package doc, ``input_pipeline``)."""

from __future__ import annotations

import math
import threading

import jax
import numpy as np

from sdgan_jax import targets


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training steps in one epoch (the remainder of ``num_examples // batch_size`` is dropped)."""
  return num_examples // batch_size


def process_share(
  batch_size: int, process_index: int | None, process_count: int | None
) -> tuple[int, int, int]:
  """(process index, process count, local batch size), defaulting to JAX's processes."""
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count})')
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
      f'the global batch_size {batch_size} must be a positive multiple of the '
      f'process count {process_count}'
    )
  return process_index, process_count, batch_size // process_count


SAMPLINGS = ('epoch', 'authors')


def _check_plan_args(labels: np.ndarray, seed, slots) -> None:
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {labels.shape}')
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative int, got {seed!r}')
  if not isinstance(slots, (int, np.integer)) or slots < 1:
    raise ValueError(f'slots must be a positive int, got {slots!r}')


class TrainPlan:
  """Pure-numpy schedule of the training stream: examples, pairs, targets of each step.

  Args:
    labels: int [N] identity label of every example of the split.
    batch_size: global batch size of one update (over all processes).
    seed: non-negative int.
    process_index, process_count: this process's shard (default: JAX's).
    slots: batches per step (fresh batches for each update; package doc).
    sampling: 'epoch' (package doc: epoch permutations, example-weighted partners and
      targets) or 'authors' (their sampler, ``_authors_step``: identity-uniform draws with
      replacement).
  """

  def __init__(
    self,
    labels,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    slots: int = 1,
    sampling: str = 'epoch',
  ):
    labels = np.asarray(labels, np.int64)
    _check_plan_args(labels, seed, slots)
    if sampling not in SAMPLINGS:
      raise ValueError(f'sampling must be one of {SAMPLINGS}, got {sampling!r}')
    self.sampling = sampling
    self.process_index, self.process_count, self.local_batch_size = process_share(
      batch_size, process_index, process_count
    )
    self.labels = labels
    self.batch_size = int(batch_size)
    self.slots = int(slots)
    self.seed = int(seed)
    self.num_examples = len(labels)
    self.steps_per_epoch = steps_per_epoch(self.num_examples, self.batch_size * self.slots)
    if self.steps_per_epoch == 0:
      raise ValueError(
        f"the split has {self.num_examples} examples, fewer than one step's "
        f'{self.slots} global batch(es) of {self.batch_size}: lower batch_size'
        + (' or turn off train.fresh_batches' if self.slots > 1 else '')
      )
    # Examples grouped by label: order[start[i]:start[i]+count[i]] are i's identity.
    self._order = np.argsort(labels, kind='stable')
    sorted_labels = labels[self._order]
    self._start = np.searchsorted(sorted_labels, labels, 'left')
    self._count = np.searchsorted(sorted_labels, labels, 'right') - self._start
    self._rank = np.empty_like(self._order)
    self._rank[self._order] = np.arange(self.num_examples)
    self._rank -= self._start
    if np.all(self._count == self.num_examples):
      raise ValueError(
        'all examples have one label: pairs of different identities need at '
        'least two identities in the split'
      )
    # the identities, each with its block of ``_order`` (the authors' sampler)
    self._classes, self._class_start, self._class_count = np.unique(
      sorted_labels, return_index=True, return_counts=True
    )
    self._cache: tuple[int, np.ndarray] | None = None
    self._lock = threading.Lock()

  def permutation(self, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the examples."""
    with self._lock:
      if self._cache is None or self._cache[0] != epoch:
        perm = np.random.default_rng([self.seed, epoch, 0]).permutation(self.num_examples)
        self._cache = (epoch, perm)
      return self._cache[1]

  def _other_identity(self, rng: np.random.Generator, index: np.ndarray) -> np.ndarray:
    """Uniform over the examples outside each example's identity block."""
    draw = targets.draw_outside_block(
      rng, self.num_examples, self._start[index], self._count[index]
    )
    return self._order[draw]

  def _same_identity(self, rng: np.random.Generator, index: np.ndarray) -> np.ndarray:
    """Uniform over the identity's other examples (the example itself if it has none)."""
    start, count = self._start[index], self._count[index]
    k = rng.integers(0, np.maximum(count - 1, 1))
    k = k + (k >= self._rank[index])
    return np.where(count > 1, self._order[start + np.minimum(k, count - 1)], index)

  def _member(self, rng: np.random.Generator, cls: np.ndarray) -> np.ndarray:
    """A uniform example of each identity ``cls`` (positions in ``_classes``)."""
    offset = rng.integers(0, self._class_count[cls])
    return self._order[self._class_start[cls] + offset]

  def _authors_step(self, step: int) -> dict[str, np.ndarray]:
    """The authors' sampler for one global batch: identities uniform, with replacement.

    Per update batch, half the pairs are "different": two identities drawn independently
    (the same one now and then, and then labelled same), an example of each; the other
    half "same": one identity, two examples drawn independently (now and then the same
    example twice). Positions are shuffled within the batch (theirs shuffle over the
    epoch, so their batches hold half and half only on average). Targets: an identity
    other than the source's, uniform, then one of its examples.
    """
    rng = np.random.default_rng([self.seed, int(step), 3])
    b, n = self.batch_size, len(self._classes)
    index, partner, same = [], [], []
    for _ in range(self.slots):
      half = b // 2
      first = rng.integers(0, n, b)
      second = np.concatenate([rng.integers(0, n, half), first[half:]])
      order = rng.permutation(b)
      first, second = first[order], second[order]
      index.append(self._member(rng, first))
      partner.append(self._member(rng, second))
      same.append(first == second)
    index, partner, same = map(np.concatenate, (index, partner, same))
    own = np.searchsorted(self._classes, self.labels[index])
    target = self._member(rng, targets.draw_outside_block(rng, n, own, 1))
    return {
      'index': index.astype(np.int64),
      'pair_index': partner.astype(np.int64),
      'pair_same': same,
      'target_index': target.astype(np.int64),
      'sample': np.int64(step) * b * self.slots + np.arange(b * self.slots, dtype=np.int64),
    }

  def global_step(self, step: int) -> dict[str, np.ndarray]:
    """The whole global batch of ``step`` (all processes, all slots, slot-major)."""
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    if self.sampling == 'authors':
      return self._authors_step(step)
    epoch, j = divmod(int(step), self.steps_per_epoch)
    b = self.batch_size * self.slots
    index = self.permutation(epoch)[j * b : (j + 1) * b]
    same = np.arange(b) % self.batch_size % 2 == 0
    rng = np.random.default_rng([self.seed, epoch, j, 1])
    same_partner = self._same_identity(rng, index)
    other_partner = self._other_identity(rng, index)
    target = self._other_identity(np.random.default_rng([self.seed, epoch, j, 2]), index)
    sample = np.int64(step) * b + np.arange(b, dtype=np.int64)
    return {
      'index': index.astype(np.int64),
      'pair_index': np.where(same, same_partner, other_partner).astype(np.int64),
      'pair_same': same,
      'target_index': target.astype(np.int64),
      'sample': sample,
    }

  def step(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of ``step``: its share of every slot."""
    plan = self.global_step(step)
    lo = self.process_index * self.local_batch_size
    take = np.concatenate(
      [np.arange(lo, lo + self.local_batch_size) + s * self.batch_size for s in range(self.slots)]
    )
    return {k: v[take] for k, v in plan.items()}


def eval_shard(
  num_examples: int,
  batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> np.ndarray:
  """Source indices of this process's evaluation batches, [num_batches, b], -1 = padding.

  Process p takes the contiguous block ``[p*n, (p+1)*n)`` of ``n = ceil(N / P)`` examples, in
  order; every process yields the same number of batches (collectives need that).
  """
  process_index, process_count, local = process_share(batch_size, process_index, process_count)
  per_process = math.ceil(num_examples / process_count)
  num_batches = max(1, math.ceil(per_process / local))
  lo = min(process_index * per_process, num_examples)
  hi = min(lo + per_process, num_examples)
  index = np.full(num_batches * local, -1, np.int64)
  index[: hi - lo] = np.arange(lo, hi)
  return index.reshape(num_batches, local)
