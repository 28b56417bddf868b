"""The faces an evaluation reads (docs/evaluation.md): the splits of a prepared dataset, each
face's person and bank row, and batches of them at several resolutions at once.

* identities: ``label`` within each split; evaluating several splits (``'train,test'``, for
  the sample faces whose test split holds a single person) keeps them apart;
* ``max_faces``: that many faces evenly spaced over the concatenated splits, so every split
  and person is sampled.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import numpy as np


@dataclasses.dataclass
class Stream:
  """Faces read by one evaluation iterator, with per-face facts looked up by 'index'.

  Attributes:
    source: a TFDS data source, or a list of decoded examples (with ``max_faces``).
    classes: int [len(source)]: the person, unique over all evaluated splits.
    bank_labels: int [len(source)]: the face's own row in the identity bank of a model
      trained on this dataset (its training-split label), -1 when not a training face.
  """

  source: Any
  classes: np.ndarray
  bank_labels: np.ndarray


def _open_splits(dataset: str, split: str) -> tuple[list[str], list[Any]]:
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  splits = [s.strip() for s in split.split(',') if s.strip()]
  if not splits:
    raise ValueError(f'--split {split!r} names no split; use e.g. test or train,test')
  if not (pathlib.Path(dataset) / 'dataset_info.json').is_file():
    raise FileNotFoundError(
        f'{dataset} is not a prepared dataset (no dataset_info.json): prepare one with '
        '`python tools/prepare_data.py --source samples --output data` and pass '
        'data/sdgan_faces/samples_128/1.0.0')
  return splits, [input_pipeline.load_data_source(dataset, s) for s in splits]


def load_streams(dataset: str, split: str,
                 max_faces: int | None = None) -> tuple[list[Stream], str, int]:
  """(the streams, the dataset's full name, its stored resolution) of the comma-separated
  ``split``s of the prepared ``dataset``."""
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  splits, sources = _open_splits(dataset, split)
  stored = int(sources[0].dataset_info.features['image'].shape[0])
  name = sources[0].dataset_info.full_name
  labels = [input_pipeline.read_labels(s) for s in sources]
  offsets = np.cumsum([0] + [int(l.max()) + 1 if len(l) else 0 for l in labels])
  classes = [l + o for l, o in zip(labels, offsets)]
  # Labels of the training split are the rows of a bank built from this dataset.
  bank_labels = [l if s.split('[')[0] == 'train' else np.full_like(l, -1)
                 for s, l in zip(splits, labels)]
  sizes = [len(s) for s in sources]
  if sum(sizes) < 2:
    raise ValueError(f'{dataset} split {split!r} has {sum(sizes)} faces: '
                     'Recall@1 and FID need more')
  if max_faces is None or max_faces >= sum(sizes):
    return [Stream(*t) for t in zip(sources, classes, bank_labels)], name, stored
  # Evenly spaced over the concatenated splits, so every split and person is sampled; one
  # list of decoded examples, so one evaluation iterator reads them all.
  chosen = np.unique(np.linspace(0, sum(sizes) - 1, max(max_faces, 2))
                     .round().astype(int))
  bounds = np.cumsum([0] + sizes)
  which = np.searchsorted(bounds, chosen, side='right') - 1
  local = chosen - bounds[which]
  examples = [sources[w][int(i)] for w, i in zip(which, local)]
  return [Stream(examples, np.array([classes[w][i] for w, i in zip(which, local)]),
                  np.array([bank_labels[w][i] for w, i in zip(which, local)]))], name, stored


def batches(streams: Sequence[Stream], resolutions: Sequence[int], batch_size: int):
  """Evaluation batches of every stream, one per resolution, zipped (same faces, same order)."""
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  for stream in streams:
    iterators = [input_pipeline.eval_iterator(stream.source, batch_size=batch_size,
                                              resolution=r, process_index=0, process_count=1)
                 for r in resolutions]
    for batches in zip(*iterators):
      yield stream, dict(zip(resolutions, batches))
