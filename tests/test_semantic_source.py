"""The semantic maps a model was trained on, recorded and honoured at inference (paper §3.2).

One tiny EAGRNet (the 32-px network of ``test_parser_training``, trained 2 steps, so its
compiled programs are shared through the persistent compilation cache) and two untrained
32-px SDGAN workdirs (``train_fixtures``): one as older runs left them (no record: polygon
maps), one whose record names the parser. Detection is dlib's HOG (no converted weights
needed) and the identity check is off: these tests check which maps reach the generator.
"""
# pylint: disable=protected-access

import json
import os
import pathlib
import shutil
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
import train_fixtures
from PIL import Image
from test_parser_training import _face_maps, tiny_parser_config
from tool_loader import load_tool

from sdgan_jax import (
  anonymize,
  identity_bank,
  parser_inference,
  semantic_source,
  train,
  train_parser,
  trainer,
)
from sdgan_jax.datasets.builder import tfds_features
from sdgan_jax.evaluation import eval_options
from sdgan_jax.evaluation import rows as rows_lib
from sdgan_jax.faces import masks

R = 32
ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONS = dict(detectors=('hog',), identity_threshold=0.0, workers=1)


def _load_tool(name):
  return load_tool(name)


def _records(rng, n):
  images, labels = _face_maps(rng, n)
  rows = []
  for i, (image, label) in enumerate(zip(images, labels)):
    rows.append(
      (
        i,
        dict(
          image=(image * 255).astype(np.uint8),
          mask=(label[..., None] > 0).astype(np.uint8) * 255,
          semantic=label[..., None].astype(np.uint8),
          landmarks=rng.uniform(8, 24, (68, 2)).astype(np.float32),
          identity=np.int64(i % 2),
          label=np.int64(i % 2),
          filename=f'{i}.jpg',
        ),
      )
    )
  return rows


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A TFDS data dir laid out as prepare_data.py's: DATA_DIR/<name>/<config>/1.0.0, with the
  preparation folder DATA_DIR/prepared/<config>/ (its manifest is written by the tests)."""
  root = tmp_path_factory.mktemp('semantic_data')
  rng = np.random.default_rng(1)
  builder = tfds.dataset_builders.store_as_tfds_dataset(
    name='semantic_test_faces',
    version='1.0.0',
    config='faces_32',
    features=tfds_features(R),
    split_datasets={'train': _records(rng, 8), 'test': _records(rng, 4)},
    data_dir=root,
    file_format='array_record',
  )
  cfg = train_fixtures.tiny_config(R)
  bank = identity_bank.IdentityBank(
    rng.normal(size=(2, cfg.identity_dim)),
    np.array([4, 4]),
    features=rng.normal(size=(8, cfg.identity_dim)),
  )
  bank.save(identity_bank.bank_path(builder.data_dir, 'train', cfg.data.identity_backbone))
  return root, pathlib.Path(builder.data_dir)


def _write_manifest(data_dir, parser_fingerprint=None, items='items0'):
  root, dataset = data_dir
  manifest = {'format_version': 1, 'items_fingerprint': items}
  if parser_fingerprint:
    manifest['semantic_parser'] = parser_fingerprint
  path = root / 'prepared' / dataset.parent.name / 'manifest.json'
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(manifest))
  return path


@pytest.fixture(scope='module')
def parser_workdir(data_dir, tmp_path_factory):
  """A tiny EAGRNet trained 2 steps on the cartoon faces of the data dir."""
  cfg = tiny_parser_config(str(data_dir[1]))
  cfg.train.num_steps = 2
  cfg.train.log_every = 1
  cfg.checkpoint.every = 2
  cfg.eval.num_batches = 1
  workdir = tmp_path_factory.mktemp('semantic_parser') / 'parser'
  train_parser.train_and_evaluate(cfg, str(workdir))
  return workdir


@pytest.fixture(scope='module')
def parser(parser_workdir):
  return parser_inference.TrainedParser.from_workdir(parser_workdir, batch_size=8)


@pytest.fixture(scope='module')
def models(tmp_path_factory, parser):
  """Untrained 32-px SDGAN workdirs: 'polygons' (no record, as older runs) and 'parser'
  (its record names the tiny parser)."""
  rng = np.random.default_rng(0)
  bank = identity_bank.IdentityBank(
    means=rng.normal(size=(4, 128)).astype(np.float32) * 0.1, counts=np.ones(4, np.int64)
  )
  root = tmp_path_factory.mktemp('semantic_models')
  polygons = train_fixtures.write_untrained_workdir(
    root / 'polygons', train_fixtures.tiny_config(R), bank
  )
  parsed = root / 'parser'
  shutil.copytree(polygons, parsed)
  semantic_source.write_record(
    parsed, semantic_source.SemanticSource.from_parser_fingerprint(parser.fingerprint)
  )
  return {'polygons': pathlib.Path(polygons), 'parser': parsed}


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
  from skimage import data  # pylint: disable=import-outside-toplevel

  path = tmp_path_factory.mktemp('semantic_photo') / 'astronaut.png'
  Image.fromarray(np.asarray(data.astronaut())[..., :3]).save(path)
  return path


# ---------------------------------------------------------------------------------------
# The record.


def test_the_record_follows_the_dataset_s_preparation(data_dir, tmp_path):
  root, dataset = data_dir
  fingerprint = '/somewhere/parser@7:0123456789abcdef'
  manifest = _write_manifest(data_dir, fingerprint)
  source = semantic_source.record_training_maps(tmp_path / 'w', dataset)
  record = json.loads((tmp_path / 'w' / semantic_source.RECORD).read_text())
  assert record == {
    'source': 'parser',
    'parser_fingerprint': fingerprint,
    'parser_workdir': '/somewhere/parser',
    'parser_step': 7,
    'dataset': str(dataset),
    'manifest': str(manifest),
  }
  assert semantic_source.read_record(tmp_path / 'w') == source
  assert source.label == fingerprint

  _write_manifest(data_dir)
  semantic_source.record_training_maps(tmp_path / 'w', dataset)
  assert json.loads((tmp_path / 'w' / semantic_source.RECORD).read_text()) == {
    'source': 'polygons',
    'dataset': str(dataset),
    'manifest': str(manifest),
  }
  # A manifest of another preparation than the one the dataset was built from, or none at
  # all, is not taken for the dataset's: polygons (as for older workdirs without a record).
  _write_manifest(data_dir, fingerprint, items='items1')
  (dataset / 'metadata.json').write_text(json.dumps({'prepared_fingerprint': 'items0'}))
  try:
    assert semantic_source.from_dataset(dataset).source == 'polygons'
    _write_manifest(data_dir, fingerprint, items='items0')
    assert semantic_source.from_dataset(dataset).label == fingerprint
    # the builder's metadata names the parser: it holds even without the manifest
    (dataset / 'metadata.json').write_text(json.dumps({'semantic_parser': fingerprint}))
    manifest.unlink()
    assert semantic_source.from_dataset(dataset).label == fingerprint
  finally:
    (dataset / 'metadata.json').unlink()
  assert semantic_source.from_dataset(tmp_path / 'a' / 'b' / 'c' / 'd').source == 'polygons'
  assert semantic_source.read_record(tmp_path / 'older') == semantic_source.SemanticSource()


def test_training_writes_the_record(data_dir, tmp_path, monkeypatch, parser):
  """train_and_evaluate records the maps of its dataset when it starts (the loop is
  stubbed out: only the start-up runs)."""
  manifest = _write_manifest(data_dir, parser.fingerprint)
  monkeypatch.setattr(trainer, 'run_training_loop', lambda state, *a, **k: (state, 0))
  cfg = train_fixtures.tiny_config(R)
  cfg.data.dataset = str(data_dir[1])
  cfg.loss.perceptual_weights = 'random'
  cfg.eval.num_batches = 0
  train.train_and_evaluate(cfg, str(tmp_path / 'run'))
  record = json.loads((tmp_path / 'run' / semantic_source.RECORD).read_text())
  assert record['source'] == 'parser' and record['parser_fingerprint'] == parser.fingerprint
  assert record['parser_workdir'] == os.path.abspath(parser.workdir)
  assert record['parser_step'] == parser.step == 2 and record['manifest'] == str(manifest)


# ---------------------------------------------------------------------------------------
# The anonymizer.


def _recording(anonymizer):
  """Records the crops and semantic maps each generator call gets."""
  calls = []
  generate = anonymizer.generator.generate

  def recording(image, mask, semantic, target_identity):
    calls.append((np.array(image), np.array(semantic)))
    return generate(image, mask, semantic, target_identity)

  anonymizer.generator.generate = recording
  return calls


@pytest.mark.slow  # restores two generators and compiles the parser's inference
def test_the_anonymizer_gives_a_parser_model_its_parser_s_maps(models, parser, photo, tmp_path):
  runs = {}
  for kind in ('polygons', 'parser'):
    anonymizer = anonymize.build_anonymizer(models[kind], options=anonymize.Options(**OPTIONS))
    calls = _recording(anonymizer)
    report = anonymize.anonymize_paths([photo], tmp_path / kind, anonymizer, progress=False)
    assert report['totals']['anonymized'] >= 1, report
    [(crops, semantic)] = calls
    runs[kind] = crops, semantic[..., 0], report
    assert (
      json.loads((tmp_path / kind / anonymize.REPORT_NAME).read_text())['semantic_maps']
      == report['semantic_maps']
    )
  crops, maps, report = runs['parser']
  assert report['semantic_maps'] == parser.fingerprint
  # The parser's output on the aligned crop, as prepare_data.py --parser stores it.
  np.testing.assert_array_equal(maps, parser(crops))
  polygon_crops, polygon_maps, polygon_report = runs['polygons']
  assert polygon_report['semantic_maps'] == 'polygons'
  np.testing.assert_array_equal(polygon_crops, crops)  # the same alignment
  assert not np.array_equal(polygon_maps, maps)

  # A moved parser workdir is accepted: the weights are the recorded ones.
  moved = tmp_path / 'moved_parser'
  shutil.copytree(parser.workdir, moved)
  anonymizer = anonymize.build_anonymizer(
    models['parser'], options=anonymize.Options(**OPTIONS, parser_workdir=str(moved))
  )
  assert anonymizer.parser.fingerprint != parser.fingerprint
  assert semantic_source.same_weights(anonymizer.parser.fingerprint, parser.fingerprint)
  calls = _recording(anonymizer)
  anonymizer.process([np.asarray(Image.open(photo))])
  np.testing.assert_array_equal(calls[0][1][..., 0], maps)


def test_parse_crops_checks_the_parser_s_output():
  crops = np.zeros((2, R, R, 3), np.uint8)
  assert semantic_source.parse_crops(lambda x: np.ones(x.shape[:3]), crops).shape == (2, R, R, 1)
  with pytest.raises(ValueError, match='maps of shape'):
    semantic_source.parse_crops(lambda x: np.ones((2, R, R, 1)), crops)


def test_mismatches_are_one_line_errors_in_the_clis(models, parser, photo, tmp_path, capsys):
  cli = _load_tool('anonymize')
  gone = tmp_path / 'gone_model'
  gone.mkdir()
  semantic_source.write_record(
    gone,
    semantic_source.SemanticSource.from_parser_fingerprint(
      f'{tmp_path}/no_parser@2:0123456789abcdef'
    ),
  )
  other = tmp_path / 'other_model'
  other.mkdir()
  semantic_source.write_record(
    other,
    semantic_source.SemanticSource.from_parser_fingerprint(f'{parser.workdir}@2:0123456789abcdef'),
  )
  cases = [
    # trained on parser maps, the recorded parser workdir is gone and none is given
    (gone, [], ['does not exist', '--parser']),
    # a parser other than the recorded one: given, or found where the record says
    (other, ['--parser', str(parser.workdir)], ['weights differ']),
    (other, [], ['weights differ']),
    # a parser for a model trained on polygon maps
    (
      models['polygons'],
      ['--parser', str(parser.workdir)],
      ['landmark-polygon', 'leave out --parser'],
    ),
    # not a parser workdir
    (
      models['parser'],
      ['--parser', str(models['polygons'])],
      ['--parser', 'not a face parser workdir'],
    ),
  ]
  for model, flags, words in cases:
    code = cli.main(
      [
        str(photo),
        '--output',
        str(tmp_path / 'out'),
        '--checkpoint',
        str(model),
        '--no_identity_check',
        '--detectors',
        'hog',
        '--no_progress',
        *flags,
      ]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert code == 2 and len(errors) == 1 and 'Traceback' not in err, (model, flags, err)
    assert all(w in errors[0] for w in words), (words, errors[0])
  assert not (tmp_path / 'out').exists()
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_args([str(photo), '--output', 'out', '--baseline', 'blur', '--parser', 'p'])
  assert exit_info.value.code == 2 and 'baselines use no' in capsys.readouterr().err
  # The library refuses the same.
  with pytest.raises(semantic_source.SemanticMapsError, match='leave out --parser'):
    semantic_source.parser_for(semantic_source.SemanticSource(), parser)
  with pytest.raises(semantic_source.SemanticMapsError, match='baselines use no'):
    anonymize.FaceAnonymizer(
      baseline='blur', options=anonymize.Options(**OPTIONS, parser_workdir=str(parser.workdir))
    )


# ---------------------------------------------------------------------------------------
# tools/eval.py


def _row(record, checkpoint='w'):
  generator = types.SimpleNamespace(semantic_maps=record, resolution=R)
  return rows_lib.Row('model0', 'm', 'model', checkpoint, 0, generator)


def test_eval_gives_each_model_its_kind_of_maps(data_dir, parser):
  _, dataset = data_dir
  parsed = semantic_source.SemanticSource.from_parser_fingerprint(parser.fingerprint)
  polygons = semantic_source.SemanticSource()
  options = eval_options.EvalOptions(dataset=str(dataset), batch_size=8)
  _write_manifest(data_dir)  # a polygon dataset
  rows = [_row(parsed), _row(polygons)]
  rows_lib.assign_semantic_maps(rows, options)
  assert [r.maps for r in rows] == ['parser', 'dataset']
  assert rows[0].parser.fingerprint == parser.fingerprint and rows[1].parser is None
  assert [r.semantic_maps for r in rows] == [parser.fingerprint, 'polygons']
  _write_manifest(data_dir, parser.fingerprint)  # the parser's dataset
  rows = [_row(parsed), _row(polygons)]
  rows_lib.assign_semantic_maps(rows, options)
  assert [r.maps for r in rows] == ['dataset', 'polygons']

  # The maps the generator gets: the parser's of the crops, polygons from the landmarks.
  rng = np.random.default_rng(3)
  images, labels = _face_maps(rng, 3)
  own = {
    'image': images,
    'semantic': labels.astype(np.uint8),
    'mask': (labels[..., None] > 0).astype(np.float32),
    'valid': np.array([1, 1, 0.0]),
    'landmarks': np.stack([_landmarks()] * 3),
  }
  crops = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
  parser_row = _row(parsed)
  parser_row.maps, parser_row.parser = 'parser', parser
  np.testing.assert_array_equal(rows_lib.model_semantic(parser_row, own), parser(crops))
  polygon_row = _row(polygons)
  polygon_row.maps = 'polygons'
  got = rows_lib.model_semantic(polygon_row, own)
  np.testing.assert_array_equal(got[0], masks.semantic_map(own['landmarks'][0], R, own['mask'][0]))
  assert not got[2].any()  # padding
  polygon_row.maps = 'dataset'
  np.testing.assert_array_equal(rows_lib.model_semantic(polygon_row, own), own['semantic'])


def _landmarks():
  """The astronaut's 68 landmarks in her 32-px aligned crop."""
  from skimage import data  # pylint: disable=import-outside-toplevel

  from sdgan_jax.datasets import samples  # pylint: disable=import-outside-toplevel
  from sdgan_jax.faces import pipeline  # pylint: disable=import-outside-toplevel

  image = np.asarray(data.astronaut())[..., :3]
  aligned, _, _ = pipeline.prepare_face(image, samples.photo_landmarks(image), R)
  return aligned.landmarks.astype(np.float32)


def test_eval_tool_refuses_a_parser_for_a_polygon_model(data_dir, models, parser, tmp_path, capsys):
  _write_manifest(data_dir)
  code = _load_tool('eval').main(
    [
      '--checkpoint',
      str(models['polygons']),
      '--data',
      str(data_dir[1]),
      '--split',
      'train,test',
      '--detectors',
      'blazeface',
      '--parser',
      str(parser.workdir),
      '--output',
      str(tmp_path / 'eval'),
      '--no_progress',
    ]
  )
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith('eval.py: error:')]
  assert code == 2 and len(errors) == 1, err
  assert 'landmark-polygon' in errors[0] and 'leave out --parser' in errors[0]
