"""Prepared faces (TFDS) -> tf.data -> numpy batches, sharded per JAX process (DESIGN §1).

Training batches (paper §4.1, DESIGN §2-3): pixels in [0, 1], the authors' augmentation
(resize the 128-px record to 144, random 128 crop, resize to the training resolution,
random horizontal flip), and for the contrastive identity network a paired image that shows
the same identity for half of the batch and another identity for the other half.

Determinism: everything is a function of ``(seed, step)``, so a run restarted at step k
yields exactly the batches an uninterrupted run yields from step k on:

* epoch ``e`` visits the examples in the order of a permutation seeded by ``(seed, e)``;
  an epoch has ``len(source) // batch_size`` steps (the few examples left over are dropped,
  a different few each epoch); global batch ``j`` of the epoch is ``perm[j*B:(j+1)*B]``;
* JAX process ``p`` of ``P`` takes the contiguous slice ``[p*B/P, (p+1)*B/P)`` of every
  global batch, so the processes' shards are disjoint, cover the epoch, and the global
  batch does not depend on how many processes read it;
* pairs: position ``i`` of a global batch is paired with the same identity when ``i`` is
  even and with another identity when odd (exactly half and half in every batch); the
  partner is drawn uniformly from the other examples of the same identity (the example
  itself when its identity has no other) or uniformly from all examples of other
  identities, with a generator seeded by ``(seed, epoch, j)``;
* targets (paper §3.4: the generator is pulled towards "the desired identity"): every
  example also gets a target example, drawn uniformly from the examples of the other
  identities (never its own), whose image and identity the generator's identity term uses;
* fresh batches (``slots`` > 1, the authors' schedule: every update of a step sees its own
  batch): a step's global batch is ``slots`` consecutive batches of ``batch_size``, and
  each process takes its share of every one of them, so the arrays come as
  ``[slots, local batch, ...]``;
* augmentation uses TensorFlow's stateless random ops seeded by ``(seed, 3*n + role)``,
  ``n`` the global sample number ``step*B + i`` and role 0 for the example, 1 for its pair
  and 2 for its target (each gets its own augmentation).

The permutations and partner draws use numpy's ``SeedSequence``/PCG64 generator, whose
streams numpy keeps stable; restarting on another numpy or TensorFlow version may still
change the order of examples or the augmentation (not the sharding).

Sources: a TFDS random-access data source (``load_data_source``,
``builder.as_data_source(split)``; the dataset must be written with
``file_format='array_record'``), whose serialized records are decoded inside the tf.data
graph in parallel, or any sequence of example dicts in the record format of
``sdgan_jax.datasets.features`` (decoded numpy arrays), read through ``tf.numpy_function``.

Landmarks are (x, y) with pixel centres at integer coordinates (``sdgan_jax.faces``);
"left"/"right" are image left/right, so a horizontal flip swaps the left/right semantic
classes and the left/right landmark indices.

TensorFlow is imported here only (DESIGN §1: models, losses and the benchmark path never
import it).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import threading
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
import tensorflow as tf

from sdgan_jax.datasets.features import NUM_LANDMARKS, SEMANTIC_CLASSES

# The authors resize the 128-px crops to 144 before a random 128 crop (DESIGN §2).
AUTHORS_RESIZE_SCALE = 144 / 128


def _mirror_classes() -> np.ndarray:
  """Class id -> class id of the same part after a horizontal flip (left_x <-> right_x)."""
  ids = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}
  table = np.arange(len(SEMANTIC_CLASSES), dtype=np.int32)
  for name, i in ids.items():
    for a, b in (('left_', 'right_'), ('right_', 'left_')):
      if name.startswith(a):
        table[i] = ids[b + name[len(a):]]
  return table


def _mirror_landmarks() -> np.ndarray:
  """Landmark index -> index of its mirror image in the 68-point iBUG scheme."""
  pairs = [(i, 16 - i) for i in range(8)]                          # jaw
  pairs += [(17 + i, 26 - i) for i in range(5)]                    # brows
  pairs += [(31, 35), (32, 34)]                                    # nose base
  pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
  pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]      # outer lips
  pairs += [(60, 64), (61, 63), (65, 67)]                          # inner lips
  table = np.arange(NUM_LANDMARKS, dtype=np.int32)
  for a, b in pairs:
    table[a], table[b] = b, a
  return table


MIRROR_CLASSES = _mirror_classes()
MIRROR_LANDMARKS = _mirror_landmarks()


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training augmentation (DESIGN §2: "resize 144, random crop, resize 128").

  Attributes:
    flip_prob: probability of a horizontal flip (image, mask, semantic map and landmarks
      together; left/right classes and landmarks swapped).
    resize_scale: the record (R px) is resized to ``round(R * resize_scale)`` px and a
      random R x R crop taken before the resize to the output resolution; None or 1 for
      no crop jitter. The authors' value is 144/128.
  """

  flip_prob: float = 0.5
  resize_scale: float | None = AUTHORS_RESIZE_SCALE

  def __post_init__(self):
    if not 0.0 <= self.flip_prob <= 1.0:
      raise ValueError(f'flip_prob must be in [0, 1], got {self.flip_prob}')
    if self.resize_scale is not None and self.resize_scale < 1.0:
      raise ValueError(f'resize_scale must be >= 1 (the crop is the record size), got '
                       f'{self.resize_scale}')


NO_AUGMENTATION = Augmentation(flip_prob=0.0, resize_scale=None)


# --------------------------------------------------------------------------------------
# Sources.


def load_data_source(dataset: str | os.PathLike, split: str,
                     data_dir: str | os.PathLike | None = None):
  """A TFDS random-access data source of a prepared face dataset.

  Args:
    dataset: a prepared dataset's directory (``<data_dir>/<name>/<version>``, holding
      ``dataset_info.json``) or a registered TFDS name (e.g. 'name:1.0.0').
    split: 'train', 'test', or any TFDS split string ('train[:90%]').
    data_dir: TFDS data directory for a registered name.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(dataset)
  if (path / 'dataset_info.json').is_file():
    builder = tfds.builder_from_directory(str(path))
  else:
    builder = tfds.builder(str(dataset), data_dir=data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'dataset {dataset!r} is not prepared in {builder.data_dir}: prepare it first '
          '(tools/prepare_data.py), or pass the directory that holds its dataset_info.json')
  return builder.as_data_source(split)


class _TfdsRecords:
  """A TFDS ArrayRecord data source: raw records, decoded in the tf.data graph."""

  def __init__(self, source):
    self._raw = source.data_source  # array_record's source: serialized tf.Examples
    self._features = source.dataset_info.features
    self._lock = threading.Lock()
    missing = {'image', 'mask', 'semantic', 'landmarks', 'label'} - set(self._features.keys())
    if missing:
      raise ValueError(f'{source!r} lacks the features {sorted(missing)} of the prepared '
                       'face format (sdgan_jax.datasets.features)')
    self.resolution = int(self._features['image'].shape[0])
    self.signature = (tf.string,)

  def __len__(self) -> int:
    return len(self._raw)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray]:
    with self._lock:
      records = self._raw.__getitems__([int(i) for i in indices])
    return (np.array(records, dtype=object),)

  def decode(self, values, image_only: bool = False) -> dict[str, tf.Tensor]:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    (serialized,) = values
    decoders = None
    if image_only:  # the pair needs its image and label only: skip the other PNGs
      decoders = {k: tfds.decode.SkipDecoding()
                  for k in self._features.keys() if k not in ('image', 'label')}
    example = self._features.deserialize_example(serialized, decoders=decoders)
    return {k: example[k] for k in ('image', 'label')} if image_only else dict(example)

  def labels(self) -> np.ndarray:
    """Every record's 'label', read by parsing only that field of the serialized records."""
    n = len(self)
    ds = tf.data.Dataset.range(n).batch(4096)
    spec = {'label': tf.io.FixedLenFeature([], tf.int64)}
    out = []
    for batch in ds.as_numpy_iterator():
      (records,) = self.read(batch)
      out.append(tf.io.parse_example(tf.constant(records, tf.string), spec)['label'].numpy())
    return np.concatenate(out) if out else np.zeros([0], np.int64)


class _ExampleRecords:
  """A sequence of decoded example dicts (numpy), in the record format of features.py."""

  _KEYS = ('image', 'mask', 'semantic', 'landmarks', 'label')

  def __init__(self, examples: Sequence[Mapping[str, Any]]):
    if not len(examples):  # pylint: disable=g-explicit-length-test
      raise ValueError('the example source is empty')
    first = examples[0]
    missing = set(self._KEYS) - set(first)
    if missing:
      raise ValueError(f'examples lack the keys {sorted(missing)} of the prepared face '
                       'format (sdgan_jax.datasets.features)')
    self._examples = examples
    self.resolution = int(np.shape(first['image'])[0])
    r = self.resolution
    self._shapes = {'image': (r, r, 3), 'mask': (r, r, 1), 'semantic': (r, r, 1),
                    'landmarks': (NUM_LANDMARKS, 2), 'label': ()}
    self._dtypes = {'image': np.uint8, 'mask': np.uint8, 'semantic': np.uint8,
                    'landmarks': np.float32, 'label': np.int64}
    self.signature = tuple(tf.as_dtype(self._dtypes[k]) for k in self._KEYS)

  def __len__(self) -> int:
    return len(self._examples)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
    out = {k: np.empty((len(indices),) + self._shapes[k], self._dtypes[k]) for k in self._KEYS}
    for n, i in enumerate(indices):
      example = self._examples[int(i)]
      for k in self._KEYS:
        value = np.asarray(example[k])
        if value.shape != self._shapes[k]:
          raise ValueError(f'example {int(i)}: {k!r} has shape {value.shape}, expected '
                           f'{self._shapes[k]} (all examples must share one resolution)')
        out[k][n] = value
    return tuple(out[k] for k in self._KEYS)

  def decode(self, values, image_only: bool = False) -> dict[str, tf.Tensor]:
    example = dict(zip(self._KEYS, values))
    for k, shape in self._shapes.items():
      example[k] = tf.ensure_shape(example[k], shape)
    return {k: example[k] for k in ('image', 'label')} if image_only else example

  def labels(self) -> np.ndarray:
    return np.array([int(self._examples[i]['label']) for i in range(len(self))], np.int64)


def _as_records(source):
  if isinstance(source, (_TfdsRecords, _ExampleRecords)):
    return source
  if hasattr(source, 'data_source') and hasattr(source, 'dataset_info'):
    return _TfdsRecords(source)
  if hasattr(source, '__getitem__') and hasattr(source, '__len__'):
    return _ExampleRecords(source)
  raise TypeError(f'unsupported source {type(source).__name__}: pass a TFDS data source '
                  '(load_data_source / builder.as_data_source(split), array_record format) '
                  'or a sequence of example dicts')


def read_labels(source) -> np.ndarray:
  """int64 [N]: the 'label' of every example of ``source`` (a data source or sequence)."""
  return _as_records(source).labels()


# --------------------------------------------------------------------------------------
# The deterministic plan: which examples, pairs and seeds make step k.


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training steps in one epoch (the remainder of ``num_examples // batch_size`` is dropped)."""
  return num_examples // batch_size


def _process_args(batch_size: int, process_index: int | None, process_count: int | None):
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count})')
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f'the global batch_size {batch_size} must be a positive multiple of the '
                     f'process count {process_count}')
  return process_index, process_count, batch_size // process_count


class TrainPlan:
  """Pure-numpy schedule of the training stream: examples, pairs, targets of each step.

  Args:
    labels: int [N] identity label of every example of the split.
    batch_size: global batch size of one update (over all processes).
    seed: non-negative int.
    process_index, process_count: this process's shard (default: JAX's).
    slots: batches per step (fresh batches for each update; module doc).
  """

  def __init__(self, labels, batch_size: int, seed: int, process_index: int | None = None,
               process_count: int | None = None, slots: int = 1):
    labels = np.asarray(labels, np.int64)
    if labels.ndim != 1:
      raise ValueError(f'labels must be 1-D, got shape {labels.shape}')
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f'seed must be a non-negative int, got {seed!r}')
    if not isinstance(slots, (int, np.integer)) or slots < 1:
      raise ValueError(f'slots must be a positive int, got {slots!r}')
    self.process_index, self.process_count, self.local_batch_size = _process_args(
        batch_size, process_index, process_count)
    self.labels = labels
    self.batch_size = int(batch_size)
    self.slots = int(slots)
    self.seed = int(seed)
    self.num_examples = len(labels)
    self.steps_per_epoch = steps_per_epoch(self.num_examples, self.batch_size * self.slots)
    if self.steps_per_epoch == 0:
      raise ValueError(f'the split has {self.num_examples} examples, fewer than one step\'s '
                       f'{self.slots} global batch(es) of {self.batch_size}: lower batch_size'
                       + (' or turn off train.fresh_batches' if self.slots > 1 else ''))
    # Examples grouped by label: order[start[i]:start[i]+count[i]] are i's identity.
    self._order = np.argsort(labels, kind='stable')
    sorted_labels = labels[self._order]
    self._start = np.searchsorted(sorted_labels, labels, 'left')
    self._count = np.searchsorted(sorted_labels, labels, 'right') - self._start
    self._rank = np.empty_like(self._order)
    self._rank[self._order] = np.arange(self.num_examples)
    self._rank -= self._start
    if np.all(self._count == self.num_examples):
      raise ValueError('all examples have one label: pairs of different identities need at '
                       'least two identities in the split')
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
    start, count = self._start[index], self._count[index]
    k = rng.integers(0, self.num_examples - count)
    return self._order[np.where(k < start, k, k + count)]

  def global_step(self, step: int) -> dict[str, np.ndarray]:
    """The whole global batch of ``step`` (all processes, all slots, slot-major)."""
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    epoch, j = divmod(int(step), self.steps_per_epoch)
    b = self.batch_size * self.slots
    index = self.permutation(epoch)[j * b:(j + 1) * b]
    same = np.arange(b) % self.batch_size % 2 == 0
    rng = np.random.default_rng([self.seed, epoch, j, 1])
    start, count = self._start[index], self._count[index]
    # Same identity: uniform over the identity's other examples (itself if it has none).
    k = rng.integers(0, np.maximum(count - 1, 1))
    k = k + (k >= self._rank[index])
    same_partner = np.where(count > 1, self._order[start + np.minimum(k, count - 1)], index)
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
    take = np.concatenate([np.arange(lo, lo + self.local_batch_size) + s * self.batch_size
                           for s in range(self.slots)])
    return {k: v[take] for k, v in plan.items()}


# --------------------------------------------------------------------------------------
# Decoding and augmentation (tf.data graph).


def _stateless_seed(seed: int, counter) -> tf.Tensor:
  return tf.stack([tf.constant(seed % (1 << 63), tf.int64), tf.cast(counter, tf.int64)])


def _resize(x, size: int, method: str):
  if x.shape[0] == size:
    return tf.cast(x, tf.float32) if method == 'bilinear' else x
  if method == 'nearest':
    return tf.image.resize(x, [size, size], method='nearest')
  # Antialiased bilinear: a triangle filter as wide as the scale when shrinking (area-like).
  return tf.image.resize(tf.cast(x, tf.float32), [size, size], method='bilinear',
                         antialias=True)


def _scale_points(points, scale: float):
  """Maps (x, y) under a resize by ``scale`` (pixel centres at integer coordinates)."""
  return points if scale == 1 else (points + 0.5) * scale - 0.5


def preprocess(example: Mapping[str, tf.Tensor], seed: tf.Tensor | None, resolution: int,
               augmentation: Augmentation = NO_AUGMENTATION,
               image_only: bool = False) -> dict[str, tf.Tensor]:
  """One decoded record -> model inputs at ``resolution`` (paper §4.1, DESIGN §2).

  Args:
    example: 'image' uint8 [R,R,3], and unless ``image_only`` 'mask' uint8 [R,R,1] (0/255),
      'semantic' uint8 [R,R,1], 'landmarks' float32 [68,2].
    seed: int64 [2] stateless seed of this example's augmentation (unused without one).
    resolution: output size.
    augmentation: ``NO_AUGMENTATION`` for evaluation.
    image_only: process only the image (the contrastive pair).

  Returns:
    'image' float32 [r,r,3] in [0,1]; 'mask' float32 [r,r,1] in {0,1}; 'semantic' uint8
    [r,r]; 'landmarks' float32 [68,2] in output pixels.
  """
  r = int(example['image'].shape[0])
  image = tf.cast(example['image'], tf.float32) / 255.0
  planes = {} if image_only else {'mask': example['mask'], 'semantic': example['semantic']}
  points = None if image_only else tf.cast(example['landmarks'], tf.float32)
  augmented = augmentation.flip_prob > 0 or (augmentation.resize_scale or 1) > 1
  if augmented and seed is None:
    raise ValueError('augmentation needs a stateless seed; pass seed=, or NO_AUGMENTATION')
  if augmented:
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

  scale = augmentation.resize_scale
  if scale is not None and round(r * scale) > r:
    size = round(r * scale)
    image = _resize(image, size, 'bilinear')
    planes = {k: _resize(v, size, 'nearest') for k, v in planes.items()}
    offset = tf.random.stateless_uniform([2], crop_seed, 0, size - r + 1, dtype=tf.int32)
    image = tf.slice(image, [offset[0], offset[1], 0], [r, r, 3])
    planes = {k: tf.slice(v, [offset[0], offset[1], 0], [r, r, 1]) for k, v in planes.items()}
    if points is not None:
      points = _scale_points(points, size / r) - tf.cast(offset[::-1], tf.float32)

  if augmentation.flip_prob > 0:
    flip = tf.random.stateless_uniform([], flip_seed) < augmentation.flip_prob
    image = tf.where(flip, image[:, ::-1], image)
    if planes:
      semantic = planes['semantic']
      mirrored = tf.gather(tf.constant(MIRROR_CLASSES, tf.uint8),
                           tf.cast(semantic[:, ::-1], tf.int32))
      planes = {'mask': tf.where(flip, planes['mask'][:, ::-1], planes['mask']),
                'semantic': tf.where(flip, mirrored, semantic)}
    if points is not None:
      # x -> r - 1 - x, and each point takes the place of its mirror image.
      mirrored = tf.gather(points, MIRROR_LANDMARKS) * [-1.0, 1.0] + [r - 1.0, 0.0]
      points = tf.where(flip, mirrored, points)

  out = {'image': tf.clip_by_value(_resize(image, resolution, 'bilinear'), 0.0, 1.0)}
  if not image_only:
    out['mask'] = tf.cast(_resize(planes['mask'], resolution, 'nearest') > 127, tf.float32)
    out['semantic'] = _resize(planes['semantic'], resolution, 'nearest')[..., 0]
    out['landmarks'] = _scale_points(points, resolution / r)
  return out


def _configure_tf():
  # The input pipeline runs on the host: keep TensorFlow off any accelerator JAX uses.
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices; nothing to hide then
    pass


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


# --------------------------------------------------------------------------------------
# Iterators.


def train_dataset(source, *, batch_size: int, resolution: int, seed: int, start_step: int = 0,
                  num_steps: int | None = None, augmentation: Augmentation = Augmentation(),
                  process_index: int | None = None, process_count: int | None = None,
                  labels=None, prefetch: int = 2, slots: int = 1) -> tf.data.Dataset:
  """The training stream of this process as a ``tf.data.Dataset`` of per-process batches
  (``slots`` batches concatenated, slot-major). See ``train_iterator``."""
  _configure_tf()
  records = _as_records(source)
  if labels is None:
    labels = records.labels()
  plan = TrainPlan(labels, batch_size, seed, process_index, process_count, slots)
  if len(plan.labels) != len(records):
    raise ValueError(f'labels has {len(plan.labels)} entries but the source has '
                     f'{len(records)} examples')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  n_main = len(records.signature)
  roles = ('index', 'pair_index', 'target_index')

  def read_step(step):
    p = plan.step(int(step))
    values = [v for role in roles for v in records.read(p[role])]
    return (*values, *(p[role] for role in roles), p['pair_same'], p['sample'])

  signature = (*records.signature * len(roles), *[tf.int64] * len(roles), tf.bool, tf.int64)

  def read_fn(step):
    values = tf.numpy_function(read_step, [step], signature, stateful=False)
    return tuple(values)

  def process(*values):
    main, pair, target = (values[i * n_main:(i + 1) * n_main] for i in range(len(roles)))
    index, pair_index, target_index, pair_same, sample = values[len(roles) * n_main:]
    example = records.decode(main)
    out = preprocess(example, _stateless_seed(seed, 3 * sample), resolution, augmentation)
    out.update(label=tf.cast(example['label'], tf.int32), index=tf.cast(index, tf.int32))
    for role, (name, record, position) in enumerate(
        [('pair', pair, pair_index), ('target', target, target_index)], start=1):
      other = records.decode(record, image_only=True)
      other_out = preprocess(other, _stateless_seed(seed, 3 * sample + role), resolution,
                             augmentation, image_only=True)
      out.update({f'{name}_image': other_out['image'],
                  f'{name}_label': tf.cast(other['label'], tf.int32),
                  f'{name}_index': tf.cast(position, tf.int32)})
    out['pair_same'] = tf.cast(pair_same, tf.float32)
    return out

  steps = tf.data.Dataset.counter(start_step) if num_steps is None else \
      tf.data.Dataset.range(start_step, start_step + num_steps)
  ds = steps.map(read_fn, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.unbatch().map(process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(plan.local_batch_size * plan.slots, drop_remainder=True).prefetch(prefetch)
  return ds.with_options(_options())


def train_iterator(source, *, batch_size: int, resolution: int, seed: int,
                   start_step: int = 0, num_steps: int | None = None,
                   augmentation: Augmentation = Augmentation(),
                   process_index: int | None = None, process_count: int | None = None,
                   labels=None, prefetch: int = 2,
                   slots: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Training batches of this process as numpy dicts (paper §4.1; docs/training.md).

  Args:
    source: a TFDS data source of a prepared split (``load_data_source``) or a sequence of
      example dicts in the ``sdgan_jax.datasets.features`` format.
    batch_size: the global batch size of one update; each process yields
      ``batch_size / process_count`` per slot.
    resolution: output size (128 for training in the paper, 64 for its numbers).
    seed: non-negative int; with ``start_step`` it determines every batch.
    start_step: the first step to yield (restart from a checkpoint's step).
    num_steps: how many steps to yield (default: endless).
    augmentation: ``Augmentation()`` (the authors') or ``NO_AUGMENTATION``.
    process_index, process_count: this process's shard (default: JAX's).
    labels: the source's labels if already known (skips reading them).
    prefetch: batches to prepare ahead.
    slots: batches per step; with more than one every array gets a leading slot axis
      ``[slots, b, ...]`` (fresh batches for each update, module doc).

  Yields:
    'image' float32 [b,r,r,3] in [0,1]; 'mask' float32 [b,r,r,1] in {0,1}; 'semantic' uint8
    [b,r,r] class ids (one-hot on device); 'landmarks' float32 [b,68,2]; 'label' int32 [b];
    'index' int32 [b] (position in the source); 'pair_image' float32 [b,r,r,3]; 'pair_label',
    'pair_index' int32 [b]; 'pair_same' float32 [b], 1 iff the pair shows the same identity;
    'target_image' float32 [b,r,r,3], 'target_label', 'target_index' int32 [b]: an example
    of another identity, the person the generator is asked to move towards.
  """
  ds = train_dataset(source, batch_size=batch_size, resolution=resolution, seed=seed,
                     start_step=start_step, num_steps=num_steps, augmentation=augmentation,
                     process_index=process_index, process_count=process_count,
                     labels=labels, prefetch=prefetch, slots=slots)
  for batch in ds.as_numpy_iterator():
    if slots > 1:
      batch = {k: v.reshape(slots, -1, *v.shape[1:]) for k, v in batch.items()}
    yield batch


def eval_shard(num_examples: int, batch_size: int, process_index: int | None = None,
               process_count: int | None = None) -> np.ndarray:
  """Source indices of this process's evaluation batches, [num_batches, b], -1 = padding.

  Process p takes the contiguous block ``[p*n, (p+1)*n)`` of ``n = ceil(N / P)`` examples, in
  order; every process yields the same number of batches (collectives need that).
  """
  process_index, process_count, local = _process_args(batch_size, process_index,
                                                      process_count)
  per_process = math.ceil(num_examples / process_count)
  num_batches = max(1, math.ceil(per_process / local))
  lo = min(process_index * per_process, num_examples)
  hi = min(lo + per_process, num_examples)
  index = np.full(num_batches * local, -1, np.int64)
  index[:hi - lo] = np.arange(lo, hi)
  return index.reshape(num_batches, local)


def eval_iterator(source, *, batch_size: int, resolution: int,
                  process_index: int | None = None, process_count: int | None = None,
                  prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Evaluation batches: no augmentation, no shuffling, last batch padded.

  Yields the keys of ``train_iterator`` without the pair ones, plus 'valid' float32 [b]
  (0 for padding, whose arrays are zeros and whose 'index' and 'label' are -1).
  """
  _configure_tf()
  records = _as_records(source)
  shard = eval_shard(len(records), batch_size, process_index, process_count)

  def read_batch(b):
    index = shard[int(b)]
    return (*records.read(np.maximum(index, 0)), index)

  signature = (*records.signature, tf.int64)

  def process(*values):
    example = records.decode(values[:-1])
    index = values[-1]
    valid = index >= 0
    out = preprocess(example, None, resolution, NO_AUGMENTATION)
    out = {k: tf.where(valid, v, tf.zeros_like(v)) for k, v in out.items()}
    out.update(label=tf.where(valid, tf.cast(example['label'], tf.int32), -1),
               index=tf.cast(index, tf.int32), valid=tf.cast(valid, tf.float32))
    return out

  ds = tf.data.Dataset.range(len(shard)).map(
      lambda b: tuple(tf.numpy_function(read_batch, [b], signature, stateful=False)),
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.unbatch().map(process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(shard.shape[1], drop_remainder=True).prefetch(prefetch)
  yield from ds.with_options(_options()).as_numpy_iterator()
