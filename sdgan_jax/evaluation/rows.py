"""The rows of the evaluation's tables (docs/evaluation.md): the originals, the baselines and
one row per trained model, with what each model row is given.

* a model runs at its own resolution on the same faces read at that resolution; when that
  differs from the evaluation's, its generated face is resized to it and composited into
  the evaluation-size original with the evaluation-size mask (``model_output``);
* a model gets the kind of semantic map it was trained on (its workdir's
  ``semantic_maps.json``, ``sdgan_jax.semantic_source``): the dataset's own maps when
  they are of that kind (``semantic_source.from_dataset``), else its face parser's maps
  of the crops (EAGRNet, paper §3.2; the recorded parser or ``parser``) or landmark
  polygons drawn from the crops' landmarks; each model row names its maps
  (``assign_semantic_maps``, ``model_semantic``);
* each face's target identity is drawn, seeded by ``(seed, model, batch)``, uniformly from
  the model's identity bank; when the bank was built from this dataset and the face
  belongs to its training split, its own identity is excluded (test identities are never
  in the bank, so any target is another person, as in ``train._eval_metrics``;
  ``draw_targets``).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from sdgan_jax import semantic_source, targets
from sdgan_jax.evaluation.eval_options import EvalOptions


@dataclasses.dataclass
class Row:
  """One row of the tables: its key and name, and for a model its workdir, step, generator
  and semantic maps."""

  key: str
  name: str
  kind: str  # 'original', 'baseline' or 'model'
  checkpoint: str | None = None
  step: int | None = None
  generator: Any = None
  bank_is_this_dataset: bool = False
  maps: str = 'dataset'  # the model's semantic maps: 'dataset', 'parser' or 'polygons'
  parser: Any = None
  semantic_maps: str | None = None  # 'polygons' or the parser's fingerprint


def assign_semantic_maps(rows: Sequence[Row], options: EvalOptions) -> None:
  """Which semantic maps each model row gets (module doc); loads the face parsers."""
  dataset_maps = semantic_source.from_dataset(options.dataset)
  loaded = {}
  for row in rows:
    record = row.generator.semantic_maps
    parser = semantic_source.parser_for(
      record,
      loaded.get(record.parser_fingerprint, options.parser),
      model=f'--checkpoint {row.checkpoint}',
      batch_size=options.batch_size,
    )
    row.parser, row.semantic_maps = parser, record.label
    if parser is not None:
      loaded[record.parser_fingerprint] = parser
    same = dataset_maps.source == record.source == semantic_source.POLYGONS or (
      dataset_maps.source == record.source
      and semantic_source.same_weights(dataset_maps.label, record.label)
    )
    row.maps = 'dataset' if same else record.source


def model_semantic(row: Row, own: dict) -> np.ndarray:
  """The semantic maps [b, r, r] of a model row for the batch at its resolution."""
  if row.maps == 'dataset':
    return np.asarray(own['semantic'])
  if row.maps == 'parser':
    crops = np.clip(np.round(np.asarray(own['image']) * 255.0), 0, 255).astype(np.uint8)
    return semantic_source.parse_crops(row.parser, crops)[..., 0]
  from sdgan_jax.faces import masks  # pylint: disable=import-outside-toplevel

  r = row.generator.resolution
  out = np.zeros(np.asarray(own['semantic']).shape, np.uint8)
  for i in np.flatnonzero(np.asarray(own['valid']) > 0):
    out[i] = masks.semantic_map(own['landmarks'][i], r, own['mask'][i])
  return out


def load_model_rows(options: EvalOptions) -> list[Row]:
  from sdgan_jax import inference  # pylint: disable=import-outside-toplevel

  rows = []
  dataset = pathlib.Path(options.dataset).resolve()
  for i, workdir in enumerate(options.checkpoints):
    path = pathlib.Path(workdir)
    if not (path / 'config.json').is_file() or not (path / 'checkpoints').is_dir():
      raise FileNotFoundError(
        f'--checkpoint {workdir} is not a trained workdir (needs config.json and '
        f'checkpoints/): train one with `python run.py --config=configs/demo.py '
        f'--workdir={workdir} --config.data.dataset={options.dataset}`'
      )
    gen = inference.TrainedGenerator.from_workdir(workdir, batch_size=options.batch_size)
    source = gen.bank.metadata.get('dataset')
    same = bool(source) and pathlib.Path(source).resolve() == dataset
    name = f'SDGAN {path.name} (step {gen.step})'
    rows.append(Row(f'model{i}', name, 'model', str(workdir), gen.step, gen, same))
  assign_semantic_maps(rows, options)
  return rows


def draw_targets(
  row: Row, bank_labels: np.ndarray, seed: int, model_index: int, batch_index: int
) -> np.ndarray:
  """Target identity features, one per face: a uniform bank identity other than its own
  (``sdgan_jax.targets``; a face whose person is not in the bank may get any)."""
  bank = row.generator.bank
  rng = np.random.default_rng([seed, model_index, batch_index])
  known = row.bank_is_this_dataset & (bank_labels >= 0) & (bank_labels < bank.num_identities)
  own = np.where(known, bank_labels, -1)
  return bank.means[
    targets.draw_outside_block(rng, bank.num_identities, own, known.astype(np.int64))
  ]


def model_output(
  row: Row, batches: dict, resolution: int, target_features: np.ndarray
) -> np.ndarray:
  gen = row.generator
  own = batches[gen.resolution]
  out = gen.generate(own['image'], own['mask'], model_semantic(row, own), target_features)
  if gen.resolution == resolution:
    return out
  # Another resolution: resize the generated face, composite at the evaluation size.
  base = batches[resolution]
  out = np.asarray(
    jax.image.resize(out, (len(out), resolution, resolution, 3), 'linear', antialias=True)
  )
  mask = base['mask']
  return np.clip(base['image'] * (1 - mask) + out * mask, 0.0, 1.0)
