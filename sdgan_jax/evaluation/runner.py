"""Builds the paper's Tables 1 and 3 (paper §4.2-4.3, docs/evaluation.md) for baselines and
models.

Rows: the originals, the classic baselines (pixelization 16x16 and 8x8, Gaussian blur 9x9
and 17x17; ``sdgan_jax.baselines``) and every trained generator given (a ``run.py``
workdir). Columns: detection rate with dlib HOG and dlib's MMOD CNN, identification and
re-identification Recall@1 with FaceNet (or dlib ResNet where FaceNet's weights are
absent), FID (and KID for small sets), SSIM, PSNR.

Choices, all recorded in the result's notes:

* the crops are evaluated at 64 px (the paper's quantitative setting, §4.1) unless asked
  otherwise, read from a prepared dataset with the evaluation pipeline (no augmentation);
* the baselines change only the pixels of the face mask, as the paper's obfuscate the face
  region, the background kept: the filter (a pixelization grid over the whole crop, so at
  64 px a 16x16 grid has 4-px cells; an OpenCV-sized Gaussian kernel) runs on the crop and
  the face mask's pixels are taken from its result;
* a model runs at its own resolution on the same faces read at that resolution; when that
  differs from the evaluation's, its generated face is resized to it and composited into
  the evaluation-size original with the evaluation-size mask;
* a model gets the kind of semantic map it was trained on (its workdir's
  ``semantic_maps.json``, ``sdgan_jax.semantic_source``): the dataset's own maps when
  they are of that kind (``semantic_source.from_dataset``), else its face parser's maps
  of the crops (EAGRNet, paper §3.2; the recorded parser or ``parser``) or landmark
  polygons drawn from the crops' landmarks; each model row names its maps;
* each face's target identity is drawn, seeded by ``(seed, model, batch)``, uniformly from
  the model's identity bank; when the bank was built from this dataset and the face
  belongs to its training split, its own identity is excluded (test identities are never
  in the bank, so any target is another person, as in ``train._eval_metrics``);
* identities: ``label`` within each split; evaluating several splits (``'train,test'``, for
  the sample faces whose test split holds a single person) keeps them apart;
* FID needs more faces than its 2048 feature dimensions to be stable (the paper's CelebA test
  set has ~11k): below that the result warns and gives KID beside it.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from sdgan_jax import baselines as baselines_lib
from sdgan_jax import semantic_source, targets
from sdgan_jax.evaluation import detection as detection_lib
from sdgan_jax.evaluation import metrics, pretrained, tables
from sdgan_jax.evaluation import streams as streams_lib

PAPER_RESOLUTION = 64  # paper §4.1: the quantitative evaluation is at 64x64
BASELINE_ROWS = {
  'pixelate16': 'Pixelization (16 by 16)',
  'pixelate8': 'Pixelization (8 by 8)',
  'blur9': 'Blur (9 by 9)',
  'blur17': 'Blur (17 by 17)',
}
# The least value of each integer option: ``EvalOptions`` refuses less, and tools/eval.py's
# flags take these as their limits.
LEAST = {
  'resolution': 1,
  'batch_size': 1,
  'max_faces': 1,
  'grid_faces': 1,
  'detection_size': 1,
  'detection_processes': 0,
}
_MEANINGS = {'detection_processes': ' (0: one per CPU core, 1: none)'}


@dataclasses.dataclass
class EvalOptions:
  """What ``evaluate`` runs.

  Attributes:
    dataset: a prepared dataset directory (holding dataset_info.json).
    checkpoints: ``run.py`` workdirs, one model row each.
    split: comma-separated TFDS split names, e.g. 'test' (the paper) or 'train,test'.
    resolution: evaluation crop size (default 64, the paper's).
    batch_size: faces per accelerator batch.
    seed: seeds the target identities and KID's subsets.
    max_faces: evaluate only this many faces, evenly spaced over the splits.
    grid_faces: columns of the image grid.
    baselines: baseline rows (keys of ``BASELINE_ROWS``).
    detectors: any of 'hog', 'blazeface' (the anonymizer's BlazeFace ensemble, in the
      column of the paper's SSH) and 'cnn' (dlib's MMOD CNN, slow on CPUs).
    detection_size: crops are enlarged to this size for the detectors (see detection.py).
    detection_processes: worker processes running the detectors (dlib's CNN detector uses
      one core and holds the GIL); 0: one per CPU core, 1: in this process.
    embedding: weights name of the identity network (default: FaceNet if converted,
      else 'dlib_resnet').
    weights_dir: converted weights (default: ``sdgan_jax.weights.default_weights_dir``).
    progress: show progress bars.
    parser: the face-parser workdir for the models trained on parser maps, instead of the
      one each model's record names (same weights); refused for polygon models.
  """

  dataset: str
  checkpoints: Sequence[str] = ()
  split: str = 'test'
  resolution: int = PAPER_RESOLUTION
  batch_size: int = 64
  seed: int = 0
  max_faces: int | None = None
  grid_faces: int = 8
  baselines: Sequence[str] = tuple(BASELINE_ROWS)
  detectors: Sequence[str] = ('hog', 'blazeface')
  detection_size: int = 128
  detection_processes: int = 0
  embedding: str | None = None
  weights_dir: str | None = None
  progress: bool = True
  parser: str | None = None

  def __post_init__(self):
    for name, least in LEAST.items():
      value = getattr(self, name)
      if value is not None and value < least:
        raise ValueError(f'{name} must be >= {least}{_MEANINGS.get(name, "")}, got {value}')
    for name, known in (('detectors', detection_lib.DETECTOR_NAMES), ('baselines', BASELINE_ROWS)):
      unknown = sorted(set(getattr(self, name)) - set(known))
      if unknown:
        raise ValueError(f'{name} {unknown} are unknown; choose from {sorted(known)}')


# ---------------------------------------------------------------------------------------
# Rows.


@dataclasses.dataclass
class _Row:
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


def _semantic_rows(rows: Sequence[_Row], options: EvalOptions) -> None:
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


def _model_semantic(row: _Row, own: dict) -> np.ndarray:
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


def _model_rows(options: EvalOptions) -> list[_Row]:
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
    rows.append(_Row(f'model{i}', name, 'model', str(workdir), gen.step, gen, same))
  _semantic_rows(rows, options)
  return rows


def _targets(
  row: _Row, bank_labels: np.ndarray, seed: int, model_index: int, batch_index: int
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


def _model_output(
  row: _Row, batches: dict, resolution: int, target_features: np.ndarray
) -> np.ndarray:
  gen = row.generator
  own = batches[gen.resolution]
  out = gen.generate(own['image'], own['mask'], _model_semantic(row, own), target_features)
  if gen.resolution == resolution:
    return out
  # Another resolution: resize the generated face, composite at the evaluation size.
  base = batches[resolution]
  out = np.asarray(
    jax.image.resize(out, (len(out), resolution, resolution, 3), 'linear', antialias=True)
  )
  mask = base['mask']
  return np.clip(base['image'] * (1 - mask) + out * mask, 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# The evaluation.


def evaluate(options: EvalOptions) -> tuple[dict, list[tuple[str, np.ndarray]]]:
  """Runs every row over the faces; returns (the result dict, the grid rows)."""
  dlib_kinds = set(options.detectors) & {'hog', 'cnn'}
  processes = options.detection_processes if dlib_kinds else 1
  with detection_lib.detector_pool(processes) as pool:
    return _evaluate(options, pool)


@dataclasses.dataclass
class _Columns:
  """The networks that turn each row's faces into the tables' columns."""

  embed: pretrained.BatchedNet
  inception: pretrained.BatchedNet
  detectors: dict[str, detection_lib.DetectionRate]
  scale: int  # the detectors see the crops enlarged this many times

  @classmethod
  def load(cls, options: EvalOptions, pool) -> _Columns:
    embed = pretrained.embedding_net(options.weights_dir, options.batch_size, options.embedding)
    inception = pretrained.inception_net(options.weights_dir, options.batch_size)
    scale = max(1, math.ceil(options.detection_size / int(options.resolution)))
    detectors = {
      k: detection_lib.DetectionRate(k, scale=scale, pool=pool, weights_dir=options.weights_dir)
      for k in options.detectors
    }
    return cls(embed, inception, detectors, scale)

  def measure(
    self, columns: dict, x: np.ndarray, out: np.ndarray, mask: np.ndarray, valid: np.ndarray
  ) -> None:
    """Appends one batch of a row's faces to its ``columns`` (the padding left out)."""
    ssim, psnr = metrics.ssim_psnr(x, out)
    kept, kept_mask = out[valid], mask[valid]
    columns['ssim'].append(np.asarray(ssim)[valid])
    columns['psnr'].append(np.asarray(psnr)[valid])
    columns['emb'].append(self.embed(kept))
    columns['pool'].append(self.inception(kept))
    for kind, detector in self.detectors.items():
      columns[kind].append(detector(kept, kept_mask))


def _run_rows(
  streams, rows: Sequence[_Row], models: list[_Row], columns: _Columns, options: EvalOptions
) -> tuple[dict, dict, np.ndarray]:
  """Every row over every face: (per row its columns, per row its grid faces, classes)."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  r = int(options.resolution)
  resolutions = sorted({r} | {m.generator.resolution for m in models})
  total = sum(len(s.classes) for s in streams)
  grid_at = set(
    np.unique(
      np.linspace(0, total - 1, min(options.grid_faces, total)).round().astype(int)
    ).tolist()
  )
  acc = {
    row.key: {k: [] for k in ('emb', 'pool', 'ssim', 'psnr', *columns.detectors)} for row in rows
  }
  grid = {row.key: [] for row in rows}
  classes, seen = [], 0
  bar = tqdm(total=total, unit='face', desc='evaluate', disable=not options.progress)
  for batch_index, (stream, batches) in enumerate(
    streams_lib.batches(streams, resolutions, options.batch_size)
  ):
    base = batches[r]
    valid = np.asarray(base['valid'], bool)
    if not valid.any():
      continue
    x, mask = np.asarray(base['image'], np.float32), np.asarray(base['mask'], np.float32)
    index = np.maximum(np.asarray(base['index'], np.int64), 0)  # padding: -1
    bank_labels = np.where(valid, stream.bank_labels[index], -1)
    classes.append(stream.classes[index][valid])
    in_grid = np.array([p in grid_at for p in seen + np.arange(valid.sum())], bool)
    for row in rows:
      if row.kind == 'original':
        out = x
      elif row.kind == 'baseline':
        out = baselines_lib.apply_baseline(row.key, x, mask)
      else:
        out = _model_output(
          row, batches, r, _targets(row, bank_labels, options.seed, models.index(row), batch_index)
        )
      out = np.asarray(out, np.float32)
      columns.measure(acc[row.key], x, out, mask, valid)
      grid[row.key].append(out[valid][in_grid])
    seen += int(valid.sum())
    bar.update(int(valid.sum()))
  bar.close()
  data = {
    key: {k: np.concatenate(v) if v else np.zeros([0]) for k, v in a.items()}
    for key, a in acc.items()
  }
  return data, grid, np.concatenate(classes)


def _table_row(
  row: _Row, d: dict, original: dict, classes: np.ndarray, columns: _Columns, seed: int
) -> dict:
  """One row of the tables from its columns (``original``: the originals' columns)."""
  entry = dict(key=row.key, name=row.name, kind=row.kind)
  if row.kind == 'model':
    entry.update(
      checkpoint=row.checkpoint,
      step=row.step,
      semantic_maps=row.semantic_maps,
      semantic_maps_from=row.maps,
    )
  for kind in columns.detectors:
    entry[f'detection_{kind}'] = 100.0 * float(np.mean(d[kind]))
  # The originals are their own gallery: identifying them is trivially 100% (paper: "–").
  entry['identification'] = (
    None
    if row.kind == 'original'
    else 100.0 * (metrics.identification_recall(d['emb'], original['emb'], classes))
  )
  entry['reidentification'] = 100.0 * metrics.reidentification_recall(d['emb'], classes)
  entry['fid'] = metrics.fid(original['pool'], d['pool'])
  entry['kid'] = (
    metrics.kid(original['pool'], d['pool'], seed=seed)
    if len(classes) < metrics.FID_MIN_IMAGES
    else None
  )
  entry['ssim'] = float(np.mean(d['ssim']))
  entry['psnr'] = float(np.mean(d['psnr']))
  return entry


def _warnings(classes: np.ndarray) -> list[str]:
  warnings = []
  n = len(classes)
  if n < metrics.FID_MIN_IMAGES:
    warnings.append(
      f'FID from {n} faces: fewer than {metrics.FID_MIN_IMAGES} (the feature '
      'size), so FID is biased upwards and unstable; KID (unbiased) is given '
      'beside it.'
    )
  counts = np.bincount(classes)
  singles = int(np.sum(counts == 1))
  if singles:
    warnings.append(
      f'{singles} of {int(np.sum(counts > 0))} identities have a single face: '
      'they can never be re-identified, which lowers re-identification.'
    )
  return warnings


def _notes(options: EvalOptions, columns: _Columns, models: Sequence[_Row]) -> list[str]:
  r, embed = int(options.resolution), columns.embed
  notes = [
    f'Baselines change the face-mask pixels only (filter over the whole {r}-px crop: '
    "pixelization grid cells of crop/16 and crop/8 px; Gaussian kernels with OpenCV's "
    'sigma).',
    _detection_note(options.detectors, r, columns.scale),
    f'Identification and re-identification embeddings: {embed.label} ({embed.name}); '
    + (
      'FaceNet, as the paper.'
      if embed.name.startswith('facenet')
      else 'FaceNet weights absent (not on any registry), so dlib ResNet.'
    ),
  ]
  if models:
    notes.append(
      'Models: EMA generator of each workdir; each face gets a random identity of '
      "the model's bank other than its own (seeded)."
    )
  for m in models:
    if m.maps == 'parser':
      notes.append(
        f'{m.name} was trained on the semantic maps of the face parser '
        f'{m.semantic_maps}, which the dataset does not hold: it gets that '
        "parser's maps of the crops."
      )
    elif m.maps == 'polygons':
      notes.append(
        f'{m.name} was trained on landmark-polygon semantic maps, which the '
        "dataset does not hold: it gets polygons drawn from the crops' "
        'landmarks.'
      )
  return notes


def _evaluate(options: EvalOptions, pool) -> tuple[dict, list[tuple[str, np.ndarray]]]:
  start = time.perf_counter()
  streams, dataset_name, stored = streams_lib.load_streams(
    options.dataset, options.split, options.max_faces
  )
  rows = [_Row('original', 'Original', 'original')]
  rows += [_Row(k, BASELINE_ROWS[k], 'baseline') for k in options.baselines]
  models = _model_rows(options)
  rows += models
  columns = _Columns.load(options, pool)
  data, grid, classes = _run_rows(streams, rows, models, columns, options)
  out_rows = [
    _table_row(row, data[row.key], data['original'], classes, columns, options.seed) for row in rows
  ]
  n, counts = len(classes), np.bincount(classes)
  warnings, notes = _warnings(classes), _notes(options, columns, models)
  elapsed = time.perf_counter() - start
  result = dict(
    dataset=str(options.dataset),
    dataset_name=dataset_name,
    split=options.split,
    stored_resolution=stored,
    resolution=int(options.resolution),
    seed=options.seed,
    num_faces=n,
    num_identities=int(np.sum(counts > 0)),
    embedding=columns.embed.label,
    embedding_weights=columns.embed.name,
    detectors={k: detection_lib.DETECTOR_NAMES[k] for k in options.detectors},
    detection_scale=columns.scale,
    rows=out_rows,
    warnings=warnings,
    notes=notes,
    seconds=elapsed,
    faces_per_second=n / elapsed,
    device=str(jax.devices()[0].platform),
  )
  grid_rows = [(row.name, np.concatenate(grid[row.key])) for row in rows]
  return result, grid_rows


def _detection_note(kinds: Sequence[str], resolution: int, scale: int) -> str:
  deep = [detection_lib.DETECTOR_NAMES[k] for k in kinds if k in detection_lib.DEEP_DETECTORS]
  note = (
    f'Detection: crops enlarged {scale}x (bicubic) to {resolution * scale} px, dlib at '
    "upsample 0; a crop counts when a box centre lies in its face mask's bounding box."
  )
  if deep:
    note += (
      f" {' and '.join(deep)} take the column of the paper's SSH, whose weights are not available."
    )
  return note


def write_outputs(result: dict, grid_rows, output_dir, with_paper: bool = False) -> dict:
  """Writes eval.json, eval.md and eval_grid.png into ``output_dir``; returns their paths."""
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  if with_paper:
    result = dict(
      result,
      paper={row['name']: tables.paper_row(row) for row in result['rows']},
      paper_others=tables.PAPER_OTHERS,
    )
  paths = {
    'json': tables.write_json(result, out / 'eval.json'),
    'markdown': out / 'eval.md',
    'grid': tables.write_grid(grid_rows, out / 'eval_grid.png'),
  }
  paths['markdown'].write_text(tables.markdown(result, with_paper))
  return paths
