"""The identity bank: per training identity, the mean identity feature (paper §3.3), and
per training example its own feature (the per-image conditioning, docs/training.md).

The generator's target identity comes from here: "Block II provides randomly selected
identity information extracted from the given face dataset" (paper §3, Fig. 1), the
feature being the representation layer of a pretrained face classifier (§3.3). Here that
is dlib's ResNet face descriptor (``sdgan_jax.models.dlib_resnet``, 128-d; docs/weights.md),
averaged over each training identity's crops, so the target is the person rather than one
photo of them.

A bank is stored beside the prepared dataset as ``identity_bank_<split>_<backbone>.npz``
(``bank_path``): ``means`` [N, D] float32, ``counts`` [N] int64, ``features`` [E, D] float32
(one row per example of the split, in its order; absent in banks built before it existed)
and metadata (backbone name, feature size, anything the caller adds).

No TensorFlow here (README.md "Layout"): ``build_identity_bank`` takes any iterable of example
dicts, e.g. a TFDS data source of the prepared split.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sdgan_jax import batching, targets

DEFAULT_BACKBONE = 'dlib_resnet'
MODES = ('random', 'farthest')


def bank_path(
  dataset_dir: str | os.PathLike, split: str = 'train', backbone: str = DEFAULT_BACKBONE
) -> pathlib.Path:
  """Where the bank of ``split`` lives: beside the prepared dataset's files."""
  return pathlib.Path(dataset_dir) / f'identity_bank_{split}_{backbone}.npz'


class BankError(ValueError):
  """An identity bank file that cannot be read: one line naming it and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class IdentityBank:
  """Mean identity features of the training identities (paper §3.3).

  Attributes:
    means: float32 [N, D], row i the mean feature of the identity with label i.
    counts: int64 [N], how many crops each mean averages.
    backbone: the feature network's name (e.g. 'dlib_resnet').
    metadata: JSON-serialisable extras (dataset, split, weights' sha256, ...).
    features: float32 [E, D] or None: row n the feature of example n of the split (the
      data source's order, the input pipeline's ``target_index``).
  """

  means: np.ndarray
  counts: np.ndarray
  backbone: str = DEFAULT_BACKBONE
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  features: np.ndarray | None = None

  def __post_init__(self):
    means = np.asarray(self.means, np.float32)
    counts = np.asarray(self.counts, np.int64)
    if means.ndim != 2 or len(means) < 2:
      raise ValueError(
        f'means must be [N >= 2, D] (targets must differ from the source '
        f'identity), got shape {means.shape}'
      )
    if counts.shape != (len(means),):
      raise ValueError(f'counts must be [{len(means)}], got shape {counts.shape}')
    if not np.all(np.isfinite(means)):
      raise ValueError('means contain NaN or inf')
    if self.features is not None:
      features = np.asarray(self.features, np.float32)
      if features.ndim != 2 or features.shape[1] != means.shape[1]:
        raise ValueError(f'features must be [E, {means.shape[1]}], got {features.shape}')
      if len(features) != counts.sum():
        raise ValueError(f'{len(features)} example features but counts sum to {counts.sum()}')
      if not np.all(np.isfinite(features)):
        raise ValueError('features contain NaN or inf')
      object.__setattr__(self, 'features', features)
    object.__setattr__(self, 'means', means)
    object.__setattr__(self, 'counts', counts)
    object.__setattr__(self, 'metadata', dict(self.metadata))

  @property
  def num_identities(self) -> int:
    return self.means.shape[0]

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  @functools.cached_property
  def farthest(self) -> np.ndarray:
    """int32 [N]: for each identity, the other identity whose mean is farthest (L2)."""
    means = self.means.astype(np.float64)
    sq = np.sum(means**2, axis=1)
    out = np.empty(len(means), np.int32)
    for lo in range(0, len(means), 1024):  # [1024, N] distance blocks bound the memory
      block = means[lo : lo + 1024]
      d2 = sq[lo : lo + 1024, None] + sq[None, :] - 2.0 * block @ means.T
      d2[np.arange(len(block)), np.arange(lo, lo + len(block))] = -np.inf
      out[lo : lo + 1024] = np.argmax(d2, axis=1)
    return out

  def sample_targets(
    self, rng: jax.Array | int | np.random.Generator, source_labels, mode: str = 'random'
  ) -> tuple[Any, Any]:
    """Target identity features for a batch, never the source's own identity (paper §3.3).

    Args:
      rng: a ``jax.random.key`` (or an int seed), or a ``numpy.random.Generator`` to draw
        on the host without touching a device (the training loop's input path: a device
        draw there would wait for the running train step); unused by 'farthest'.
      source_labels: int [B] identity labels of the source faces (training split labels).
      mode: 'random' (uniform over the other identities, ``sdgan_jax.targets``; the
        paper's random selection) or
        'farthest' (the identity whose mean is farthest from the source's).

    Returns:
      (features float32 [B, D], indices int32 [B]): numpy arrays for a numpy generator,
      else JAX arrays. The JAX path works under ``jax.jit``.
    """
    n = self.num_identities
    if mode not in MODES:
      raise ValueError(f'unknown mode {mode!r}; expected one of {MODES}')
    try:
      concrete = np.asarray(source_labels)
    except jax.errors.TracerArrayConversionError:  # under jit: no check possible
      concrete = None
    if concrete is not None and concrete.size:
      if concrete.min() < 0 or concrete.max() >= n:
        raise ValueError(
          f'source_labels must be training labels in [0, {n}), got '
          f'[{concrete.min()}, {concrete.max()}]'
        )
    if isinstance(rng, np.random.Generator):
      labels = concrete.astype(np.int32)
      if mode == 'random':
        indices = targets.draw_outside_block(rng, n, labels, np.int32(1), dtype=np.int32)
      else:
        indices = self.farthest[labels]
      return self.means[indices], indices
    labels = jnp.asarray(source_labels, jnp.int32)
    if mode == 'random':
      if isinstance(rng, (int, np.integer)):
        rng = jax.random.key(int(rng))
      # Uniform over the n - 1 others: draw from [0, n-1) and skip the source's own label.
      draw = jax.random.randint(rng, labels.shape, 0, n - 1, dtype=jnp.int32)
      indices = targets.skip_block(draw, labels, jnp.int32(1))
    else:
      indices = jnp.asarray(self.farthest)[labels]
    return jnp.asarray(self.means)[indices], indices

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes the bank as .npz (atomically: a temporary file, then a rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
      self.metadata, backbone=self.backbone, dim=self.dim, num_identities=self.num_identities
    )
    tmp = path.with_name(f'.{path.name}.tmp')
    extra = {} if self.features is None else {'features': self.features}
    with open(tmp, 'wb') as f:
      np.savez(
        f,
        means=self.means,
        counts=self.counts,
        metadata=np.array(json.dumps(meta, sort_keys=True)),
        **extra,
      )
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> IdentityBank:
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(
        f'no identity bank at {path}: build it with build_identity_bank(...) and IdentityBank.save'
      )
    try:
      with np.load(path, allow_pickle=False) as data:
        missing = {'means', 'counts', 'metadata'} - set(data.files)
        if missing:
          raise ValueError(f'{path} is not an identity bank (lacks {sorted(missing)})')
        meta = json.loads(str(data['metadata']))
        bank = cls(
          means=data['means'],
          counts=data['counts'],
          backbone=meta.pop('backbone', DEFAULT_BACKBONE),
          metadata=meta,
          features=data['features'] if 'features' in data.files else None,
        )
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
      if isinstance(e, ValueError) and 'is not an identity bank' in str(e):
        raise
      raise BankError(
        f'{path} is not a readable identity bank (truncated or damaged? '
        f'{type(e).__name__}: {e}): build it again with '
        '`python tools/prepare_data.py ...` for its dataset (or copy it '
        'again)'
      ) from None
    if meta.get('dim', bank.dim) != bank.dim:
      raise ValueError(f'{path}: metadata says dim {meta["dim"]} but means are {bank.dim}-d')
    return bank


def _crop_and_label(
  n: int, example: Mapping[str, Any], num_identities: int
) -> tuple[np.ndarray, int]:
  """Example ``n``'s image as float32 HWC in [0, 1] and its label, both checked."""
  label = int(example['label'])
  if not 0 <= label < num_identities:
    raise ValueError(
      f'example {n} has label {label}, outside [0, {num_identities}): '
      "pass the split's number of identities as num_identities"
    )
  image = np.asarray(example['image'])
  if image.dtype == np.uint8:
    image = image.astype(np.float32) / 255.0
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'example {n}: expected an HWC RGB image, got shape {image.shape}')
  return image.astype(np.float32), label


def build_identity_bank(
  features_fn: Callable[[np.ndarray], Any],
  examples: Iterable[Mapping[str, Any]],
  num_identities: int,
  batch_size: int = 64,
  *,
  backbone: str = DEFAULT_BACKBONE,
  metadata: Mapping[str, Any] | None = None,
  progress: bool = True,
) -> IdentityBank:
  """Averages ``features_fn`` over each identity's crops (paper §3.3), and keeps each
  crop's own feature (``IdentityBank.features``).

  Args:
    features_fn: maps float32 [B, H, W, 3] crops in [0, 1] to [B, D] features; always
      called with exactly ``batch_size`` crops (the last batch is padded) so a jitted
      function compiles once.
    examples: iterable of dicts with 'image' (uint8 in [0, 255] or float in [0, 1], HWC)
      and 'label' (0..num_identities-1), e.g. a TFDS data source of the training split.
    num_identities: N; every label must occur.
    batch_size: crops per ``features_fn`` call.
    backbone, metadata: stored with the bank.
    progress: show a progress bar.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  sums = counts = None
  total = len(examples) if hasattr(examples, '__len__') else None
  images, labels, per_example = [], [], []

  def flush():
    nonlocal sums, counts
    # A short last batch is padded with copies of its first crop (a real face, not zeros).
    feats = np.asarray(
      batching.map_batches(features_fn, np.stack(images), batch_size=batch_size, fill='first'),
      np.float64,
    )
    if feats.ndim != 2:
      raise ValueError(f'features_fn must return [B, D] features, got shape {feats.shape}')
    if sums is None:
      sums = np.zeros((num_identities, feats.shape[1]), np.float64)
      counts = np.zeros(num_identities, np.int64)
    lab = np.asarray(labels)
    per_example.append(feats.astype(np.float32))
    np.add.at(sums, lab, feats)
    np.add.at(counts, lab, 1)
    images.clear()
    labels.clear()

  for n, example in enumerate(
    tqdm(examples, total=total, desc='identity bank', disable=not progress)
  ):
    image, label = _crop_and_label(n, example, num_identities)
    images.append(image)
    labels.append(label)
    if len(images) == batch_size:
      flush()
  if images:
    flush()
  if counts is None:
    raise ValueError('no examples: the identity bank needs the training split')
  empty = np.flatnonzero(counts == 0)
  if len(empty):
    raise ValueError(
      f'{len(empty)} of {num_identities} identities have no examples (labels '
      f'{empty[:10].tolist()}...): labels must be 0..N-1 with every one used'
    )
  means = (sums / counts[:, None]).astype(np.float32)
  return IdentityBank(
    means=means,
    counts=counts,
    backbone=backbone,
    metadata=dict(metadata or {}),
    features=np.concatenate(per_example),
  )


def dlib_features_fn(
  weights_dir: str | os.PathLike | None = None, variables: Mapping[str, Any] | None = None
) -> Callable:
  """The jitted dlib ResNet descriptor (docs/weights.md) as a ``features_fn``:
  [B,H,W,3] -> [B,128]."""
  from sdgan_jax import weights  # pylint: disable=import-outside-toplevel
  from sdgan_jax.models import dlib_resnet  # pylint: disable=import-outside-toplevel

  if variables is None:
    variables = weights.load_weights('dlib_resnet', weights_dir)
  apply = dlib_resnet.jitted_apply()
  return lambda images: apply(variables, jnp.asarray(images, jnp.float32))
