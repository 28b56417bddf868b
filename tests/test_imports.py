"""Import hygiene: the TF-free side of the package loads neither TensorFlow nor a trainer.

The anonymizer, the inference of both networks and the train step run where TensorFlow is
not installed (GPU machines, the anonymizer's users); only the input pipeline and the
trainers (summaries, checkpoints), which import it at their top, need it. Neither
inference nor the train step and the benchmarks that run it imports a trainer.
"""

import json
import os
import subprocess
import sys

# Packages are imported with every submodule.
INFERENCE = (
  'sdgan_jax.models',
  'sdgan_jax.losses',
  'sdgan_jax.networks',
  'sdgan_jax.inference',
  'sdgan_jax.parser_inference',
  'sdgan_jax.semantic_source',
  'sdgan_jax.anonymize',
  'sdgan_jax.faces',
  'sdgan_jax.media',
  'sdgan_jax.baselines',
  'sdgan_jax.identity_bank',
)
TRAINING = (
  'sdgan_jax.train_step',
  'sdgan_jax.network_updates',
  'sdgan_jax.optimizers',
  'sdgan_jax.perf',
)
TRAINERS = ('sdgan_jax.trainer', 'sdgan_jax.train', 'sdgan_jax.train_parser')

_CODE = """
import importlib, json, pkgutil, sys

def load(name):
  module = importlib.import_module(name)
  for info in pkgutil.walk_packages(getattr(module, '__path__', []), name + '.'):
    importlib.import_module(info.name)

for name in {inference}:
  load(name)
trainers = sorted(m for m in {trainers} if m in sys.modules)
for name in {training}:
  load(name)
step_trainers = sorted(m for m in {trainers} if m in sys.modules)
tensorflow = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')
found = dict(trainers=trainers, step_trainers=step_trainers, tensorflow=tensorflow[:5])
print(json.dumps(found))
"""


def test_the_tf_free_side_imports_no_tensorflow_and_inference_no_trainer():
  code = _CODE.format(inference=INFERENCE, trainers=TRAINERS, training=TRAINING)
  out = subprocess.run(
    [sys.executable, '-c', code],
    check=True,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  loaded = json.loads(out.stdout.strip().splitlines()[-1])
  assert loaded['trainers'] == [], f'inference imported {loaded["trainers"]}'
  assert loaded['step_trainers'] == [], f'the train step imported {loaded["step_trainers"]}'
  assert loaded['tensorflow'] == [], f'TensorFlow loaded: {loaded["tensorflow"]}'


def test_the_beam_launcher_loads_no_jax():
  """The Beam launcher parses the CLI's flags and builds the pipeline; only its workers
  run the networks. Loading JAX there (about 2 s) would only delay every job's start."""
  code = (
    'import sys, runpy\n'
    "sys.argv = ['anonymize_beam', '--help']\n"
    'try:\n'
    "  runpy.run_path('tools/anonymize_beam.py', run_name='__main__')\n"
    'except SystemExit:\n'
    '  pass\n'
    "print('JAX', sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib'))[:3])\n"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
    [sys.executable, '-c', code], check=True, capture_output=True, text=True, cwd=root
  )
  assert out.stdout.strip().splitlines()[-1] == 'JAX []', out.stdout[-500:]
  assert '--runner' in out.stdout  # the parser was built: the flags' modules were imported
