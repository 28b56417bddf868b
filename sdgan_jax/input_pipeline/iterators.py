"""The tf.data streams: training batches of a ``TrainPlan`` and evaluation batches of an
``eval_shard``, each example decoded and augmented in the graph (package doc)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from sdgan_jax.input_pipeline import augment, sources
from sdgan_jax.input_pipeline import plan as plan_lib

# The examples of a training step: the source, its contrastive pair, its target.
_ROLES = ('index', 'pair_index', 'target_index')


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


def _step_reader(records, plan: plan_lib.TrainPlan):
  """A tf.data map: step -> the records and plan entries of this process's examples."""

  def read_step(step):
    p = plan.step(int(step))
    values = [v for role in _ROLES for v in records.read(p[role])]
    return (*values, *(p[role] for role in _ROLES), p['pair_same'], p['sample'])

  signature = (*records.signature * len(_ROLES), *[tf.int64] * len(_ROLES), tf.bool, tf.int64)
  return lambda step: tuple(tf.numpy_function(read_step, [step], signature, stateful=False))


def _training_example(records, seed: int, resolution: int, augmentation: augment.Augmentation):
  """A tf.data map: one example's records -> its model inputs, pair and target images
  (stateless seeds ``3 * sample + role``, package doc)."""
  n_main = len(records.signature)

  def process(*values):
    main, pair, target = (values[i * n_main : (i + 1) * n_main] for i in range(len(_ROLES)))
    index, pair_index, target_index, pair_same, sample = values[len(_ROLES) * n_main :]
    example = records.decode(main)
    out = augment.preprocess(
      example, augment.stateless_seed(seed, 3 * sample), resolution, augmentation
    )
    out.update(label=tf.cast(example['label'], tf.int32), index=tf.cast(index, tf.int32))
    for role, (name, record, position) in enumerate(
      [('pair', pair, pair_index), ('target', target, target_index)], start=1
    ):
      other = records.decode(record, image_only=True)
      other_out = augment.preprocess(
        other,
        augment.stateless_seed(seed, 3 * sample + role),
        resolution,
        augmentation,
        image_only=True,
      )
      out.update(
        {
          f'{name}_image': other_out['image'],
          f'{name}_label': tf.cast(other['label'], tf.int32),
          f'{name}_index': tf.cast(position, tf.int32),
        }
      )
    out['pair_same'] = tf.cast(pair_same, tf.float32)
    return out

  return process


def train_dataset(
  source,
  *,
  batch_size: int,
  resolution: int,
  seed: int,
  start_step: int = 0,
  num_steps: int | None = None,
  augmentation: augment.Augmentation = augment.Augmentation(),
  process_index: int | None = None,
  process_count: int | None = None,
  labels=None,
  prefetch: int = 2,
  slots: int = 1,
  sampling: str = 'epoch',
) -> tf.data.Dataset:
  """The training stream of this process as a ``tf.data.Dataset`` of per-process batches
  (``slots`` batches concatenated, slot-major). See ``train_iterator``."""
  _configure_tf()
  records = sources.as_records(source)
  if labels is None:
    labels = records.labels()
  plan = plan_lib.TrainPlan(labels, batch_size, seed, process_index, process_count, slots, sampling)
  if len(plan.labels) != len(records):
    raise ValueError(
      f'labels has {len(plan.labels)} entries but the source has {len(records)} examples'
    )
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  steps = (
    tf.data.Dataset.counter(start_step)
    if num_steps is None
    else tf.data.Dataset.range(start_step, start_step + num_steps)
  )
  ds = steps.map(_step_reader(records, plan), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.unbatch().map(
    _training_example(records, seed, resolution, augmentation), num_parallel_calls=tf.data.AUTOTUNE
  )
  ds = ds.batch(plan.local_batch_size * plan.slots, drop_remainder=True).prefetch(prefetch)
  return ds.with_options(_options())


def train_iterator(
  source,
  *,
  batch_size: int,
  resolution: int,
  seed: int,
  start_step: int = 0,
  num_steps: int | None = None,
  augmentation: augment.Augmentation = augment.Augmentation(),
  process_index: int | None = None,
  process_count: int | None = None,
  labels=None,
  prefetch: int = 2,
  slots: int = 1,
  sampling: str = 'epoch',
) -> Iterator[dict[str, np.ndarray]]:
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
    augmentation: one of ``augment.PRESETS`` (default 'shift_flip') or
      ``NO_AUGMENTATION``.
    process_index, process_count: this process's shard (default: JAX's).
    labels: the source's labels if already known (skips reading them).
    prefetch: batches to prepare ahead.
    slots: batches per step; with more than one every array gets a leading slot axis
      ``[slots, b, ...]`` (fresh batches for each update, package doc).
    sampling: 'epoch' (package doc) or 'authors' (``TrainPlan``: their sampler).

  Yields:
    'image' float32 [b,r,r,3] in [0,1]; 'mask' float32 [b,r,r,1] in {0,1}; 'semantic' uint8
    [b,r,r] class ids (one-hot on device); 'landmarks' float32 [b,68,2]; 'label' int32 [b];
    'index' int32 [b] (position in the source); 'pair_image' float32 [b,r,r,3]; 'pair_label',
    'pair_index' int32 [b]; 'pair_same' float32 [b], 1 iff the pair shows the same identity;
    'target_image' float32 [b,r,r,3], 'target_label', 'target_index' int32 [b]: an example
    of another identity, the person the generator is asked to move towards.
  """
  ds = train_dataset(
    source,
    batch_size=batch_size,
    resolution=resolution,
    seed=seed,
    start_step=start_step,
    num_steps=num_steps,
    augmentation=augmentation,
    process_index=process_index,
    process_count=process_count,
    labels=labels,
    prefetch=prefetch,
    slots=slots,
    sampling=sampling,
  )
  for batch in ds.as_numpy_iterator():
    if slots > 1:
      batch = {k: v.reshape(slots, -1, *v.shape[1:]) for k, v in batch.items()}
    yield batch


def _evaluation_example(records, resolution: int):
  """A tf.data map: one record and its index (-1: padding) -> model inputs and 'valid'."""

  def process(*values):
    example = records.decode(values[:-1])
    index = values[-1]
    valid = index >= 0
    out = augment.preprocess(example, None, resolution, augment.NO_AUGMENTATION)
    out = {k: tf.where(valid, v, tf.zeros_like(v)) for k, v in out.items()}
    out.update(
      label=tf.where(valid, tf.cast(example['label'], tf.int32), -1),
      index=tf.cast(index, tf.int32),
      valid=tf.cast(valid, tf.float32),
    )
    return out

  return process


def eval_iterator(
  source,
  *,
  batch_size: int,
  resolution: int,
  process_index: int | None = None,
  process_count: int | None = None,
  prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
  """Evaluation batches: no augmentation, no shuffling, last batch padded.

  Yields the keys of ``train_iterator`` without the pair ones, plus 'valid' float32 [b]
  (0 for padding, whose arrays are zeros and whose 'index' and 'label' are -1).
  """
  _configure_tf()
  records = sources.as_records(source)
  shard = plan_lib.eval_shard(len(records), batch_size, process_index, process_count)

  def read_batch(b):
    index = shard[int(b)]
    return (*records.read(np.maximum(index, 0)), index)

  signature = (*records.signature, tf.int64)
  ds = tf.data.Dataset.range(len(shard)).map(
    lambda b: tuple(tf.numpy_function(read_batch, [b], signature, stateful=False)),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  ds = ds.unbatch().map(
    _evaluation_example(records, resolution), num_parallel_calls=tf.data.AUTOTUNE
  )
  ds = ds.batch(shard.shape[1], drop_remainder=True).prefetch(prefetch)
  yield from ds.with_options(_options()).as_numpy_iterator()
