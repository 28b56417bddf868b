"""Builds the paper's Tables 1 and 3 (paper §4.2-4.3, DESIGN §4) for baselines and models.

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
from typing import Any, Sequence

import jax
import numpy as np

from sdgan_jax import baselines as baselines_lib
from sdgan_jax import semantic_source
from sdgan_jax.evaluation import detection as detection_lib
from sdgan_jax.evaluation import metrics
from sdgan_jax.evaluation import networks
from sdgan_jax.evaluation import report

PAPER_RESOLUTION = 64  # paper §4.1: the quantitative evaluation is at 64x64
BASELINE_ROWS = {
    'pixelate16': 'Pixelization (16 by 16)',
    'pixelate8': 'Pixelization (8 by 8)',
    'blur9': 'Blur (9 by 9)',
    'blur17': 'Blur (17 by 17)',
}


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


# ---------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class _Stream:
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


def _load_streams(options: EvalOptions) -> tuple[list[_Stream], str, int]:
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  splits = [s.strip() for s in options.split.split(',') if s.strip()]
  if not splits:
    raise ValueError(f'--split {options.split!r} names no split; use e.g. test or train,test')
  if not (pathlib.Path(options.dataset) / 'dataset_info.json').is_file():
    raise FileNotFoundError(
        f'{options.dataset} is not a prepared dataset (no dataset_info.json): prepare one with '
        '`python tools/prepare_data.py --source samples --output data` and pass '
        'data/sdgan_faces/samples_128/1.0.0')
  sources = [input_pipeline.load_data_source(options.dataset, s) for s in splits]
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
    raise ValueError(f'{options.dataset} split {options.split!r} has {sum(sizes)} faces: '
                     'Recall@1 and FID need more')
  if options.max_faces is None or options.max_faces >= sum(sizes):
    return [_Stream(*t) for t in zip(sources, classes, bank_labels)], name, stored
  # Evenly spaced over the concatenated splits, so every split and person is sampled; one
  # list of decoded examples, so one evaluation iterator reads them all.
  chosen = np.unique(np.linspace(0, sum(sizes) - 1, max(options.max_faces, 2))
                     .round().astype(int))
  bounds = np.cumsum([0] + sizes)
  which = np.searchsorted(bounds, chosen, side='right') - 1
  local = chosen - bounds[which]
  examples = [sources[w][int(i)] for w, i in zip(which, local)]
  return [_Stream(examples, np.array([classes[w][i] for w, i in zip(which, local)]),
                  np.array([bank_labels[w][i] for w, i in zip(which, local)]))], name, stored


def _batches(streams: Sequence[_Stream], resolutions: Sequence[int], batch_size: int):
  """Evaluation batches of every stream, one per resolution, zipped (same faces, same order)."""
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  for stream in streams:
    iterators = [input_pipeline.eval_iterator(stream.source, batch_size=batch_size,
                                              resolution=r, process_index=0, process_count=1)
                 for r in resolutions]
    for batches in zip(*iterators):
      yield stream, dict(zip(resolutions, batches))


# ---------------------------------------------------------------------------------------
# Rows.


@dataclasses.dataclass
class _Row:
  key: str
  name: str
  kind: str        # 'original', 'baseline' or 'model'
  checkpoint: str | None = None
  step: int | None = None
  generator: Any = None
  bank_is_this_dataset: bool = False
  maps: str = 'dataset'   # the model's semantic maps: 'dataset', 'parser' or 'polygons'
  parser: Any = None
  semantic_maps: str | None = None  # 'polygons' or the parser's fingerprint


def _semantic_rows(rows: Sequence[_Row], options: EvalOptions) -> None:
  """Which semantic maps each model row gets (module doc); loads the face parsers."""
  dataset_maps = semantic_source.from_dataset(options.dataset)
  loaded = {}
  for row in rows:
    record = row.generator.semantic_maps
    parser = semantic_source.parser_for(
        record, loaded.get(record.parser_fingerprint, options.parser),
        model=f'--checkpoint {row.checkpoint}', batch_size=options.batch_size)
    row.parser, row.semantic_maps = parser, record.label
    if parser is not None:
      loaded[record.parser_fingerprint] = parser
    same = (dataset_maps.source == record.source == semantic_source.POLYGONS or (
        dataset_maps.source == record.source and
        semantic_source.same_weights(dataset_maps.label, record.label)))
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
          f'--workdir={workdir} --config.data.dataset={options.dataset}`')
    gen = inference.TrainedGenerator.from_workdir(workdir, batch_size=options.batch_size)
    source = gen.bank.metadata.get('dataset')
    same = bool(source) and pathlib.Path(source).resolve() == dataset
    name = f'SDGAN {path.name} (step {gen.step})'
    rows.append(_Row(f'model{i}', name, 'model', str(workdir), gen.step, gen, same))
  _semantic_rows(rows, options)
  return rows


def _targets(row: _Row, bank_labels: np.ndarray, seed: int, model_index: int,
             batch_index: int) -> np.ndarray:
  """Target identity features, one per face: a uniform bank identity other than its own."""
  bank = row.generator.bank
  n = bank.num_identities
  rng = np.random.default_rng([seed, model_index, batch_index])
  known = row.bank_is_this_dataset & (bank_labels >= 0) & (bank_labels < n)
  own = np.where(known, bank_labels, -1)
  draw = rng.integers(0, n - (own >= 0))
  draw = draw + ((own >= 0) & (draw >= own))
  return bank.means[draw]


def _model_output(row: _Row, batches: dict, resolution: int, targets: np.ndarray) -> np.ndarray:
  gen = row.generator
  own = batches[gen.resolution]
  out = gen.generate(own['image'], own['mask'], _model_semantic(row, own), targets)
  if gen.resolution == resolution:
    return out
  # Another resolution: resize the generated face, composite at the evaluation size.
  base = batches[resolution]
  out = np.asarray(jax.image.resize(out, (len(out), resolution, resolution, 3), 'linear',
                                    antialias=True))
  mask = base['mask']
  return np.clip(base['image'] * (1 - mask) + out * mask, 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# The evaluation.


def evaluate(options: EvalOptions) -> tuple[dict, list[tuple[str, np.ndarray]]]:
  """Runs every row over the faces; returns (the result dict, the grid rows)."""
  if options.detection_processes < 0:
    raise ValueError('detection_processes must be >= 0 (0: one per CPU core, 1: none), got '
                     f'{options.detection_processes}')
  unknown = sorted(set(options.detectors) - set(detection_lib.DETECTOR_NAMES))
  if unknown:
    raise ValueError(f'unknown detectors {unknown}; choose from '
                     f'{sorted(detection_lib.DETECTOR_NAMES)}')
  dlib_kinds = set(options.detectors) & {'hog', 'cnn'}
  processes = options.detection_processes if dlib_kinds else 1
  with detection_lib.detector_pool(processes) as pool:
    return _evaluate(options, pool)


def _evaluate(options: EvalOptions, pool) -> tuple[dict, list[tuple[str, np.ndarray]]]:
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  unknown = sorted(set(options.baselines) - set(BASELINE_ROWS))
  if unknown:
    raise ValueError(f'unknown baselines {unknown}; choose from {sorted(BASELINE_ROWS)}')
  start = time.perf_counter()
  streams, dataset_name, stored = _load_streams(options)
  r = int(options.resolution)
  rows = [_Row('original', 'Original', 'original')]
  rows += [_Row(k, BASELINE_ROWS[k], 'baseline') for k in options.baselines]
  models = _model_rows(options)
  rows += models
  embed = networks.embedding_net(options.weights_dir, options.batch_size, options.embedding)
  inception = networks.inception_net(options.weights_dir, options.batch_size)
  scale = max(1, math.ceil(options.detection_size / r))
  detectors = {k: detection_lib.DetectionRate(k, scale=scale, pool=pool,
                                              weights_dir=options.weights_dir)
               for k in options.detectors}
  resolutions = sorted({r} | {m.generator.resolution for m in models})

  total = sum(len(s.classes) for s in streams)
  grid_at = set(np.unique(np.linspace(0, total - 1, min(options.grid_faces, total))
                          .round().astype(int)).tolist())
  acc = {row.key: {k: [] for k in ('emb', 'pool', 'ssim', 'psnr', *detectors)}
         for row in rows}
  grid = {row.key: [] for row in rows}
  classes = []
  seen = 0
  bar = tqdm(total=total, unit='face', desc='evaluate', disable=not options.progress)
  for batch_index, (stream, batches) in enumerate(_batches(streams, resolutions,
                                                           options.batch_size)):
    base = batches[r]
    valid = np.asarray(base['valid'], bool)
    if not valid.any():
      continue
    x, mask = np.asarray(base['image'], np.float32), np.asarray(base['mask'], np.float32)
    index = np.maximum(np.asarray(base['index'], np.int64), 0)  # padding: -1
    bank_labels = np.where(valid, stream.bank_labels[index], -1)
    classes.append(stream.classes[index][valid])
    positions = seen + np.arange(valid.sum())
    in_grid = np.array([p in grid_at for p in positions], bool)
    for row in rows:
      if row.kind == 'original':
        out = x
      elif row.kind == 'baseline':
        out = baselines_lib.apply_baseline(row.key, x, mask)
      else:
        targets = _targets(row, bank_labels, options.seed, models.index(row), batch_index)
        out = _model_output(row, batches, r, targets)
      out = np.asarray(out, np.float32)
      ssim, psnr = metrics.ssim_psnr(x, out)
      kept, kept_mask = out[valid], mask[valid]
      a = acc[row.key]
      a['ssim'].append(np.asarray(ssim)[valid])
      a['psnr'].append(np.asarray(psnr)[valid])
      a['emb'].append(embed(kept))
      a['pool'].append(inception(kept))
      for kind, detector in detectors.items():
        a[kind].append(detector(kept, kept_mask))
      grid[row.key].append(kept[in_grid])
    seen += int(valid.sum())
    bar.update(int(valid.sum()))
  bar.close()

  classes = np.concatenate(classes)
  n = len(classes)
  data = {key: {k: np.concatenate(v) if v else np.zeros([0]) for k, v in a.items()}
          for key, a in acc.items()}
  original = data['original']
  warnings, notes = [], []
  if n < metrics.FID_MIN_IMAGES:
    warnings.append(f'FID from {n} faces: fewer than {metrics.FID_MIN_IMAGES} (the feature '
                    'size), so FID is biased upwards and unstable; KID (unbiased) is given '
                    'beside it.')
  counts = np.bincount(classes)
  singles = int(np.sum(counts == 1))
  if singles:
    warnings.append(f'{singles} of {int(np.sum(counts > 0))} identities have a single face: '
                    'they can never be re-identified, which lowers re-identification.')
  out_rows = []
  for row in rows:
    d = data[row.key]
    entry = dict(key=row.key, name=row.name, kind=row.kind)
    if row.kind == 'model':
      entry.update(checkpoint=row.checkpoint, step=row.step, semantic_maps=row.semantic_maps,
                   semantic_maps_from=row.maps)
    for kind in detectors:
      entry[f'detection_{kind}'] = 100.0 * float(np.mean(d[kind]))
    # The originals are their own gallery: identifying them is trivially 100% (paper: "–").
    entry['identification'] = None if row.kind == 'original' else 100.0 * (
        metrics.identification_recall(d['emb'], original['emb'], classes))
    entry['reidentification'] = 100.0 * metrics.reidentification_recall(d['emb'], classes)
    entry['fid'] = metrics.fid(original['pool'], d['pool'])
    entry['kid'] = (metrics.kid(original['pool'], d['pool'], seed=options.seed)
                    if n < metrics.FID_MIN_IMAGES else None)
    entry['ssim'] = float(np.mean(d['ssim']))
    entry['psnr'] = float(np.mean(d['psnr']))
    out_rows.append(entry)

  notes += [
      f'Baselines change the face-mask pixels only (filter over the whole {r}-px crop: '
      'pixelization grid cells of crop/16 and crop/8 px; Gaussian kernels with OpenCV\'s '
      'sigma).',
      _detection_note(options.detectors, r, scale),
      f'Identification and re-identification embeddings: {embed.label} ({embed.name}); ' + (
          'FaceNet, as the paper.' if embed.name.startswith('facenet') else
          'FaceNet weights absent (not on any registry), so dlib ResNet.'),
  ]
  if models:
    notes.append('Models: EMA generator of each workdir; each face gets a random identity of '
                 'the model\'s bank other than its own (seeded).')
    for m in models:
      if m.maps == 'parser':
        notes.append(f'{m.name} was trained on the semantic maps of the face parser '
                     f'{m.semantic_maps}, which the dataset does not hold: it gets that '
                     'parser\'s maps of the crops.')
      elif m.maps == 'polygons':
        notes.append(f'{m.name} was trained on landmark-polygon semantic maps, which the '
                     'dataset does not hold: it gets polygons drawn from the crops\' '
                     'landmarks.')
  elapsed = time.perf_counter() - start
  result = dict(
      dataset=str(options.dataset), dataset_name=dataset_name, split=options.split,
      stored_resolution=stored, resolution=r, seed=options.seed, num_faces=n,
      num_identities=int(np.sum(counts > 0)), embedding=embed.label,
      embedding_weights=embed.name,
      detectors={k: detection_lib.DETECTOR_NAMES[k] for k in options.detectors},
      detection_scale=scale, rows=out_rows, warnings=warnings, notes=notes,
      seconds=elapsed, faces_per_second=n / elapsed, device=str(jax.devices()[0].platform),
  )
  grid_rows = [(row.name, np.concatenate(grid[row.key])) for row in rows]
  return result, grid_rows


def _detection_note(kinds: Sequence[str], resolution: int, scale: int) -> str:
  deep = [detection_lib.DETECTOR_NAMES[k] for k in kinds if k in detection_lib.DEEP_DETECTORS]
  note = (f'Detection: crops enlarged {scale}x (bicubic) to {resolution * scale} px, dlib at '
          'upsample 0; a crop counts when a box centre lies in its face mask\'s bounding box.')
  if deep:
    note += (f' {" and ".join(deep)} take the column of the paper\'s SSH, whose weights are '
             'not available.')
  return note


def write_outputs(result: dict, grid_rows, output_dir, with_paper: bool = False) -> dict:
  """Writes eval.json, eval.md and eval_grid.png into ``output_dir``; returns their paths."""
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  if with_paper:
    result = dict(result, paper={row['name']: report.paper_row(row) for row in result['rows']},
                  paper_others=report.PAPER_OTHERS)
  paths = {'json': report.write_json(result, out / 'eval.json'),
           'markdown': out / 'eval.md',
           'grid': report.write_grid(grid_rows, out / 'eval_grid.png')}
  paths['markdown'].write_text(report.markdown(result, with_paper))
  return paths
