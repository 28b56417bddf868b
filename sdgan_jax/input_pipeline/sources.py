"""Where the training and evaluation examples come from (docs/data.md): a TFDS random-access
data source of a prepared split, or a sequence of example dicts.

A TFDS source (``builder.as_data_source(split)``; the dataset must be written with
``file_format='array_record'``) gives serialized records, decoded inside the tf.data graph
in parallel; a sequence holds decoded numpy examples in the record format of
``sdgan_jax.datasets.features``, read through ``tf.numpy_function``.
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sdgan_jax.datasets.features import NUM_LANDMARKS


def load_data_source(
  dataset: str | os.PathLike, split: str, data_dir: str | os.PathLike | None = None
):
  """A TFDS random-access data source of a prepared face dataset.

  Args:
    dataset: a prepared dataset's directory (``<data_dir>/<name>/<version>``, holding
      ``dataset_info.json``) or a registered TFDS name (e.g. 'name:1.0.0').
    split: 'train', 'test', or any TFDS split string ('train[:90%]').
    data_dir: TFDS data directory for a registered name.
  """

  path = pathlib.Path(dataset)
  if (path / 'dataset_info.json').is_file():
    builder = tfds.builder_from_directory(str(path))
  else:
    builder = tfds.builder(str(dataset), data_dir=data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
        f'dataset {dataset!r} is not prepared in {builder.data_dir}: prepare it first '
        '(tools/prepare_data.py), or pass the directory that holds its dataset_info.json'
      )
  return builder.as_data_source(split)


class TfdsRecords:
  """A TFDS ArrayRecord data source: raw records, decoded in the tf.data graph."""

  def __init__(self, source):
    self._raw = source.data_source  # array_record's source: serialized tf.Examples
    self._features = source.dataset_info.features
    self._lock = threading.Lock()
    missing = {'image', 'mask', 'semantic', 'landmarks', 'label'} - set(self._features.keys())
    if missing:
      raise ValueError(
        f'{source!r} lacks the features {sorted(missing)} of the prepared '
        'face format (sdgan_jax.datasets.features)'
      )
    self.resolution = int(self._features['image'].shape[0])
    self.signature = (tf.string,)

  def __len__(self) -> int:
    return len(self._raw)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray]:
    with self._lock:
      records = self._raw.__getitems__([int(i) for i in indices])
    return (np.array(records, dtype=object),)

  def decode(self, values, image_only: bool = False) -> dict[str, tf.Tensor]:
    (serialized,) = values
    decoders = None
    if image_only:  # the pair needs its image and label only: skip the other PNGs
      decoders = {
        k: tfds.decode.SkipDecoding() for k in self._features.keys() if k not in ('image', 'label')
      }
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


class ExampleRecords:
  """A sequence of decoded example dicts (numpy), in the record format of features.py."""

  _KEYS = ('image', 'mask', 'semantic', 'landmarks', 'label')

  def __init__(self, examples: Sequence[Mapping[str, Any]]):
    if not len(examples):  # pylint: disable=g-explicit-length-test
      raise ValueError('the example source is empty')
    first = examples[0]
    missing = set(self._KEYS) - set(first)
    if missing:
      raise ValueError(
        f'examples lack the keys {sorted(missing)} of the prepared face '
        'format (sdgan_jax.datasets.features)'
      )
    self._examples = examples
    self.resolution = int(np.shape(first['image'])[0])
    r = self.resolution
    self._shapes = {
      'image': (r, r, 3),
      'mask': (r, r, 1),
      'semantic': (r, r, 1),
      'landmarks': (NUM_LANDMARKS, 2),
      'label': (),
    }
    self._dtypes = {
      'image': np.uint8,
      'mask': np.uint8,
      'semantic': np.uint8,
      'landmarks': np.float32,
      'label': np.int64,
    }
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
          raise ValueError(
            f'example {int(i)}: {k!r} has shape {value.shape}, expected '
            f'{self._shapes[k]} (all examples must share one resolution)'
          )
        out[k][n] = value
    return tuple(out[k] for k in self._KEYS)

  def decode(self, values, image_only: bool = False) -> dict[str, tf.Tensor]:
    example = dict(zip(self._KEYS, values))
    for k, shape in self._shapes.items():
      example[k] = tf.ensure_shape(example[k], shape)
    return {k: example[k] for k in ('image', 'label')} if image_only else example

  def labels(self) -> np.ndarray:
    return np.array([int(self._examples[i]['label']) for i in range(len(self))], np.int64)


def as_records(source) -> TfdsRecords | ExampleRecords:
  """``source`` (a TFDS data source or a sequence of example dicts) as records to read."""
  if isinstance(source, (TfdsRecords, ExampleRecords)):
    return source
  if hasattr(source, 'data_source') and hasattr(source, 'dataset_info'):
    return TfdsRecords(source)
  if hasattr(source, '__getitem__') and hasattr(source, '__len__'):
    return ExampleRecords(source)
  raise TypeError(
    f'unsupported source {type(source).__name__}: pass a TFDS data source '
    '(load_data_source / builder.as_data_source(split), array_record format) '
    'or a sequence of example dicts'
  )


def read_labels(source) -> np.ndarray:
  """int64 [N]: the 'label' of every example of ``source`` (a data source or sequence)."""
  return as_records(source).labels()
