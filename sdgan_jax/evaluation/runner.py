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
* the model rows (``evaluation.rows``): each at its own resolution, on the kind of semantic
  map it was trained on, with a seeded target identity from its bank other than the face's;
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

import jax
import numpy as np

from sdgan_jax import baselines as baselines_lib
from sdgan_jax.evaluation import detection as detection_lib
from sdgan_jax.evaluation import metrics, pretrained, tables
from sdgan_jax.evaluation import rows as rows_lib
from sdgan_jax.evaluation import streams as streams_lib
from sdgan_jax.evaluation.eval_options import BASELINE_ROWS, EvalOptions


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
  streams,
  rows: Sequence[rows_lib.Row],
  models: list[rows_lib.Row],
  columns: _Columns,
  options: EvalOptions,
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
        out = rows_lib.model_output(
          row,
          batches,
          r,
          rows_lib.draw_targets(row, bank_labels, options.seed, models.index(row), batch_index),
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
  row: rows_lib.Row, d: dict, original: dict, classes: np.ndarray, columns: _Columns, seed: int
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


def _notes(options: EvalOptions, columns: _Columns, models: Sequence[rows_lib.Row]) -> list[str]:
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
  rows = [rows_lib.Row('original', 'Original', 'original')]
  rows += [rows_lib.Row(k, BASELINE_ROWS[k], 'baseline') for k in options.baselines]
  models = rows_lib.load_model_rows(options)
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
