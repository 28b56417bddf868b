"""EAGRNet face-parser training (paper §3.2), parsing-dataset folders, prepare with a parser.

Every test that trains or runs the parser uses one tiny network at 32 px and batch 4, so
they share one compiled train step (the ``shared_programs`` fixture within this module, the
persistent compilation cache of conftest across processes).
"""

import json
import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from train_fixtures import (
  assert_same_replicated_state,
  nan_pixel_at,
  patch_train_batches,
  sigterm_at_read_of,
)

from sdgan_jax import parallel, parser_inference, train_parser, trainer
from sdgan_jax.configs import eagrnet_polygons
from sdgan_jax.datasets import chunks as chunks_lib
from sdgan_jax.datasets import face_records, image_sources, parsing_batches, prepare, samples
from sdgan_jax.datasets import features as F
from sdgan_jax.datasets import parsing_folders as pf
from sdgan_jax.datasets.builder import tfds_features
from sdgan_jax.evaluation.segmentation import confusion_matrix, segmentation_metrics
from sdgan_jax.faces import masks

R = 32
C = {name: i for i, name in enumerate(F.SEMANTIC_CLASSES)}


def tiny_parser_config(dataset: str = ''):
  """The parser config shrunk to a tiny EAGRNet at 32 px, Adam at a constant rate."""
  cfg = eagrnet_polygons.get_config()
  cfg.resolution = R
  cfg.data.dataset = dataset
  cfg.model = dict(
    depth=18,
    backbone_width=8,
    stage_sizes=(1, 1, 1, 1),
    num_vertices=4,
    context_features=16,
    edge_features=8,
    decoder_features=16,
    skip_features=8,
    dropout_rate=0.0,
    norm='batch',
  )
  cfg.optim.update(
    name='adam', learning_rate=3e-3, schedule='constant', warmup_steps=0, weight_decay=0.0
  )
  cfg.train.batch_size = 4
  return cfg


def _face_maps(rng, n, r=R):
  """Cartoon faces: an 11-class map per image and an image coloured by class (+ noise)."""
  yy, xx = np.mgrid[:r, :r]
  s = r / 32
  labels = np.zeros((n, r, r), np.int32)
  for b in range(n):
    cx, cy = rng.uniform(14, 18, 2) * s
    face = ((xx - cx) / (9 * s)) ** 2 + ((yy - cy) / (11 * s)) ** 2 < 1
    labels[b][face] = C['skin']
    labels[b][(yy < cy - 8 * s) & ~face] = C['hair']
    labels[b][(xx - cx + 4 * s) ** 2 + (yy - cy + 2 * s) ** 2 < 4 * s * s] = C['left_eye']
    labels[b][(xx - cx - 4 * s) ** 2 + (yy - cy + 2 * s) ** 2 < 4 * s * s] = C['right_eye']
    labels[b][(np.abs(xx - cx) < 4 * s) & (np.abs(yy - cy - 5 * s) < 1.5 * s)] = C['inner_mouth']
  palette = np.random.default_rng(99).uniform(0, 1, (F.NUM_CLASSES, 3))
  images = np.clip(palette[labels] + rng.normal(0, 0.05, labels.shape + (3,)), 0, 1)
  return images.astype(np.float32), labels


# ---------------------------------------------------------------------------------------
# The objective and the train step.


def test_losses_match_their_definitions():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, F.NUM_CLASSES, (2, 8, 8))
  labels[:, :4] = 1  # a large region, so that not every pixel is an edge
  out = {
    'parsing': rng.normal(size=(2, 8, 8, 11)),
    'parsing_aux': rng.normal(size=(2, 8, 8, 11)),
    'edge': rng.normal(size=(2, 8, 8, 2)),
  }
  weights = {'aux_weight': 0.4, 'edge_weight': 1.0, 'boundary_weight': 2.0}
  total, terms = train_parser.parser_losses(out, labels, weights)

  def ce(logits, y):  # numpy reference
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, y[..., None], -1)[..., 0]

  # Edges: a pixel with any 4-neighbour of another class.
  pad = np.pad(labels, ((0, 0), (1, 1), (1, 1)), mode='edge')
  edge = np.zeros(labels.shape, bool)
  for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
    edge |= pad[:, dy : dy + 8, dx : dx + 8] != labels
  share = edge.mean()
  w = np.where(edge, 1 - share, share)
  want = {
    'parsing': ce(out['parsing'], labels).mean(),
    'aux': ce(out['parsing_aux'], labels).mean(),
    'edge': (w * ce(out['edge'], edge.astype(int))).sum() / w.sum(),
    'boundary': ce(out['parsing'], labels)[edge].mean(),
  }
  for k, v in want.items():
    np.testing.assert_allclose(terms[k], v, rtol=1e-5)
  np.testing.assert_allclose(
    total, want['parsing'] + 0.4 * want['aux'] + want['edge'] + 2 * want['boundary'], rtol=1e-5
  )


def test_segmentation_metrics():
  labels = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
  preds = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
  confusion = confusion_matrix(labels, preds, 11)
  got = segmentation_metrics(confusion)
  # IoU: class 0: tp 2 / (3 + 3 - 2); class 1: 2 / (2 + 3 - 2); class 2: 2 / (3 + 2 - 2).
  np.testing.assert_allclose(got['eval/miou'], np.mean([2 / 4, 2 / 3, 2 / 3]))
  np.testing.assert_allclose(got['eval/pixel_accuracy'], 6 / 8)
  padded = confusion_matrix(labels, preds, 11, weights=np.array([[1, 1, 1, 1], [0, 0, 0, 0]]))
  assert float(np.asarray(padded).sum()) == 4


@pytest.mark.slow
def test_parser_learns_a_fixed_batch():
  cfg = tiny_parser_config()
  images, labels = _face_maps(np.random.default_rng(0), 4)
  models = train_parser.ParserModels(cfg)
  mesh = parallel.make_mesh()
  state = train_parser.init_state(models, jax.random.key(0), mesh)
  step = train_parser.jit_train_step(models, mesh)
  batch = parallel.shard_batch({'image': images, 'semantic': labels}, mesh, train_parser.BATCH_KEYS)
  history = []
  for _ in range(40):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  first, last = history[0], history[-1]
  print(
    f'loss {first["train/loss"]:.3f} -> {last["train/loss"]:.3f}, pixel accuracy '
    f'{first["train/pixel_accuracy"]:.3f} -> {last["train/pixel_accuracy"]:.3f}'
  )
  assert all(h['train/all_finite'] == 1 for h in history)
  assert last['train/loss'] < 0.5 * first['train/loss']
  assert last['train/parsing'] < 0.5 * first['train/parsing']
  # Pixel accuracy well above always predicting the commonest class.
  majority = np.bincount(labels.ravel()).max() / labels.size
  assert last['train/pixel_accuracy'] > max(0.85, majority + 0.1)
  assert int(state.step) == 40


def test_parser_state_initialised_on_the_host_equals_the_mesh_initialised_one():
  """The accelerator path of init_state (host CPU, then placed) gives the same state."""
  models = train_parser.ParserModels(tiny_parser_config())
  mesh = parallel.make_mesh()
  direct = train_parser.init_state(models, jax.random.key(3), mesh, on_host=False)
  hosted = train_parser.init_state(models, jax.random.key(3), mesh, on_host=True)
  assert_same_replicated_state(direct, hosted)


# ---------------------------------------------------------------------------------------
# The loop on a prepared dataset: checkpoints, resume, validation metric, config errors.


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  rng = np.random.default_rng(1)

  def records(split, per_identity):
    images, labels = _face_maps(rng, 2 * per_identity)
    rows = []
    for i, (image, label) in enumerate(zip(images, labels)):
      mask = (label[..., None] > 0).astype(np.uint8) * 255
      rows.append(
        dict(
          image=(image * 255).astype(np.uint8),
          mask=mask,
          semantic=label[..., None].astype(np.uint8),
          landmarks=rng.uniform(8, 24, (68, 2)).astype(np.float32),
          identity=np.int64(i % 2),
          label=np.int64(i % 2),
          filename=f'{split}_{i}.jpg',
        )
      )
    return list(enumerate(rows))

  builder = tfds.dataset_builders.store_as_tfds_dataset(
    name='parser_test_faces',
    version='1.0.0',
    features=tfds_features(R),
    split_datasets={'train': records('train', 4), 'test': records('test', 2)},
    data_dir=tmp_path_factory.mktemp('tfds'),
    file_format='array_record',
  )
  return str(builder.data_dir)


# What the jitted programs of a run depend on (train.num_steps: the learning-rate schedule).
_PROGRAM_KEYS = ('dtype', 'resolution', 'num_classes', 'model', 'loss', 'optim')


@pytest.fixture(scope='module', autouse=True)
def shared_programs():
  """Runs of this module with the same network and optimizer share one set of jitted
  programs: the library builds them afresh per run, and tracing them again would cost every
  repeated run here about half a minute."""
  built = {}
  build = train_parser.build_programs

  def shared(config):
    subset = {k: config[k] for k in _PROGRAM_KEYS if k in config}
    key = json.dumps(
      dict(subset, num_steps=config.train.num_steps), sort_keys=True, default=lambda v: v.to_dict()
    )
    if key not in built:
      built[key] = build(config)
    return built[key]

  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setattr(train_parser, 'build_programs', shared)
    yield


def _loop_config(dataset, num_steps):
  cfg = tiny_parser_config(dataset)
  cfg.train.num_steps = num_steps
  cfg.train.log_every = 1
  cfg.checkpoint.every = 2
  cfg.eval.num_batches = 1
  return cfg


@pytest.fixture(scope='module')
def trained(dataset, tmp_path_factory):
  """(uninterrupted 4-step state, preempted at 2 and resumed state, its workdir, the
  checkpoints left by the preemption)."""
  root = tmp_path_factory.mktemp('parser_runs')
  straight = train_parser.train_and_evaluate(_loop_config(dataset, 4), str(root / 'straight'))
  workdir = root / 'resumed'

  with pytest.MonkeyPatch.context() as monkeypatch:
    # SIGTERM during the second step (batch k is read while step k - PREFETCH_BATCHES
    # runs): save step 2 and stop
    patch_train_batches(monkeypatch, sigterm_at_read_of(1 + parallel.PREFETCH_BATCHES))
    with pytest.raises(trainer.Preempted) as stopped:
      train_parser.train_and_evaluate(_loop_config(dataset, 4), str(workdir))
  assert int(stopped.value.state.step) == 2 and stopped.value.exit_status == 143
  steps_after_kill = sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  resumed = train_parser.train_and_evaluate(_loop_config(dataset, 4), str(workdir))
  return straight, resumed, workdir, steps_after_kill


@pytest.mark.slow
def test_checkpoints_resume_bit_identically_with_a_validation_metric(trained):
  straight, resumed, workdir, steps_after_kill = trained
  assert steps_after_kill == ['2']
  assert int(resumed.step) == 4
  for a, b in zip(
    jax.tree_util.tree_leaves((straight.params, straight.stats)),
    jax.tree_util.tree_leaves((resumed.params, resumed.stats)),
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  config = json.loads((workdir / 'config.json').read_text())
  assert config['task'] == 'parser' and config['resolution'] == R
  assert list(workdir.glob('events.out.tfevents.*')), 'no TensorBoard summaries'
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  manager = ocp.CheckpointManager(str(workdir / 'checkpoints'))
  metrics = manager.metrics(4)
  assert 0.0 <= metrics['eval/miou'] <= 1.0 and 0.0 <= metrics['eval/pixel_accuracy'] <= 1.0


def test_config_errors_fail_before_device_work(dataset, tmp_path):
  cfg = _loop_config(dataset, 1)
  with cfg.unlocked():
    cfg.optim.momentun = 0.9
  with pytest.raises(ValueError, match='optim.momentun'):
    train_parser.train_and_evaluate(cfg, str(tmp_path / 'w'))
  cfg = _loop_config('', 1)
  with pytest.raises(ValueError, match='config.data.dataset is empty'):
    train_parser.train_and_evaluate(cfg, str(tmp_path / 'w'))
  cfg = _loop_config(dataset, 1)
  cfg.optim.schedule = 'linear'
  with pytest.raises(ValueError, match='schedule'):
    train_parser.train_and_evaluate(cfg, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_non_finite_loss_stops_with_a_clear_message(dataset, tmp_path, monkeypatch):
  patch_train_batches(monkeypatch, nan_pixel_at(2))  # the third step sees a NaN pixel
  cfg = _loop_config(dataset, 4)
  cfg.checkpoint.every = 1
  with pytest.raises(trainer.NonFiniteLossError, match='non-finite parser loss at step 3'):
    train_parser.train_and_evaluate(cfg, str(tmp_path / 'w'))
  saved = sorted(
    int(p.name) for p in (tmp_path / 'w' / 'checkpoints').iterdir() if p.name.isdigit()
  )
  assert saved == [1, 2]


def test_run_py_dispatches_parser_configs(tmp_path):
  """run.py hands task='parser' configs to the parser trainer, whose own check fails here
  (the SDGAN trainer would have refused the unknown key 'task' instead)."""
  import run  # pylint: disable=import-outside-toplevel

  repo = pathlib.Path(__file__).resolve().parents[1]
  run.FLAGS(
    ['run.py', f'--config={repo / "configs" / "eagrnet_folder.py"}', f'--workdir={tmp_path / "w"}']
  )
  try:
    with pytest.raises(ValueError, match='config.data.folder is empty'):
      run.main([])
  finally:
    run.FLAGS.unparse_flags()


# ---------------------------------------------------------------------------------------
# Parsing-dataset folders.


def _reference_map(swap_eyes: bool = False):
  """A 64x64 ground-truth map in our classes, written out directly."""
  want = np.zeros((64, 64), np.uint8)
  want[10:56, 16:48] = C['skin']
  want[0:10, 8:56] = C['hair']
  want[18:20, 20:28], want[18:20, 36:44] = C['left_brow'], C['right_brow']
  want[22:26, 20:28], want[22:26, 36:44] = C['left_eye'], C['right_eye']
  want[26:36, 29:35] = C['nose']
  want[40:42, 24:40] = C['upper_lip']
  want[42:44, 24:40] = C['inner_mouth']
  want[44:46, 24:40] = C['lower_lip']
  return want


def _write_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def _celebamask_folder(root):
  """Three CelebAMask-HQ images: 128-px JPEGs, 64-px part masks (half size, as the real)."""
  want = _reference_map()
  part_of = {
    'skin': 'skin',
    'hair': 'hair',
    'left_brow': 'l_brow',
    'right_brow': 'r_brow',
    'left_eye': 'l_eye',
    'right_eye': 'r_eye',
    'nose': 'nose',
    'upper_lip': 'u_lip',
    'inner_mouth': 'mouth',
    'lower_lip': 'l_lip',
  }
  expected = {}
  for idx in range(3):
    parts = {part_of[name]: want == C[name] for name in part_of}
    if idx == 1:  # the dataset's l_/r_ names on the other sides
      parts['l_eye'], parts['r_eye'] = parts['r_eye'], parts['l_eye']
      parts['l_brow'], parts['r_brow'] = parts['r_brow'], parts['l_brow']
    if idx == 2:  # the ambiguous parts
      band = np.zeros_like(want, bool)
      band[21:26, 18:46] = True  # eyeglasses over both eyes
      parts['eye_g'] = band
      parts['skin'] = parts['skin'] & ~band  # the annotators' skin stops at the glasses
      hat = np.zeros_like(want, bool)
      hat[0:5, 8:56] = True  # a hat over the top of the hair mask
      parts['hat'] = hat
      ears = np.zeros_like(want, bool)
      ears[20:30, 12:16] = True
      parts['l_ear'] = ears
      neck = np.zeros_like(want, bool)
      neck[56:64, 24:40] = True
      parts['neck'], parts['cloth'] = neck, np.pad(np.ones((4, 64), bool), ((60, 0), (0, 0)))
      three = want.copy()
      three[band & ~np.isin(want, [C['left_eye'], C['right_eye']])] = C['skin']
      three[hat | ears | neck | parts['cloth']] = C['background']
      expected[idx] = three
    else:
      expected[idx] = want
    for part, m in parts.items():
      _write_png(
        root / 'CelebAMask-HQ-mask-anno' / '0' / f'{idx:05d}_{part}.png', m.astype(np.uint8) * 255
      )
    image = np.random.default_rng(idx).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    _write_png(root / 'CelebA-HQ-img' / f'{idx}.jpg', image)
  return expected


def test_celebamask_hq_folder_gives_our_classes(tmp_path):
  root = tmp_path / 'CelebAMask-HQ'
  expected = _celebamask_folder(root)
  folder = pf.ParsingFolder(root, 'train', holdout=1)
  assert folder.layout == 'celebamask_hq' and [e.name for e in folder.examples] == ['0', '1']
  val = pf.ParsingFolder(root, 'val', holdout=1)
  assert [e.name for e in val.examples] == ['2']
  for i in range(2):
    image, labels = folder.load(i, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected[i])
  np.testing.assert_array_equal(val.load(0, 64)[1], expected[2])
  # As labelled: the swapped names of image 1 are kept.
  kept = pf.ParsingFolder(root, 'train', holdout=1, sides='as_labelled').load(1, 64)[1]
  assert (kept[expected[1] == C['left_eye']] == C['right_eye']).all()
  # Nearest-neighbour downsizing: every output pixel is one input pixel's class.
  small = folder.load(0, 32)[1]
  assert any(np.array_equal(small, expected[0][dy::2, dx::2]) for dy in (0, 1) for dx in (0, 1))


def test_lapa_folder_gives_our_classes(tmp_path):
  root = tmp_path / 'LaPa'
  want = _reference_map()
  wide = np.zeros((64, 80), np.uint8)
  wide[:, 8:72] = want  # a non-square image: the centre square is kept
  _write_png(root / 'train' / 'labels' / 'a.png', wide)
  _write_png(root / 'train' / 'images' / 'a.jpg', np.full((64, 80, 3), 128, np.uint8))
  flipped = wide[:, ::-1].copy()  # LaPa ids of a mirrored face, as labelled by name
  _write_png(root / 'train' / 'labels' / 'b.png', flipped)
  _write_png(root / 'train' / 'images' / 'b.jpg', np.full((64, 80, 3), 64, np.uint8))
  folder = pf.ParsingFolder(root, 'train')
  assert folder.layout == 'lapa' and len(folder) == 2
  image, labels = folder.load(0, 64)
  assert image.shape == (64, 64, 3)
  np.testing.assert_array_equal(labels, want)
  # Mirrored: by position the image-left eye/brow are left_*, whatever the ids said.
  mirror = np.arange(11)
  mirror[[2, 3, 4, 5]] = [3, 2, 5, 4]
  np.testing.assert_array_equal(folder.load(1, 64)[1], mirror[want[:, ::-1]])

  # Training batches: deterministic, and a flip mirrors the image and swaps the classes.
  plain = next(
    parsing_batches.train_batches(folder, batch_size=2, resolution=32, seed=3, flip_prob=0.0)
  )
  flipped_batch = next(
    parsing_batches.train_batches(folder, batch_size=2, resolution=32, seed=3, flip_prob=1.0)
  )
  np.testing.assert_array_equal(flipped_batch['image'], plain['image'][:, :, ::-1])
  np.testing.assert_array_equal(flipped_batch['semantic'], mirror[plain['semantic'][:, :, ::-1]])
  evals = list(parsing_batches.eval_batches(folder, batch_size=4, resolution=32))
  assert len(evals) == 1 and evals[0]['valid'].tolist() == [1, 1, 0, 0]

  _write_png(root / 'train' / 'labels' / 'a.png', np.full((64, 80), 11, np.uint8))
  with pytest.raises(ValueError, match='LaPa label ids must be 0..10'):
    folder.load(0, 64)
  (root / 'train' / 'labels' / 'b.png').unlink()
  with pytest.raises(pf.LayoutError, match='no label map'):
    pf.ParsingFolder(root, 'train')
  with pytest.raises(pf.LayoutError, match="split 'val' not found"):
    pf.ParsingFolder(root, 'val')


def test_wrong_layout_is_a_clear_error(tmp_path):
  (tmp_path / 'faces' / 'images').mkdir(parents=True)
  with pytest.raises(pf.LayoutError, match='neither known layout.*CelebA-HQ-img.*LaPa'):
    pf.ParsingFolder(tmp_path / 'faces')
  (tmp_path / 'wrapped' / 'CelebAMask-HQ').mkdir(parents=True)
  with pytest.raises(pf.LayoutError, match='did you mean .*CelebAMask-HQ'):
    pf.ParsingFolder(tmp_path / 'wrapped')
  with pytest.raises(pf.LayoutError, match='does not exist'):
    pf.ParsingFolder(tmp_path / 'nowhere')
  root = tmp_path / 'cm'
  _celebamask_folder(root)
  _write_png(
    root / 'CelebAMask-HQ-mask-anno' / '0' / '00001_glasses.png', np.zeros((64, 64), np.uint8)
  )
  with pytest.raises(pf.LayoutError, match="unknown CelebAMask-HQ part 'glasses'"):
    pf.ParsingFolder(root)
  with pytest.raises(pf.LayoutError, match="not 'lapa'"):
    pf.ParsingFolder(root / '..' / 'cm', layout='lapa')


# ---------------------------------------------------------------------------------------
# Data preparation with a trained parser.


@pytest.mark.slow
def test_prepare_with_a_parser_writes_its_argmax(trained, tmp_path):
  from skimage import data  # pylint: disable=import-outside-toplevel

  _, resumed, workdir, _ = trained
  parser = parser_inference.TrainedParser.from_workdir(workdir, batch_size=2)
  assert parser.step == 4

  photo = np.asarray(data.astronaut())[..., :3]
  landmarks = samples.photo_landmarks(photo)
  rng = np.random.default_rng(0)
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(3):
    crop, _ = samples.celeba_style_crop(photo, landmarks, rng if i else None)
    Image.fromarray(crop).save(folder / f'{i:06d}.jpg', quality=95)
  items = [(f'{i:06d}.jpg', 1) for i in range(3)]
  source = image_sources.FolderSource(folder, dict(items))
  options = face_records.FaceOptions(resolution=R)

  prepare.prepare_items(
    items,
    source.payloads,
    tmp_path / 'parsed',
    options,
    workers=0,
    chunk_size=2,
    progress=False,
    parser=parser,
  )
  prepare.prepare_items(
    items, source.payloads, tmp_path / 'polygons', options, workers=0, chunk_size=2, progress=False
  )
  parsed = list(chunks_lib.iter_prepared(tmp_path / 'parsed'))
  polygons = list(chunks_lib.iter_prepared(tmp_path / 'polygons'))
  assert len(parsed) == len(polygons) == 3

  # Reference: the restored network applied directly to the stored crops.
  models = train_parser.ParserModels(tiny_parser_config())
  crops = np.stack([p['image'] for p in parsed]).astype(np.float32) / 255
  logits = jax.jit(models.model.apply)({'params': resumed.params, **resumed.stats}, crops)[
    'parsing'
  ]
  want = np.asarray(np.argmax(logits, -1))
  got = np.stack([p['semantic'][..., 0] for p in parsed])
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(got)) > 1
  for p, q in zip(parsed, polygons):
    np.testing.assert_array_equal(p['image'], q['image'])
    np.testing.assert_array_equal(p['landmarks'], q['landmarks'])
    # The face mask stays the landmark mask; the polygon run keeps the polygon map.
    np.testing.assert_array_equal(p['mask'], masks.face_mask(p['landmarks'], R) * 255)
    np.testing.assert_array_equal(q['mask'], p['mask'])
    np.testing.assert_array_equal(
      q['semantic'][..., 0], masks.semantic_map(q['landmarks'], R, q['mask'])
    )

  manifest = chunks_lib.load_manifest(tmp_path / 'parsed')
  assert manifest['semantic_parser'] == parser.fingerprint
  assert 'semantic_parser' not in chunks_lib.load_manifest(tmp_path / 'polygons')
  # The two kinds of maps never mix in one folder.
  with pytest.raises(ValueError, match='semantic_parser'):
    prepare.prepare_items(
      items, source.payloads, tmp_path / 'parsed', options, workers=0, chunk_size=2, progress=False
    )
