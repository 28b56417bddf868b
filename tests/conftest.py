"""Shared test set-up: CPU only, full-precision float32 matmuls, cheap XLA compiles.

Compilation, not execution, dominates these small-shape tests on a 2-core CPU, so the
suite (and only the suite) trades generated-code speed for compile speed: LLVM at -O0,
JAX's non-partitionable threefry sampler (its per-shape compile is several times cheaper)
and a persistent compilation cache, which subprocess tests share through the environment.
"""

import os
import pathlib

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR', str(pathlib.Path(__file__).resolve().parents[1] / '.jax_cache')
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
jax.config.update('jax_threefry_partitionable', False)


import pytest  # noqa: E402

# Tests that download take this fixture, directly or through another; each is marked
# ``network`` (``pytest -m "not network"`` deselects them all for an offline run).
NETWORK_FIXTURE = 'download_cache'


# The longest modules (several minutes each on 2 cores, most of it compiling SDGAN train
# steps or running the detectors over full-HD photos; `--durations` of .ci/run), longest
# first. They run first: xdist (`--dist loadscope`) hands out modules in collection order,
# and in alphabetical order the train modules came last, one worker finishing them alone.
LONGEST_MODULES = (
  'test_update_ratio.py',
  'test_train_step.py',
  'test_train_loop.py',
  'test_anonymize.py',
  'test_beam.py',
  'test_detection_recall.py',
  'test_authors_numerics.py',
  'test_compile_only.py',
  'test_eval_tool.py',
  'test_benchmark.py',
)


def _module_rank(item) -> int:
  name = item.path.name
  return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)


def pytest_collection_modifyitems(items):
  for item in items:
    if NETWORK_FIXTURE in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.network)
  items.sort(key=_module_rank)  # stable: a module's tests keep their order


# The test being set up (its higher-scoped fixtures, built for it, included) may download
# only when marked ``network``: a download elsewhere fails with how to mark it, rather than
# breaking offline runs unseen.
_SETTING_UP = {}


def pytest_runtest_setup(item):
  _SETTING_UP['item'] = item


@pytest.fixture(scope='session', autouse=True)
def _downloads_only_in_network_tests():
  from sdgan_jax.converters import registry

  download = registry._download  # pylint: disable=protected-access

  def guarded(source, dest):
    item = _SETTING_UP.get('item')
    if item is not None and item.get_closest_marker('network') is None:
      raise AssertionError(
        f'{item.nodeid} downloads {source.spec} but is not marked network: take the '
        f'{NETWORK_FIXTURE} fixture (or mark the test @pytest.mark.network)'
      )
    return download(source, dest)

  registry._download = guarded  # pylint: disable=protected-access
  yield
  registry._download = download  # pylint: disable=protected-access


@pytest.fixture(scope='session')
def download_cache():
  """The download cache of ``tools/fetch_weights.py`` (``$SDGAN_JAX_CACHE/downloads``, by
  default ``~/.cache/sdgan_jax/downloads``): pinned archives, kept under their sha256, are
  fetched once across runs."""
  from sdgan_jax.converters import fetch

  return fetch.default_cache_dir()


@pytest.fixture(scope='session')
def blazeface_weights(tmp_path_factory, download_cache):
  """Both BlazeFace detectors and the face mesh (the detection stages of the anonymizer)
  converted, by the code under test, from the pinned mediapipe wheel: (weights_dir,
  {name: path of the source .tflite})."""
  from sdgan_jax.converters import blazeface, face_mesh
  from sdgan_jax.converters.registry import fetch_file

  root = tmp_path_factory.mktemp('blazeface')
  files = {}
  for conv in (blazeface.SHORT_RANGE, blazeface.FULL_RANGE, face_mesh):
    conv.fetch_and_convert(download_cache, root / 'weights')
    files[conv.NAME] = fetch_file(conv.SOURCE, download_cache)
  return root / 'weights', files


@pytest.fixture(scope='session')
def face_mesh_weights(blazeface_weights):
  """The face mesh converted from the pinned mediapipe wheel: (weights_dir, source path)."""
  return blazeface_weights[0], blazeface_weights[1]['face_mesh']
