"""tools/benchmark.py: JSON lines with consistent throughput, FLOP and memory fields."""

import json
import pathlib

import jax
import pytest
from tool_loader import load_tool

benchmark = load_tool('benchmark')


def _rows(capsys):
  return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_generator_benchmarks_report_consistent_figures(capsys, tmp_path):
  out = tmp_path / 'bench.jsonl'
  benchmark.main(
    [
      '--preset',
      'small',
      '--bench',
      'generator,anonymize',
      '--gen_batch',
      '4',
      '--steps',
      '2',
      '--warmup',
      '1',
      '--output',
      str(out),
      '--profile_dir',
      str(tmp_path / 'profile'),
    ]
  )
  rows = _rows(capsys)
  assert [r['bench'] for r in rows] == ['small/generator', 'small/anonymize_generate']
  assert [json.loads(line) for line in out.read_text().splitlines()] == rows
  for row in rows:
    assert row['batch'] == 4 and row['resolution'] == 32 and row['platform'] == 'cpu'
    assert row['img_per_s'] == pytest.approx(4 / row['step_s'])
    # the suite's persistent cache (conftest): the row says its compile may be a warm one
    assert row['compilation_cache'] == jax.config.jax_compilation_cache_dir
  gen = rows[0]
  # The small generator does tens of MFLOP per 32-px image: XLA's count must be of that
  # order (a count of the compiled program's custom calls alone would be ~0).
  assert 1e7 < gen['gflop_per_image'] * 1e9 < 1e9
  assert gen['tflops'] == pytest.approx(gen['gflop_per_image'] * 4 / gen['step_s'] / 1e3)
  assert gen['program_bytes'] > 0 and gen['peak_share'] is None  # CPUs have no peak entry
  assert gen['profile']['profiled_steps'] == 3 and gen['profile']['timelines']
  assert 'profile' not in rows[1]


@pytest.mark.slow
def test_train_step_benchmark_runs_on_cpu_and_profiles(capsys, tmp_path):
  benchmark.main(
    [
      '--preset',
      'small',
      '--bench',
      'train',
      '--train_batch',
      '2',
      '--steps',
      '1',
      '--warmup',
      '1',
      '--profile_dir',
      str(tmp_path),
    ]
  )
  (row,) = _rows(capsys)
  assert row['bench'] == 'small/train_step' and row['updates_per_step'] == 'identity 1, D 1, G 1'
  assert row['gflop_per_image'] > 0 and row['step_s'] > 0
  profile = row['profile']
  assert pathlib.Path(profile['trace']).is_file() and profile['profiled_steps'] == 3
  busy = [t for t in profile['timelines'] if t['busy_ms'] > 0]
  assert busy, 'no XLA work in the CPU trace'
  for timeline in busy:  # the top events are ranked, and their shares are of busy time
    times = [e['ms'] for e in timeline['top']]
    assert times == sorted(times, reverse=True)
    assert sum(e['share'] for e in timeline['top']) <= 1 + 1e-9


def test_trace_summary_on_a_known_device_timeline(tmp_path):
  """A hand-written GPU trace: one stream with two kernels (5 + 1 us and 2 us) over 10 us."""
  from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel

  text = """
  planes {
    id: 1 name: "/device:GPU:0"
    lines { id: 1 name: "Stream #13(Compute)" timestamp_ns: 1000
      events { metadata_id: 1 offset_ps: 0 duration_ps: 5000000 }
      events { metadata_id: 2 offset_ps: 6000000 duration_ps: 2000000 }
      events { metadata_id: 1 offset_ps: 9000000 duration_ps: 1000000 }
    }
    event_metadata { key: 1 value { id: 1 name: "sm90_xmma_fprop_bf16" } }
    event_metadata { key: 2 value { id: 2 name: "loop_add_fusion" } }
  }
  planes { id: 2 name: "/host:CPU" lines { id: 1 name: "python" } }
  """
  path = tmp_path / 'gpu.xplane.pb'
  path.write_bytes(ProfileData.text_proto_to_serialized_xspace(text))
  from sdgan_jax.perf import profiling  # pylint: disable=import-outside-toplevel

  (timeline,) = profiling.summarize_trace(str(path))
  assert (timeline['plane'], timeline['line'], timeline['events']) == (
    '/device:GPU:0',
    'Stream #13(Compute)',
    3,
  )
  assert timeline['busy_ms'] == pytest.approx(0.008)
  assert timeline['span_ms'] == pytest.approx(0.010)
  assert [(e['name'], e['count']) for e in timeline['top']] == [
    ('sm90_xmma_fprop_bf16', 2),
    ('loop_add_fusion', 1),
  ]
  assert [e['share'] for e in timeline['top']] == pytest.approx([0.75, 0.25])


def test_flops_reports_each_authors_network_at_their_figures(capsys, tmp_path):
  """--flops: one JSON line per network, our count next to the authors' figures, without
  compiling anything (seconds on a CPU)."""
  out = tmp_path / 'flops.jsonl'
  benchmark.main(['--preset', 'authors', '--flops', '--output', str(out)])
  rows = _rows(capsys)
  assert [json.loads(line) for line in out.read_text().splitlines()] == rows
  assert [r['network'] for r in rows] == ['generator', 'discriminator', 'identity']
  for row in rows:
    assert row['preset'] == 'authors' and row['resolution'] == 128
    # our counts, rounded as the authors give theirs (0.1 GFLOP, 0.01 M parameters), are
    # their figures (flops.AUTHORS_FIGURES)
    assert round(row['gflop_per_image'], 1) == row['authors_gflop'], row
    assert round(row['params'], -4) == row['authors_params'], row
    # XLA's own total (elementwise work in, zero-padding taps out) is of the same order
    assert row['xla_gflop'] == pytest.approx(row['gflop_per_image'], rel=0.05)
  assert {r['network']: r['params'] for r in rows} == {
    'generator': 16_880_743,
    'discriminator': 18_238_529,
    'identity': 12_924_144,
  }


def test_conv_dense_flops_counts_padding_taps_and_groups():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from sdgan_jax.perf import flops  # pylint: disable=import-outside-toplevel

  x = jax.ShapeDtypeStruct((2, 8, 8, 16), jnp.float32)
  kernel = jax.ShapeDtypeStruct((5, 5, 2, 16), jnp.float32)  # 8 groups of 2 channels
  dense = jax.ShapeDtypeStruct((16, 3), jnp.float32)

  def fn(x, kernel, dense):
    y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'SAME', feature_group_count=8, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    return jnp.mean(y, axis=(1, 2)) @ dense

  assert flops.conv_dense_flops(fn, x, kernel, dense) == (
    2 * (2 * 8 * 8 * 16) * (5 * 5 * 2) + 2 * (2 * 3) * 16
  )


def test_authors_shapes_config_selects_the_authors_networks():
  # pylint: disable=import-outside-toplevel
  from sdgan_jax import networks, train_step
  from sdgan_jax.configs import celeba
  from sdgan_jax.models.authors_generator import AuthorsGenerator
  from sdgan_jax.perf import benchmarking, flops

  config = benchmarking.authors_shapes_config(celeba.get_config())
  nets = flops.build_networks(config)
  assert isinstance(nets['generator'], AuthorsGenerator)
  assert nets['identity'].stem == 'cifar' and nets['identity'].num_identities == 0
  # the train step builds the same network from the config
  train_nets = networks.Networks(config)
  assert train_nets.identity.clone(dtype=None) == nets['identity'].clone(dtype=None)
  assert (config.resolution, config.identity_dim) == (128, 2048)
  # their schedule: identity net, D's fakes, D's reals and G each on their own batch
  assert train_step.batch_slots(config.train) == 4


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match='unknown preset'):
    benchmark.preset_config('huge')
