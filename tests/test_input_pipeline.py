"""Input pipeline: sharding, pairs, determinism and restarts, augmentation, evaluation.

The test dataset is written in the prepared-face record format (sdgan_jax.datasets.features)
as a TFDS ArrayRecord dataset, from real photos (the face-recognition sdist's Obama and
Biden photos and scikit-image's astronaut): dlib's HOG detector and 68-point predictor give
the landmarks, crops around them are the images, and the semantic maps and masks are drawn
from the landmarks (synthetic, with eyes and brows as discs so that a landmark's class is
unambiguous).
"""

import faces_fixture
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from skimage import draw

from sdgan_jax import input_pipeline as ip
from sdgan_jax.config import ConfigError
from sdgan_jax.datasets import features as F
from sdgan_jax.datasets.builder import tfds_features

R = 128
CLS = {name: i for i, name in enumerate(F.SEMANTIC_CLASSES)}
# (photo, label, crop scale, (dx, dy) shift in landmark-box widths): 12 training examples
# of 3 identities (6 Obama, 4 Biden, 2 Collins) and 3 test examples.
TRAIN = [
  ('obama', 0, 1.6, (0, 0)),
  ('obama', 0, 1.9, (0.05, 0)),
  ('obama2', 0, 1.6, (0, 0)),
  ('obama2', 0, 1.8, (0, 0.05)),
  ('obama3', 0, 1.6, (0, 0)),
  ('obama3', 0, 2.0, (-0.05, 0)),
  ('biden', 1, 1.6, (0, 0)),
  ('biden', 1, 1.8, (0, -0.05)),
  ('biden', 1, 2.0, (0.05, 0.05)),
  ('biden', 1, 1.7, (-0.05, 0.0)),
  ('astronaut', 2, 1.6, (0, 0)),
  ('astronaut', 2, 1.9, (0, 0.05)),
]
TEST = [('obama', 0, 1.7, (0, 0)), ('biden', 1, 1.7, (0, 0)), ('astronaut', 2, 1.7, (0, 0))]


def _disc(semantic, centre, radius, value):
  rr, cc = draw.disk((centre[1], centre[0]), radius, shape=semantic.shape)
  semantic[rr, cc] = value


def _polygon(semantic, points, value):
  rr, cc = draw.polygon(points[:, 1], points[:, 0], shape=semantic.shape)
  semantic[rr, cc] = value


def _record(photo, landmarks, scale, shift, label, name):
  """A prepared record: a square crop around the 68 landmarks, resized to R."""
  lo, hi = landmarks.min(0), landmarks.max(0)
  side = int(round(scale * (hi - lo).max()))
  centre = (lo + hi) / 2 + np.asarray(shift) * (hi - lo).max()
  x0, y0 = np.round(centre - side / 2).astype(int)
  crop = Image.fromarray(photo).crop((x0, y0, x0 + side, y0 + side))
  image = np.asarray(crop.resize((R, R), Image.BILINEAR))
  points = ((landmarks - [x0, y0] + 0.5) * (R / side) - 0.5).astype(np.float32)
  semantic = np.zeros((R, R), np.uint8)
  _polygon(semantic, np.concatenate([points[0:17], points[26:16:-1]]), CLS['skin'])
  _polygon(semantic, points[[27, 31, 33, 35]], CLS['nose'])
  _polygon(semantic, points[48:60], CLS['upper_lip'])
  _polygon(semantic, points[[48, 54, 55, 56, 57, 58, 59]], CLS['lower_lip'])
  _polygon(semantic, points[60:68], CLS['inner_mouth'])
  for part, idx in (
    ('left_brow', slice(17, 22)),
    ('right_brow', slice(22, 27)),
    ('left_eye', slice(36, 42)),
    ('right_eye', slice(42, 48)),
  ):
    _disc(semantic, points[idx].mean(0), 5, CLS[part])
  mask = np.where((semantic >= 1) & (semantic <= 9), 255, 0).astype(np.uint8)
  return {
    'image': image,
    'mask': mask[..., None],
    'semantic': semantic[..., None],
    'landmarks': points,
    'identity': 1000 + label,
    'label': label,
    'filename': name,
  }


@pytest.fixture(scope='module')
def faces(download_cache):
  """name -> (photo, dlib 68 landmarks [68, 2] float32, detection box)."""
  import dlib  # pylint: disable=import-outside-toplevel

  from sdgan_jax.faces.detect import dlib_model_path  # pylint: disable=import-outside-toplevel

  photos = faces_fixture.load_face_photos(download_cache)
  detector = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(dlib_model_path('shape_predictor_68_face_landmarks.dat'))
  out = {}
  for name, photo in photos.items():
    rects = detector(photo, 0) or detector(photo, 1)
    rect = max(rects, key=lambda r: r.area())
    shape = predictor(photo, rect)
    out[name] = (photo, np.array([(p.x, p.y) for p in shape.parts()], np.float32))
  return out


@pytest.fixture(scope='module')
def records(faces):
  def make(rows, split):
    return [
      _record(faces[n][0], faces[n][1], s, d, lab, f'{n}_{split}_{i}.jpg')
      for i, (n, lab, s, d) in enumerate(rows)
    ]

  return {'train': make(TRAIN, 'train'), 'test': make(TEST, 'test')}


@pytest.fixture(scope='module')
def source(records, tmp_path_factory):
  """The TFDS ArrayRecord data sources of the test dataset, by split."""
  builder = tfds.dataset_builders.store_as_tfds_dataset(
    name='test_prepared_faces',
    version='1.0.0',
    features=tfds_features(R),
    split_datasets={s: list(enumerate(rows)) for s, rows in records.items()},
    data_dir=tmp_path_factory.mktemp('tfds'),
    file_format='array_record',
    disable_shuffling=False,
  )
  return {s: ip.load_data_source(builder.data_dir, s) for s in records}


@pytest.fixture(scope='module')
def decoded(source):
  """The examples as the TFDS source decodes them, in its order (TFDS shuffles records)."""
  return {s: [src[i] for i in range(len(src))] for s, src in source.items()}


def _batches(src, n, **kw):
  kw = dict(dict(batch_size=4, resolution=64, seed=7), **kw)
  return list(ip.train_iterator(src, num_steps=n, **kw))


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---------------------------------------------------------------------------- the plan


def test_plan_shards_disjoint_cover_and_match_single_process():
  labels = np.repeat(np.arange(9), [1, 2, 3, 4, 5, 6, 7, 8, 12])  # 48 examples
  whole = ip.TrainPlan(labels, batch_size=12, seed=5, process_index=0, process_count=1)
  plans = [ip.TrainPlan(labels, 12, 5, process_index=p, process_count=2) for p in (0, 1)]
  assert whole.steps_per_epoch == 4 and plans[0].local_batch_size == 6
  for epoch in range(3):
    seen = [np.concatenate([p.step(epoch * 4 + j)['index'] for j in range(4)]) for p in plans]
    assert not set(seen[0]) & set(seen[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(48))
    for j in range(4):
      step = epoch * 4 + j
      glob = whole.step(step)
      for k in glob:
        np.testing.assert_array_equal(
          np.concatenate([p.step(step)[k] for p in plans]), glob[k], err_msg=k
        )
  # Epochs are shuffled differently, and seeds differ.
  assert not np.array_equal(whole.permutation(0), whole.permutation(1))
  other = ip.TrainPlan(labels, 12, 6, process_index=0, process_count=1)
  assert not np.array_equal(whole.permutation(0), other.permutation(0))


def test_plan_pairs():
  labels = np.repeat(np.arange(9), [1, 2, 3, 4, 5, 6, 7, 8, 12])
  plan = ip.TrainPlan(labels, 12, 3, process_index=0, process_count=1)
  partners = {i: set() for i in range(48)}
  same_count = 0
  for step in range(400):
    p = plan.step(step)
    assert p['pair_same'].sum() == 6  # exactly half of every batch
    i, j = p['index'], p['pair_index']
    np.testing.assert_array_equal(labels[i] == labels[j], p['pair_same'])
    single = labels[i] == 0  # the one identity with a single example pairs with itself
    np.testing.assert_array_equal((i == j), p['pair_same'] & single)
    same_count += p['pair_same'].sum()
    for a, b in zip(i, j):
      partners[a].add(b)
  assert same_count == 400 * 6
  # Every example of another identity, and every other example of its own, is reachable.
  for a in (20, 47):  # labels 5 and 8
    own = set(np.flatnonzero(labels == labels[a])) - {a}
    assert own <= partners[a]
    assert len(partners[a] - own) > 15


def test_plan_targets_are_other_identities_uniformly():
  labels = np.repeat(np.arange(4), [2, 4, 6, 12])  # 24 examples
  plan = ip.TrainPlan(labels, 8, 1, process_index=0, process_count=1)
  hits = np.zeros(24)
  for step in range(600):
    p = plan.step(step)
    assert np.all(labels[p['target_index']] != labels[p['index']])
    np.add.at(hits, p['target_index'][labels[p['index']] == 3], 1)
  # Sources of identity 3 draw uniformly over the 12 examples of the others.
  assert np.all(hits[labels == 3] == 0)
  others = hits[labels != 3]
  assert others.min() > 0.7 * others.mean() and others.max() < 1.3 * others.mean()


def test_authors_sampling_draws_identities_uniformly_with_their_pairs():
  """``sampling='authors'`` (their sampler): identities uniform whatever their sizes, with
  replacement; half of each batch a same-identity pair (two independent draws, the example
  itself now and then), half two independent identities (labelled same when they
  coincide); targets uniform over the other identities; shards as in the epoch plan."""
  # identity 0 holds 40 examples, identities 1-3 hold 4 each
  labels = np.array([0] * 40 + [1] * 4 + [2] * 4 + [3] * 4)
  plan = ip.TrainPlan(labels, 8, 4, process_index=0, process_count=1, slots=2, sampling='authors')
  steps = [plan.global_step(k) for k in range(1500)]
  index = np.concatenate([p['index'] for p in steps])
  partner = np.concatenate([p['pair_index'] for p in steps])
  same = np.concatenate([p['pair_same'] for p in steps])
  target = np.concatenate([p['target_index'] for p in steps])
  freq = np.bincount(labels[index], minlength=4) / len(index)
  np.testing.assert_allclose(freq, 0.25, atol=0.02)  # the epoch plan gives 40/52 to 0
  epoch = ip.TrainPlan(labels, 8, 4, process_index=0, process_count=1, slots=2)
  epoch_index = np.concatenate([epoch.global_step(k)['index'] for k in range(50)])
  assert np.mean(labels[epoch_index] == 0) > 0.7
  np.testing.assert_array_equal(same, labels[index] == labels[partner])
  # 1/2 same by construction + 1/2 * 1/4 coinciding "different" draws
  assert abs(np.mean(same) - 0.625) < 0.02
  for p in steps[:50]:  # at least half of every batch of 8 is a same pair
    assert np.all(p['pair_same'].reshape(2, 8).sum(1) >= 4)
  assert np.any(index == partner)  # with replacement: an example paired with itself
  assert np.all(labels[target] != labels[index])
  others = np.bincount(labels[target][labels[index] == 0], minlength=4)[1:]
  np.testing.assert_allclose(others / others.sum(), 1 / 3, atol=0.04)
  assert np.array_equal(plan.global_step(7)['index'], steps[7]['index'])  # deterministic
  halves = [ip.TrainPlan(labels, 8, 4, p, 2, slots=2, sampling='authors').step(7) for p in (0, 1)]
  for key in steps[7]:
    whole = steps[7][key].reshape(2, 8)
    got = np.stack([h[key].reshape(2, 4) for h in halves], 1).reshape(2, 8)
    np.testing.assert_array_equal(got, whole, err_msg=key)
  with pytest.raises(ValueError, match='sampling'):
    ip.TrainPlan(labels, 8, 4, 0, 1, sampling='uniform')


def test_train_iterator_takes_the_authors_sampling(source):
  for batch in _batches(source['train'], 2, sampling='authors'):
    np.testing.assert_array_equal(batch['pair_same'] == 1, batch['label'] == batch['pair_label'])
    assert np.all(batch['target_label'] != batch['label'])


def test_plan_slots_are_consecutive_batches_and_shard_per_slot():
  """Fresh batches: one step is ``slots`` global batches; each process takes its share of
  every slot, so the global batch of a slot does not depend on the process count."""
  labels = np.repeat(np.arange(6), 8)  # 48 examples
  flat = ip.TrainPlan(labels, 4, 2, process_index=0, process_count=1, slots=3)
  assert flat.steps_per_epoch == 4
  halves = [ip.TrainPlan(labels, 4, 2, process_index=p, process_count=2, slots=3) for p in (0, 1)]
  seen = []
  for step in range(4):
    whole = flat.step(step)['index'].reshape(3, 4)
    parts = [h.step(step)['index'].reshape(3, 2) for h in halves]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    np.testing.assert_array_equal(flat.step(step)['pair_same'].reshape(3, 4), [[1, 0, 1, 0]] * 3)
    seen.append(whole.ravel())
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(48))  # one epoch
  with pytest.raises(ValueError, match='fresh_batches'):
    ip.TrainPlan(labels, 16, 0, process_index=0, process_count=1, slots=4)


def test_slotted_batches_have_a_leading_slot_axis(source):
  slotted = _batches(source['train'], 1, slots=3, batch_size=2)[0]
  assert slotted['image'].shape == (3, 2, 64, 64, 3) and slotted['label'].shape == (3, 2)
  np.testing.assert_array_equal(slotted['pair_same'], [[1, 0]] * 3)
  assert len(set(slotted['index'].ravel())) == 6  # six different examples


def test_plan_rejects_bad_arguments():
  labels = np.arange(10) % 3
  with pytest.raises(ValueError, match='multiple of the process count'):
    ip.TrainPlan(labels, 5, 0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match='fewer than one step'):
    ip.TrainPlan(labels, 16, 0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match='at least two identities'):
    ip.TrainPlan(np.zeros(10), 4, 0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match='process_index 2'):
    ip.TrainPlan(labels, 4, 0, process_index=2, process_count=2)


# ------------------------------------------------------------------- the training stream


def test_batches_shapes_values_and_pairs(source, decoded):
  labels = np.array([r['label'] for r in decoded['train']])
  assert sorted(labels) == sorted(row[1] for row in TRAIN)
  np.testing.assert_array_equal(ip.read_labels(source['train']), labels)
  batches = _batches(source['train'], 6)  # two epochs
  b = batches[0]
  assert {k: (v.dtype.name, v.shape) for k, v in b.items()} == {
    'image': ('float32', (4, 64, 64, 3)),
    'mask': ('float32', (4, 64, 64, 1)),
    'semantic': ('uint8', (4, 64, 64)),
    'landmarks': ('float32', (4, 68, 2)),
    'label': ('int32', (4,)),
    'index': ('int32', (4,)),
    'pair_image': ('float32', (4, 64, 64, 3)),
    'pair_label': ('int32', (4,)),
    'pair_index': ('int32', (4,)),
    'pair_same': ('float32', (4,)),
    'target_image': ('float32', (4, 64, 64, 3)),
    'target_label': ('int32', (4,)),
    'target_index': ('int32', (4,)),
  }
  for b in batches:
    for k in ('image', 'pair_image', 'target_image'):
      assert 0.0 <= b[k].min() and b[k].max() <= 1.0 and b[k].std() > 0.1
    assert set(np.unique(b['mask'])) == {0.0, 1.0}
    assert b['semantic'].max() < F.NUM_CLASSES
    np.testing.assert_array_equal(b['label'], labels[b['index']])
    np.testing.assert_array_equal(b['pair_label'], labels[b['pair_index']])
    np.testing.assert_array_equal(b['pair_same'], b['label'] == b['pair_label'])
    np.testing.assert_array_equal(b['pair_same'], [1, 0, 1, 0])
    # The target is always another person, and its image is that example's.
    np.testing.assert_array_equal(b['target_label'], labels[b['target_index']])
    assert np.all(b['target_label'] != b['label'])
    # A same-identity partner is another example whenever the identity has one.
    assert np.all(b['index'][::2] != b['pair_index'][::2])
  for epoch in (batches[:3], batches[3:]):
    np.testing.assert_array_equal(
      np.sort(np.concatenate([b['index'] for b in epoch])), np.arange(12)
    )


def test_restart_from_step_is_bit_identical(source):
  full = _batches(source['train'], 7)
  _assert_same(_batches(source['train'], 7), full)  # deterministic
  _assert_same(_batches(source['train'], 3, start_step=4), full[4:])  # restart mid-epoch 1
  other = _batches(source['train'], 1, seed=8)[0]
  assert not np.array_equal(other['image'], full[0]['image'])


def test_two_processes_disjoint_cover_and_assemble_the_global_batch(source):
  whole = _batches(source['train'], 3, process_index=0, process_count=1)
  parts = [_batches(source['train'], 3, process_index=p, process_count=2) for p in (0, 1)]
  ids = [np.concatenate([b['index'] for b in part]) for part in parts]
  assert len(ids[0]) == len(ids[1]) == 6 and not set(ids[0]) & set(ids[1])
  np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(12))
  for step in range(3):
    for k in whole[step]:
      np.testing.assert_array_equal(
        np.concatenate([parts[0][step][k], parts[1][step][k]]), whole[step][k], err_msg=k
      )


@pytest.mark.parametrize('feature', ['image', 'identity_mean'])
def test_with_target_identities_gives_the_target_images_own_feature(source, decoded, feature):
  """The training loop's link between the pipeline's target and G's identity input: with
  'image' the feature of the very example whose image the pull uses, with 'identity_mean'
  the mean over that person's examples; never the source's person. The bank is built
  over the prepared split as tools/prepare_data.py builds it; the features (each image's
  colour mean and spread) are recomputed here from the decoded records."""
  from sdgan_jax import identity_bank, train  # pylint: disable=import-outside-toplevel

  fn = lambda x: np.concatenate([x.mean((1, 2)), x.std((1, 2))], -1)
  bank = identity_bank.build_identity_bank(
    fn, source['train'], num_identities=3, batch_size=5, progress=False
  )
  train_rows = decoded['train']
  own = lambda i: fn(train_rows[i]['image'][None].astype(np.float32) / 255)[0]
  batches = train.with_target_identities(_batches(source['train'], 3, slots=2), bank, feature)
  for batch in batches:
    assert batch['target_identity'].shape == (2, 4, 6)
    for s, i in np.ndindex(2, 4):
      t_index, t_label = batch['target_index'][s, i], batch['target_label'][s, i]
      assert train_rows[t_index]['label'] == t_label != batch['label'][s, i]
      want = (
        own(t_index)
        if feature == 'image'
        else np.mean(
          [own(j) for j, row in enumerate(train_rows) if row['label'] == t_label], axis=0
        )
      )
      np.testing.assert_allclose(batch['target_identity'][s, i], want, atol=1e-5)


def test_with_target_identities_rejects_banks_that_do_not_fit():
  from sdgan_jax import identity_bank, train  # pylint: disable=import-outside-toplevel

  old = identity_bank.IdentityBank(means=np.zeros((2, 3)), counts=np.array([1, 1]))
  with pytest.raises(ValueError, match='no per-example features'):
    next(train.with_target_identities(iter([{}]), old, 'image'))
  batch = {'target_label': np.array([0, 2]), 'target_index': np.array([0, 1])}
  with pytest.raises(ValueError, match=r'target_label in \[0, 2\]'):
    next(train.with_target_identities(iter([batch]), old, 'identity_mean'))
  with pytest.raises(ValueError, match='target feature'):
    next(train.with_target_identities(iter([batch]), old, 'mean'))


def test_tfds_source_and_example_sequence_agree(source, decoded):
  _assert_same(_batches(decoded['train'], 2), _batches(source['train'], 2))


# ------------------------------------------------------------------------ augmentation


def _preprocess(record, seed, resolution, augmentation):
  example = {k: tf.constant(record[k]) for k in ('image', 'mask', 'semantic', 'landmarks')}
  out = ip.preprocess(example, tf.constant([seed, 1], tf.int64), resolution, augmentation)
  return {k: v.numpy() for k, v in out.items()}


def test_flip_mirrors_everything_and_swaps_left_right(records):
  record = records['train'][0]
  plain = _preprocess(record, 0, R, ip.NO_AUGMENTATION)
  flipped = _preprocess(record, 0, R, ip.Augmentation(flip_prob=1.0, resize_scale=None))
  np.testing.assert_array_equal(plain['image'], record['image'] / np.float32(255))
  np.testing.assert_array_equal(flipped['image'], plain['image'][:, ::-1])
  np.testing.assert_array_equal(flipped['mask'], plain['mask'][:, ::-1])
  swap = {
    CLS['left_brow']: CLS['right_brow'],
    CLS['right_brow']: CLS['left_brow'],
    CLS['left_eye']: CLS['right_eye'],
    CLS['right_eye']: CLS['left_eye'],
  }
  expected = np.vectorize(lambda c: swap.get(c, c))(plain['semantic'][:, ::-1])
  np.testing.assert_array_equal(flipped['semantic'], expected)
  # Mirrored landmarks land on their own parts: the image-left eye's points (36-41) on the
  # left_eye class, the right brow's (22-26) on right_brow, and so on.
  for part, idx in (
    ('left_eye', slice(36, 42)),
    ('right_eye', slice(42, 48)),
    ('left_brow', slice(17, 22)),
    ('right_brow', slice(22, 27)),
  ):
    x, y = np.round(flipped['landmarks'][idx].mean(0)).astype(int)
    assert flipped['semantic'][y, x] == CLS[part], part
  assert flipped['landmarks'][36:42, 0].mean() < flipped['landmarks'][42:48, 0].mean()
  assert flipped['landmarks'][0, 0] < flipped['landmarks'][16, 0]


def test_flipped_landmarks_match_dlib_on_the_mirrored_face(records):
  """An independent reference: dlib's 68-point predictor run on the mirrored crop."""
  import dlib  # pylint: disable=import-outside-toplevel

  from sdgan_jax.faces.detect import dlib_model_path  # pylint: disable=import-outside-toplevel

  predictor = dlib.shape_predictor(dlib_model_path('shape_predictor_68_face_landmarks.dat'))
  errors, unpermuted = [], []
  for record in records['train'][::3]:
    image = record['image']
    lo, hi = record['landmarks'].min(0), record['landmarks'].max(0)
    # The predictor is stable on a box a little larger than the landmarks (as detectors give).
    lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)
    box = dlib.rectangle(*np.round([lo[0], lo[1], hi[0], hi[1]]).astype(int))
    mirror_box = dlib.rectangle(R - 1 - box.right(), box.top(), R - 1 - box.left(), box.bottom())
    ref = np.array([(p.x, p.y) for p in predictor(image, box).parts()], np.float32)
    ref_flipped = np.array(
      [(p.x, p.y) for p in predictor(np.ascontiguousarray(image[:, ::-1]), mirror_box).parts()],
      np.float32,
    )
    ours = _preprocess(
      dict(record, landmarks=ref), 0, R, ip.Augmentation(flip_prob=1.0, resize_scale=None)
    )['landmarks']
    errors.append(np.linalg.norm(ours - ref_flipped, axis=1).mean())
    naive = ref * [-1, 1] + [R - 1, 0]  # mirrored without the index permutation
    unpermuted.append(np.linalg.norm(naive - ref_flipped, axis=1).mean())
  assert max(errors) < 1.5, errors
  assert min(unpermuted) > 10, unpermuted


def test_mirror_permutation_matches_the_symmetry_of_frontal_faces(faces):
  """Reflect a frontal face's dlib landmarks about the nose bridge and match the reflected
  points to the original ones (optimal assignment): point i lands on its mirror partner."""
  from scipy.optimize import linear_sum_assignment  # pylint: disable=import-outside-toplevel

  for name in ('obama', 'astronaut'):  # the two frontal, upright faces
    points = faces[name][1].astype(np.float64)
    reflected = points * [-1, 1] + [2 * points[27:31, 0].mean(), 0]
    cost = np.linalg.norm(reflected[:, None] - points[None], axis=-1)
    _, partner = linear_sum_assignment(cost)
    np.testing.assert_array_equal(partner, ip.MIRROR_LANDMARKS, err_msg=name)
  np.testing.assert_array_equal(ip.MIRROR_LANDMARKS[ip.MIRROR_LANDMARKS], np.arange(68))


def test_crop_and_flip_keep_landmarks_on_their_parts(records):
  aug = ip.Augmentation()  # the authors': resize 144, random 128 crop, random flip
  offsets, flips = set(), []
  for n, record in enumerate(records['train']):
    scaled = (record['landmarks'] + 0.5) * 1.125 - 0.5  # the landmarks at 144 px
    for seed in range(3):
      out = _preprocess(record, 10 * n + seed, R, aug)
      assert out['image'].shape == (R, R, 3) and 0 <= out['image'].min()
      for part, idx in (
        ('left_eye', slice(36, 42)),
        ('right_eye', slice(42, 48)),
        ('left_brow', slice(17, 22)),
        ('right_brow', slice(22, 27)),
      ):
        x, y = np.round(out['landmarks'][idx].mean(0)).astype(int)
        assert out['semantic'][y, x] == CLS[part], (n, seed, part)
      # Every point moved by one integer crop offset in [0, 16], after the mirror if flipped.
      # (A frontal face is nearly symmetric: tell a flip by which hypothesis fits better.)
      plain = scaled - out['landmarks']
      mirrored = scaled - (out['landmarks'][ip.MIRROR_LANDMARKS] * [-1, 1] + [R - 1, 0])
      flipped = mirrored.std(0).sum() < plain.std(0).sum()
      offset = mirrored if flipped else plain
      np.testing.assert_allclose(
        offset, np.broadcast_to(np.round(offset[0]), offset.shape), atol=1e-3
      )
      offset = tuple(np.round(offset[0]).astype(int))
      assert all(0 <= d <= 16 for d in offset), offset
      offsets.add(offset)
      flips.append(flipped)
  assert len(offsets) > 10  # crops vary
  assert 0.2 < np.mean(flips) < 0.8


def _authors_box(seed):
  """The box ``preprocess`` draws for stateless seed ``[seed, 1]``: (left, top, right,
  bottom) in the 144-px resize, read from ``augment._zoom_box`` (its law is tested below)."""
  from sdgan_jax.input_pipeline import augment  # pylint: disable=import-outside-toplevel

  _, crop_seed = tf.unstack(
    tf.random.experimental.stateless_split(tf.constant([seed, 1], tf.int64), 2)
  )
  (top, left), (bottom, right) = (v.numpy() for v in augment._zoom_box(144, crop_seed))
  return int(left), int(top), int(right), int(bottom)


def test_authors_zoom_box_has_their_law():
  """Their loader at 144 px: each edge 36 px from the centre plus U(0, 1) * 18 px,
  truncated, drawn independently: sides of 72-108 px (a 1.33-2x zoom), aspect jittered."""
  boxes = np.array([_authors_box(seed) for seed in range(200)])
  left, top, right, bottom = boxes.T
  for edge in (left, top):
    assert edge.min() >= 18 and edge.max() <= 36 and len(set(edge)) > 12
  for edge in (right, bottom):
    assert edge.min() >= 108 and edge.max() <= 126 and len(set(edge)) > 12
  width, height = right - left, bottom - top
  assert width.min() >= 72 and width.max() <= 108
  assert np.mean(width != height) > 0.8  # aspect jitter
  assert abs(np.corrcoef(left, right)[0, 1]) < 0.25  # independent edges


def test_authors_zoom_matches_their_pil_pipeline_and_crops_every_plane(records):
  """``PRESETS['authors']`` = their loader: LANCZOS 144, the box, LANCZOS to the output
  size, mask thresholded at 0.2 after the same path; and, unlike theirs, the semantic map
  and landmarks cut from the same box."""
  aug = ip.augment.PRESETS['authors']
  for n, record in enumerate(records['train'][:4]):
    seed = 31 + n
    out = _preprocess(record, seed, R, aug)
    box = _authors_box(seed)
    pil = lambda a, how: np.asarray(
      Image.fromarray(a).resize((144, 144), how).crop(box).resize((R, R), how), np.float32
    )
    ref = pil(record['image'], Image.LANCZOS) / 255
    assert np.abs(out['image'] - ref).mean() < 4e-3, np.abs(out['image'] - ref).mean()
    mask = pil(record['mask'][..., 0], Image.LANCZOS) / 255 > 0.2
    assert np.mean(out['mask'][..., 0] == mask) > 0.99
    semantic = pil(record['semantic'][..., 0], Image.NEAREST)
    assert np.mean(out['semantic'] == semantic) > 0.97
    for part, idx in (
      ('left_eye', slice(36, 42)),
      ('right_eye', slice(42, 48)),
      ('nose', slice(30, 31)),
    ):
      x, y = np.round(out['landmarks'][idx].mean(0)).astype(int)
      assert out['semantic'][y, x] == CLS[part], (n, part)
    # the zoom: the eyes lie further apart than in the record
    eyes = lambda p: np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))
    assert eyes(out['landmarks']) > 1.2 * eyes(record['landmarks'])


def test_augmentation_presets_are_the_configs_choices():
  from sdgan_jax import train  # pylint: disable=import-outside-toplevel
  from sdgan_jax.configs import demo  # pylint: disable=import-outside-toplevel

  config = demo.get_config()
  for name in ip.augment.PRESETS:
    config.data.augmentation = name
    train.validate_config(config)
  config.data.augmentation = 'rotate'
  with pytest.raises(
    ConfigError, match="augmentation='rotate': use one of 'shift_flip', 'authors'"
  ):
    train.validate_config(config)
  assert ip.augment.PRESETS['shift_flip'] == ip.Augmentation()


def test_resize_to_64_matches_pil_antialiased_bilinear(records):
  record = records['test'][0]
  out = _preprocess(record, 0, 64, ip.NO_AUGMENTATION)
  pil = Image.fromarray(record['image']).resize((64, 64), Image.BILINEAR)
  ref = np.asarray(pil, np.float32) / 255
  assert np.abs(out['image'] - ref).mean() < 2e-3, np.abs(out['image'] - ref).mean()
  # Nearest for the planes: every output value is one of the record's.
  nearest = np.asarray(Image.fromarray(record['semantic'][..., 0]).resize((64, 64), Image.NEAREST))
  assert (out['semantic'] == nearest).mean() > 0.97
  np.testing.assert_allclose(out['landmarks'], (record['landmarks'] + 0.5) / 2 - 0.5, atol=1e-5)


# -------------------------------------------------------------------------- evaluation


def test_eval_iterator_order_padding_and_shards(source, decoded):
  rows = decoded['train']
  parts = [
    list(
      ip.eval_iterator(
        source['train'], batch_size=10, resolution=R, process_index=p, process_count=2
      )
    )
    for p in (0, 1)
  ]
  assert [len(p) for p in parts] == [2, 2]  # 6 examples per process, batches of 5
  valid = []
  for part in parts:
    for b in part:
      assert b['image'].shape == (5, R, R, 3) and 'pair_image' not in b
      for i, ok in enumerate(b['valid']):
        if ok:
          idx = b['index'][i]
          valid.append(idx)
          np.testing.assert_array_equal(b['image'][i], rows[idx]['image'] / np.float32(255))
          np.testing.assert_array_equal(b['semantic'][i], rows[idx]['semantic'][..., 0])
          np.testing.assert_array_equal(b['landmarks'][i], rows[idx]['landmarks'])
          assert b['label'][i] == rows[idx]['label']
        else:
          assert b['index'][i] == -1 and b['label'][i] == -1 and not b['image'][i].any()
  np.testing.assert_array_equal(valid, np.arange(12))
  assert sum(b['valid'].sum() for p in parts for b in p) == 12
  # The test split, one process: one padded batch, in order.
  (b,) = ip.eval_iterator(
    source['test'], batch_size=4, resolution=64, process_index=0, process_count=1
  )
  np.testing.assert_array_equal(b['valid'], [1, 1, 1, 0])
  np.testing.assert_array_equal(b['label'], [r['label'] for r in decoded['test']] + [-1])


def test_eval_shard_sizes():
  shards = [ip.eval_shard(11, 4, p, 2) for p in (0, 1)]
  assert [s.shape for s in shards] == [(3, 2), (3, 2)]
  np.testing.assert_array_equal(shards[0].ravel(), [0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(shards[1].ravel(), [6, 7, 8, 9, 10, -1])
