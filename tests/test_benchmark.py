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
                  '--steps', '2', '--warmup', '1', '--output', str(out)])
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


@pytest.mark.slow
def test_train_step_benchmark_runs_on_cpu(capsys):
  benchmark.main(['--preset', 'small', '--bench', 'train', '--train_batch', '2',
                  '--steps', '1', '--warmup', '1'])
  (row,) = _rows(capsys)
  assert row['bench'] == 'small/train_step' and row['updates_per_step'] == 'identity 1, D 1, G 1'
  assert row['gflop_per_image'] > 0 and row['step_s'] > 0


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match='unknown preset'):
    benchmark.preset_config('huge')
