"""The faces an evaluation reads (docs/evaluation.md): the splits of a prepared dataset, each
face's person and bank row, and batches of them at several resolutions at once.

* identities: ``label`` within each split; evaluating several splits (``'train,test'``, for
  the sample faces whose test split holds a single person) keeps them apart;
* ``max_faces``: that many faces evenly spaced over the concatenated splits, so every split
  and person is sampled.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Sequence
from typing import Any

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


class DatasetError(ValueError):
  """A prepared dataset that cannot be evaluated: an unknown split, an unreadable
  dataset_info.json, records that cannot be read. One line, naming the file and the fix."""


def _first_line(e: BaseException, limit: int = 160) -> str:
  """``Type: first line`` of an error, TensorFlow's ``{{function_node ...}}`` prefix cut."""
  text = re.sub(r'\{\{.*?\}\}\s*', '', str(e)).strip()
  line = text.splitlines()[0] if text else ''
  line = line if len(line) <= limit else line[: limit - 3] + '...'
  return f'{type(e).__name__}: {line}'.rstrip(': ')


def _open_splits(dataset: str, split: str) -> tuple[list[str], list[Any]]:
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  splits = [s.strip() for s in split.split(',') if s.strip()]
  if not splits:
    raise DatasetError(f'--split {split!r} names no split; use e.g. test or train,test')
  info = pathlib.Path(dataset) / 'dataset_info.json'
  if not info.is_file():
    raise FileNotFoundError(
      f'{dataset} is not a prepared dataset (no dataset_info.json): prepare one with '
      '`python tools/prepare_data.py --source samples --output data` and pass '
      'data/sdgan_faces/samples_128/1.0.0'
    )
  again = 'prepare the dataset again with tools/prepare_data.py'
  try:
    known = sorted(s['name'] for s in json.loads(info.read_text()).get('splits', []))
  except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
    raise DatasetError(
      f'{info} is not a readable dataset description ({_first_line(e)}): {again}'
    ) from None
  for name in splits:
    if known and name.split('[')[0] not in known:
      raise DatasetError(
        f'--split {name!r}: {dataset} has no such split; it has {", ".join(known)}'
      )
  sources = []
  for name in splits:
    try:
      sources.append(input_pipeline.load_data_source(dataset, name))
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(
        f'{dataset}: its split {name!r} cannot be opened ({_first_line(e)}): {again}'
      ) from None
  return splits, sources


def _read_labels(dataset: str, name: str, source) -> np.ndarray:
  """The split's labels; reading them reads every record, so a truncated or damaged
  record file fails here, in one line, before any work."""
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  try:
    return input_pipeline.read_labels(source)
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(
      f'{dataset}: the records of its split {name!r} cannot be read '
      f'(truncated or damaged? {_first_line(e)}): prepare the dataset again '
      'with tools/prepare_data.py'
    ) from None


def load_streams(
  dataset: str, split: str, max_faces: int | None = None
) -> tuple[list[Stream], str, int]:
  """(the streams, the dataset's full name, its stored resolution) of the comma-separated
  ``split``s of the prepared ``dataset``; ``DatasetError`` when it cannot be read."""
  splits, sources = _open_splits(dataset, split)
  stored = int(sources[0].dataset_info.features['image'].shape[0])
  name = sources[0].dataset_info.full_name
  labels = [_read_labels(dataset, which, s) for which, s in zip(splits, sources)]
  offsets = np.cumsum([0] + [int(lab.max()) + 1 if len(lab) else 0 for lab in labels])
  classes = [lab + o for lab, o in zip(labels, offsets)]
  # Labels of the training split are the rows of a bank built from this dataset.
  bank_labels = [
    lab if s.split('[')[0] == 'train' else np.full_like(lab, -1) for s, lab in zip(splits, labels)
  ]
  sizes = [len(s) for s in sources]
  if sum(sizes) < 2:
    raise ValueError(
      f'{dataset} split {split!r} has {sum(sizes)} faces: Recall@1 and FID need more'
    )
  if max_faces is None or max_faces >= sum(sizes):
    return [Stream(*t) for t in zip(sources, classes, bank_labels)], name, stored
  # Evenly spaced over the concatenated splits, so every split and person is sampled; one
  # list of decoded examples, so one evaluation iterator reads them all.
  chosen = np.unique(np.linspace(0, sum(sizes) - 1, max(max_faces, 2)).round().astype(int))
  bounds = np.cumsum([0] + sizes)
  which = np.searchsorted(bounds, chosen, side='right') - 1
  local = chosen - bounds[which]
  examples = [sources[w][int(i)] for w, i in zip(which, local)]
  return (
    [
      Stream(
        examples,
        np.array([classes[w][i] for w, i in zip(which, local)]),
        np.array([bank_labels[w][i] for w, i in zip(which, local)]),
      )
    ],
    name,
    stored,
  )


def batches(streams: Sequence[Stream], resolutions: Sequence[int], batch_size: int):
  """Evaluation batches of every stream, one per resolution, zipped (same faces, same order)."""
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  for stream in streams:
    iterators = [
      input_pipeline.eval_iterator(
        stream.source, batch_size=batch_size, resolution=r, process_index=0, process_count=1
      )
      for r in resolutions
    ]
    for batches in zip(*iterators):
      yield stream, dict(zip(resolutions, batches))
