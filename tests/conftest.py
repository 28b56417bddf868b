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
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path(__file__).resolve().parents[1] / '.jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
jax.config.update('jax_threefry_partitionable', False)


import pytest  # noqa: E402


@pytest.fixture(scope='session')
def mediapipe_cache(tmp_path_factory):
  """A download cache holding the pinned mediapipe wheel, fetched once per session for the
  BlazeFace and face mesh converters."""
  return tmp_path_factory.mktemp('mediapipe_cache')


@pytest.fixture(scope='session')
def blazeface_weights(tmp_path_factory, mediapipe_cache):
  """Both BlazeFace detectors and the face mesh (the detection stages of the anonymizer)
  converted from the pinned mediapipe wheel, downloaded once per session: (weights_dir,
  {name: path of the source .tflite})."""
  from sdgan_jax.converters import blazeface, face_mesh
  from sdgan_jax.converters.registry import fetch_file

  root = tmp_path_factory.mktemp('blazeface')
  files = {}
  for conv in (blazeface.SHORT_RANGE, blazeface.FULL_RANGE, face_mesh):
    conv.fetch_and_convert(mediapipe_cache, root / 'weights')
    files[conv.NAME] = fetch_file(conv.SOURCE, mediapipe_cache)
  return root / 'weights', files


@pytest.fixture(scope='session')
def face_mesh_weights(blazeface_weights):
  """The face mesh converted from the pinned mediapipe wheel: (weights_dir, source path)."""
  return blazeface_weights[0], blazeface_weights[1]['face_mesh']
