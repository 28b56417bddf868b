"""Compiling the train step for devices the host may not have (compile_only)."""

import jax
import pytest
from tool_loader import load_tool

from sdgan_jax import networks as networks_lib
from sdgan_jax import parallel, train_step
from sdgan_jax.perf import compile_only

benchmark = load_tool('benchmark')


@pytest.mark.slow
def test_compile_report_of_the_cpu_train_step_accounts_for_its_inputs():
  """On this host's own CPU mesh: the row's argument bytes are the state's and the batch's
  (summed here from their shapes), the whole program is at least that, and the CPU program
  has its updates written out. (Compiling for a GPU needs the CUDA plugin, which CI lacks:
  BENCHMARKS.md has those runs.)"""
  config = benchmark.preset_config('small')
  config.train.g_steps = 2
  row = compile_only.compile_train_step(config, 2, parallel.make_mesh(), name='t')
  config = config.copy_and_resolve_references()
  config.train.batch_size = 2
  networks = networks_lib.Networks(config)
  state = jax.eval_shape(
    lambda key: train_step.create_train_state(networks, key), jax.random.key(0)
  )
  leaves = jax.tree_util.tree_leaves(state)
  key_bytes = sum(8 for leaf in leaves if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key))
  array_bytes = sum(
    leaf.size * leaf.dtype.itemsize
    for leaf in leaves
    if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
  )
  batch_bytes = sum(a.nbytes for a in compile_only.benchmarking.train_batch(config, 2).values())
  inputs = array_bytes + key_bytes + batch_bytes
  # jax.jit leaves out inputs the step never reads: a few scalar counters, under 1 KiB
  assert inputs - 1024 <= row['argument_bytes'] <= inputs
  assert row['program_bytes'] >= row['argument_bytes']
  assert (row['platform'], row['batch'], row['bench']) == ('cpu', 2, 't')
  assert row['compile_s'] > 0 and row['trace_lower_s'] > 0
  assert row['convolutions'] > 0 and row['fusions'] > 0 and row['while_loops'] == 0


def test_target_configs_carry_each_gpus_memory_and_the_shared_chip():
  for target, facts in compile_only.GPU_TARGETS.items():
    text = compile_only.gpu_target_config(target)
    assert f'device_memory_size: {facts["memory_mib"] * 2**20}\n' in text
    assert 'core_count: 132\n' in text and 'major: 9 minor: 0' in text
    assert text.count('{') == text.count('}')
  with pytest.raises(ValueError, match="unknown GPU target 'a100'.*h100"):
    compile_only.gpu_target_config('a100')


def test_missing_cuda_plugin_is_named_with_the_install_command(monkeypatch, capsys):
  """Without JAX's CUDA plugin there is no GPU topology: the tool says what to install."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

  def no_plugin(*args, **kwargs):
    raise NotImplementedError('topology not implemented for cuda')

  monkeypatch.setattr(topologies, 'get_topology_desc', no_plugin)
  with pytest.raises(SystemExit):
    benchmark.main(['--compile_for', 'h100', '--preset', 'small'])
  error = capsys.readouterr().err
  assert f'pip install "jax[cuda12]=={jax.__version__}"' in error
  assert 'h100' in error and 'topology not implemented for cuda' in error
