"""tools/benchmark.py: JSON lines with consistent throughput, FLOP and memory fields."""

import importlib.util
import json
import pathlib

import pytest

_SPEC = importlib.util.spec_from_file_location(
    'benchmark_tool', pathlib.Path(__file__).resolve().parents[1] / 'tools' / 'benchmark.py')
benchmark = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(benchmark)


def _rows(capsys):
  return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_generator_benchmarks_report_consistent_figures(capsys, tmp_path):
  out = tmp_path / 'bench.jsonl'
  benchmark.main(['--preset', 'small', '--bench', 'generator,anonymize', '--gen_batch', '4',
                  '--steps', '2', '--warmup', '1', '--output', str(out),
                  '--profile_dir', str(tmp_path / 'profile')])
  rows = _rows(capsys)
  assert [r['bench'] for r in rows] == ['small/generator', 'small/anonymize_generate']
  assert [json.loads(line) for line in out.read_text().splitlines()] == rows
  for row in rows:
    assert row['batch'] == 4 and row['resolution'] == 32 and row['platform'] == 'cpu'
    assert row['img_per_s'] == pytest.approx(4 / row['step_s'])
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
  benchmark.main(['--preset', 'small', '--bench', 'train', '--train_batch', '2',
                  '--steps', '1', '--warmup', '1', '--profile_dir', str(tmp_path)])
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
  from sdgan_jax import benchmarking  # pylint: disable=import-outside-toplevel
  (timeline,) = benchmarking.summarize_trace(str(path))
  assert (timeline['plane'], timeline['line'], timeline['events']) == (
      '/device:GPU:0', 'Stream #13(Compute)', 3)
  assert timeline['busy_ms'] == pytest.approx(0.008)
  assert timeline['span_ms'] == pytest.approx(0.010)
  assert [(e['name'], e['count']) for e in timeline['top']] == [
      ('sm90_xmma_fprop_bf16', 2), ('loop_add_fusion', 1)]
  assert [e['share'] for e in timeline['top']] == pytest.approx([0.75, 0.25])


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match='unknown preset'):
    benchmark.preset_config('huge')
