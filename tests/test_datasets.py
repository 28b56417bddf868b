"""CelebA files, the identity split, the resumable preparation, the TFDS dataset, samples.

The data are real faces: a fake CelebA folder in the official layout made from the sample
photos (``fake_celeba``), with a truncated JPEG, a photo without a face, a missing file and
an identity with too few images. It goes through the preparation (2 worker processes,
interrupted and resumed), the TFDS builder (ArrayRecord) and the input pipeline.
"""

import collections
import json
import os

import fake_celeba
import numpy as np
import pytest

from sdgan_jax.datasets import celeba_files, face_records, features, image_sources, prepare, samples
from sdgan_jax.datasets import chunks as chunks_lib

CHUNK = 4


# ---------------------------------------------------------------------------------------
# The identity split (paper §4.1).


def _synthetic_table(seed, num_ids=2000):
  """{file: id} for ``num_ids`` random CelebA-like ids with 29..35 images each."""
  rng = np.random.default_rng(seed)
  ids = rng.choice(np.arange(1, 10178), num_ids, replace=False)
  counts = rng.integers(29, 36, num_ids)
  rows = [(int(i), k) for i, n in zip(ids, counts) for k in range(n)]
  order = rng.permutation(len(rows))
  return {f'{n:06d}.jpg': rows[j][0] for n, j in enumerate(order, 1)}, dict(zip(ids, counts))


def test_split_rule_gives_paper_counts_deterministically():
  table, counts = _synthetic_table(0)
  split = celeba_files.identity_split(table)
  # Independent reference: the documented rule, written out directly.
  eligible = sorted(int(i) for i, n in counts.items() if n >= 30)
  assert len(eligible) >= 1563
  assert split.train == eligible[:1200] and split.test == eligible[1200:1563]
  assert len(split.train) == 1200 and len(split.test) == 363
  assert not set(split.train) & set(split.test)
  assert min(counts[i] for i in split.train + split.test) >= 30
  assert split.num_eligible == len(eligible) and split.num_identities == 2000
  assert split.images_listed == {
    'train': int(sum(counts[i] for i in split.train)),
    'test': int(sum(counts[i] for i in split.test)),
  }
  # The same table in another order gives the same split.
  shuffled = dict(sorted(table.items(), key=lambda kv: hash(kv[0]) % 977))
  assert celeba_files.identity_split(shuffled).to_json() == split.to_json()
  # Labels follow the saved lists, and survive the JSON round trip.
  again = celeba_files.IdentitySplit.from_json(json.loads(json.dumps(split.to_json())))
  assert again == split
  assert [again.label_of(i) for i in split.test[:5]] == [0, 1, 2, 3, 4]
  assert again.split_of(split.train[7]) == 'train' and again.label_of(split.train[7]) == 7
  outside = next(i for i in counts if counts[i] < 30)
  assert again.split_of(outside) is None


def test_split_rule_strict_threshold_and_errors():
  table, counts = _synthetic_table(1, num_ids=4000)
  strict = celeba_files.identity_split(table, min_images=31)
  assert min(counts[i] for i in strict.train + strict.test) >= 31
  assert strict.num_eligible == sum(1 for n in counts.values() if n >= 31)
  small, _ = _synthetic_table(2, num_ids=300)
  with pytest.raises(ValueError, match='has only .* such identities'):
    celeba_files.identity_split(small)
  rest = celeba_files.identity_split(small, num_train=10, num_test=None, min_images=30)
  assert len(rest.test) == rest.num_eligible - 10


# ---------------------------------------------------------------------------------------
# Reading the official files.


def test_reads_official_celeba_files(tmp_path):
  (tmp_path / 'img_align_celeba').mkdir()
  with pytest.raises(celeba_files.CelebAFilesError, match='identity_CelebA.txt.*mmlab'):
    celeba_files.load_celeba_dir(tmp_path)
  (tmp_path / 'Anno').mkdir()
  (tmp_path / 'Anno' / 'identity_CelebA.txt').write_text('000001.jpg 2880\n000002.jpg 2937\n')
  (tmp_path / 'Eval').mkdir()
  (tmp_path / 'Eval' / 'list_eval_partition.txt').write_text('000001.jpg 0\n000002.jpg 2\n')
  files = celeba_files.load_celeba_dir(tmp_path)
  assert files.identities == {'000001.jpg': 2880, '000002.jpg': 2937}
  assert files.partition == {'000001.jpg': 0, '000002.jpg': 2}
  landmarks = tmp_path / 'list_landmarks_align_celeba.txt'
  landmarks.write_text(
    '1\n'
    + ' '.join(celeba_files.LANDMARK_NAMES)
    + '\n000001.jpg 69 109 106 113 77 142 73 152 108 154\n'
  )
  assert celeba_files.read_landmarks(landmarks) == {
    '000001.jpg': [69, 109, 106, 113, 77, 142, 73, 152, 108, 154]
  }
  attrs = tmp_path / 'list_attr_celeba.txt'
  attrs.write_text('2\n5_o_Clock_Shadow Male\n000001.jpg -1  1\n000002.jpg  1 -1\n')
  names, table = celeba_files.read_attributes(attrs)
  assert names == ['5_o_Clock_Shadow', 'Male'] and table['000002.jpg'] == [1, -1]
  attrs.write_text('3\n5_o_Clock_Shadow Male\n000001.jpg -1  1\n')
  with pytest.raises(ValueError, match='announces 3 images but lists 1'):
    celeba_files.read_attributes(attrs)
  (tmp_path / 'Anno' / 'identity_CelebA.txt').write_text('000001.jpg 2880\n000002.jpg x\n')
  with pytest.raises(ValueError, match=r'identity_CelebA.txt:2: expected'):
    celeba_files.load_celeba_dir(tmp_path)
  os.rmdir(tmp_path / 'img_align_celeba')
  (tmp_path / 'img_align_celeba.zip').write_bytes(b'')
  with pytest.raises(celeba_files.CelebAFilesError, match='unzip it first'):
    celeba_files.load_celeba_dir(tmp_path)


# ---------------------------------------------------------------------------------------
# Preparation: skips, resume, agreement with the face pipeline.


@pytest.fixture(scope='module')
def fake(tmp_path_factory, download_cache):
  return fake_celeba.make_fake_celeba(tmp_path_factory.mktemp('celeba'), download_cache)


@pytest.fixture(scope='module')
def runs(fake, tmp_path_factory):
  """An interrupted + resumed run (2 processes) and an uninterrupted one (in-process)."""
  resumed = tmp_path_factory.mktemp('prepared') / 'celeba_128'
  source = image_sources.celeba_folder_source(fake.root)
  first = prepare.prepare_source(
    source,
    resumed,
    workers=2,
    chunk_size=CHUNK,
    max_new_chunks=2,
    progress=False,
    **fake_celeba.SPLIT,
  )
  chunks = sorted((resumed / chunks_lib.CHUNK_DIR).glob('chunk-*.npz'))
  mtimes = {p.name: p.stat().st_mtime_ns for p in chunks}
  # A torn file where the third chunk goes (e.g. a disk error): it must not count as done.
  chunks_lib.chunk_path(resumed, 2).write_bytes(b'PK\x03\x04 not a finished chunk')
  second = prepare.prepare_source(
    source, resumed, workers=2, chunk_size=CHUNK, progress=False, **fake_celeba.SPLIT
  )
  whole = tmp_path_factory.mktemp('prepared_whole') / 'celeba_128'
  uninterrupted = prepare.prepare_source(
    source, whole, workers=0, chunk_size=CHUNK, progress=False, **fake_celeba.SPLIT
  )
  return dict(first=first, second=second, uninterrupted=uninterrupted, mtimes=mtimes)


def test_preparation_reports_every_skipped_image(fake, runs):
  report = runs['second'].report
  assert report.complete
  in_split = [f for f, i in fake.identities.items() if i != fake_celeba.FEW_IMAGES_ID]
  assert report.num_items == len(in_split) == 19
  assert report.skip_counts == {
    'missing': 1,
    'unreadable': 1,
    'no_face': 1,
    'too_small': 0,
    'failed': 0,
  }
  for reason in ('missing', 'unreadable', 'no_face'):
    assert report.skipped[reason] == fake.files(reason)
  assert report.num_faces == len(fake.files('face')) == 16
  skipped = json.loads((runs['second'].prepared_dir / prepare.SKIPPED_FILE).read_text())
  assert skipped['counts'] == report.skip_counts
  details = {e['filename']: e for e in skipped['skipped']}
  assert 'truncated' in details[fake.files('unreadable')[0]]['detail']
  assert report.multi_face == []
  assert 'images/s' in report.summary() and 'no_face 1' in report.summary()
  # The identity with too few images is outside the split and never prepared.
  few = fake.files('few')
  assert not set(few) & {f for fs in report.skipped.values() for f in fs}
  split = runs['second'].split
  assert split.train == fake_celeba.EXPECTED_TRAIN and split.test == fake_celeba.EXPECTED_TEST
  faces = collections.Counter(fake.identities[f] for f in fake.files('face'))
  assert split.images_prepared == {'train': faces[17] + faces[2880], 'test': faces[4021]}
  assert split.images_listed == {'train': 13, 'test': 6}
  saved = celeba_files.IdentitySplit.load(runs['second'].prepared_dir / prepare.SPLIT_FILE)
  assert saved == split


def test_interrupted_preparation_resumes_without_recomputing(runs):
  first, second = runs['first'].report, runs['second'].report
  num_chunks = -(-19 // CHUNK)
  assert (first.chunks_computed, first.complete, first.num_chunks) == (2, False, num_chunks)
  assert runs['first'].split.images_prepared == {}
  assert second.chunks_reused == 2 and second.chunks_computed == num_chunks - 2
  assert second.images_processed == 19 - 2 * CHUNK
  chunks = runs['second'].prepared_dir / chunks_lib.CHUNK_DIR
  for name, mtime in runs['mtimes'].items():
    assert (chunks / name).stat().st_mtime_ns == mtime, f'{name} was rewritten'
  # The resumed folder equals the uninterrupted (single-process) one, chunk by chunk.
  whole = runs['uninterrupted'].prepared_dir
  for i in range(num_chunks):
    with (
      np.load(chunks_lib.chunk_path(runs['second'].prepared_dir, i)) as a,
      np.load(chunks_lib.chunk_path(whole, i)) as b,
    ):
      assert sorted(a.files) == sorted(b.files)
      for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f'chunk {i} {key}')
  assert runs['uninterrupted'].report.skipped == second.skipped


def test_preparation_refuses_a_folder_made_with_other_settings(fake, runs):
  source = image_sources.celeba_folder_source(fake.root)
  with pytest.raises(ValueError, match='other settings.*options'):
    prepare.prepare_source(
      source,
      runs['second'].prepared_dir,
      face_records.FaceOptions(resolution=64),
      workers=0,
      chunk_size=CHUNK,
      progress=False,
      **fake_celeba.SPLIT,
    )


def test_prepared_records_match_the_face_pipeline(fake, runs):
  from sdgan_jax.faces import align, pipeline  # pylint: disable=import-outside-toplevel

  faces = {str(f['filename']): f for f in chunks_lib.iter_prepared(runs['second'].prepared_dir)}
  assert sorted(faces) == fake.files('face')
  for filename in fake.files('face')[::5]:
    image = face_records.decode_image(str(fake.root / 'img_align_celeba' / filename))
    found = pipeline.prepare_faces(image, resolution=128)
    reference = max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    got = faces[filename]
    np.testing.assert_array_equal(got['image'], reference.crop)
    np.testing.assert_array_equal(got['mask'], reference.mask)
    np.testing.assert_array_equal(got['semantic'], reference.semantic)
    np.testing.assert_array_equal(got['landmarks'], reference.landmarks)
    assert int(got['identity']) == fake.identities[filename]
    # The crop is eye-aligned: the eye centres sit at the canonical positions.
    eyes = got['landmarks'][36:48].reshape(2, 6, 2).mean(1)
    np.testing.assert_allclose(eyes, align.canonical_points(128)[:2], atol=2.0)


# ---------------------------------------------------------------------------------------
# The TFDS dataset and the input pipeline on it.


@pytest.fixture(scope='module')
def built(runs, tmp_path_factory):
  from sdgan_jax.datasets import builder  # pylint: disable=import-outside-toplevel

  data_dir = tmp_path_factory.mktemp('tfds')
  return builder.build_dataset(runs['second'].prepared_dir, data_dir, source='celeba')


def test_tfds_dataset_has_the_split_and_the_record_format(fake, runs, built):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from sdgan_jax.datasets import builder  # pylint: disable=import-outside-toplevel

  split = runs['second'].split
  assert built.info.file_format.value == 'array_record'
  assert builder.load_split(built) == split
  assert json.loads((built.data_path / prepare.SPLIT_FILE).read_text()) == split.to_json()
  assert built.info.metadata['skipped_counts']['unreadable'] == 1
  assert built.info.metadata['semantic_parser'] == ''  # polygon maps (semantic_source)
  spec = builder.tfds_features(128)
  assert built.info.features.get_serialized_info() == spec.get_serialized_info()
  source = built.as_data_source()
  for name, ids in (('train', split.train), ('test', split.test)):
    examples = [source[name][i] for i in range(len(source[name]))]
    files = sorted(e['filename'].decode() for e in examples)
    assert files == sorted(f for f in fake.files('face') if fake.identities[f] in ids)
    assert len(examples) == split.images_prepared[name]
    for e in examples:
      assert e['image'].shape == (128, 128, 3) and e['image'].dtype == np.uint8
      assert e['mask'].shape == (128, 128, 1) and set(np.unique(e['mask'])) <= {0, 255}
      assert e['semantic'].shape == (128, 128, 1) and e['semantic'].max() < features.NUM_CLASSES
      assert e['landmarks'].shape == (68, 2) and e['landmarks'].dtype == np.float32
      assert e['identity'] == fake.identities[e['filename'].decode()]
      assert e['label'] == ids.index(e['identity'])
      assert e['label'] == split.to_json()[name]['label_of_identity'][str(e['identity'])]
  # The registered name loads it too, and a second build reuses it.
  test = tfds.data_source(
    'sdgan_faces/celeba_128', data_dir=built.data_path.parents[2], split='test'
  )
  assert len(test) == split.images_prepared['test']
  again = builder.build_dataset(runs['second'].prepared_dir, built.data_path.parents[2])
  assert again.info.splits['train'].num_examples == split.images_prepared['train']


def test_input_pipeline_pairs_and_process_shards(runs, built):
  from sdgan_jax import input_pipeline as ip  # pylint: disable=import-outside-toplevel

  source = ip.load_data_source(built.data_path, 'train')
  identity = np.array([source[i]['identity'] for i in range(len(source))])
  label = np.array([source[i]['label'] for i in range(len(source))])
  batch = 4
  steps = ip.steps_per_epoch(len(source), batch)
  shards = []
  for process in (0, 1):
    shards.append(
      list(
        ip.train_iterator(
          source,
          batch_size=batch,
          resolution=64,
          seed=3,
          num_steps=steps,
          process_index=process,
          process_count=2,
          augmentation=ip.NO_AUGMENTATION,
        )
      )
    )
  seen = []
  for step in range(steps):
    a, b = shards[0][step], shards[1][step]
    assert not set(a['index']) & set(b['index'])
    seen.extend(a['index'].tolist() + b['index'].tolist())
    for part in (a, b):
      assert part['image'].shape == (batch // 2, 64, 64, 3)
      np.testing.assert_array_equal(part['label'], label[part['index']])
      same = identity[part['index']] == identity[part['pair_index']]
      np.testing.assert_array_equal(part['pair_same'], same.astype(np.float32))
      np.testing.assert_array_equal(part['pair_label'], label[part['pair_index']])
  assert len(seen) == len(set(seen)) == steps * batch
  assert set(seen) <= set(range(len(source)))


# ---------------------------------------------------------------------------------------
# Other sources: TFDS's celeb_a, and the embedded samples.


def test_tfds_celeb_a_source_gives_the_same_faces(fake, runs, tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from sdgan_jax.datasets import builder  # pylint: disable=import-outside-toplevel

  # celeb_a's real download is not reachable here: serve four of the fake files through
  # TFDS's mock of celeb_a's as_dataset, in its feature layout (JPEG bytes, identity).
  names = {
    'train': [f for f in fake.files('face') if fake.identities[f] == 2880][:2],
    'validation': [],
    'test': [f for f in fake.files('face') if fake.identities[f] == 4021][:2],
  }

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del self, kwargs
    assert isinstance(decoders['image'], tfds.decode.SkipDecoding) and read_config.add_tfds_id
    files = names[split]
    return tf.data.Dataset.from_tensor_slices(
      {
        'tfds_id': tf.constant([f'celeb_a-{split}__{f}' for f in files], tf.string),
        'image': tf.constant(
          [(fake.root / 'img_align_celeba' / f).read_bytes() for f in files], tf.string
        ),
        'identity': {'Identity_No': tf.constant([fake.identities[f] for f in files], tf.int64)},
      }
    )

  with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=str(tmp_path / 'tfds')):
    source = builder.TfdsCelebASource(tmp_path / 'tfds')
    assert source.index() == {
      f'celeb_a-{s}__{f}': fake.identities[f] for s in ('train', 'test') for f in names[s]
    }
    got = prepare.prepare_source(
      source,
      tmp_path / 'prepared',
      workers=0,
      progress=False,
      num_train=1,
      num_test=1,
      min_images=2,
    )
  assert got.split.train == [2880] and got.split.test == [4021]
  reference = {str(f['filename']): f for f in chunks_lib.iter_prepared(runs['second'].prepared_dir)}
  faces = list(chunks_lib.iter_prepared(tmp_path / 'prepared'))
  assert len(faces) == 4
  for face in faces:
    original = reference[str(face['filename']).split('__')[1]]
    np.testing.assert_array_equal(face['image'], original['image'])
    assert face['identity'] == original['identity']


def test_sample_folder_is_celeba_layout_with_licence_note(tmp_path, download_cache):
  root = samples.build_sample_folder(tmp_path / 'samples', download_cache, copies=2)
  files = celeba_files.load_celeba_dir(root)
  expected = [p.identity for p in samples.SAMPLE_PHOTOS for _ in range(2)]
  assert list(files.identities.values()) == expected
  assert sorted(files.identities) == [f'{n:06d}.jpg' for n in range(1, 11)]
  landmarks = celeba_files.read_landmarks(root / celeba_files.LANDMARKS_FILE)
  # Un-jittered crops put the eyes at CelebA's mean positions.
  np.testing.assert_allclose(landmarks['000001.jpg'][:4], [69, 111, 108, 111], atol=2)
  readme = (root / 'README.txt').read_text()
  assert 'public domain' in readme and 'Pete Souza' in readme and 'NASA' in readme
  split = celeba_files.identity_split(files.identities, **samples.SAMPLE_SPLIT)
  assert split.train == [1, 2] and split.test == [3]
  stamp = (root / 'samples.json').stat().st_mtime_ns
  samples.build_sample_folder(root, download_cache, copies=2)  # reused, not rewritten
  assert (root / 'samples.json').stat().st_mtime_ns == stamp
