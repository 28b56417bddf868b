"""Times the train step and generator inference; prints one JSON line per measurement.

  python tools/benchmark.py                                  # CPU-sized smoke run
  python tools/benchmark.py --preset authors,default --dtypes float32,bfloat16 \
      --train_batch 32 --gen_batch 256 --output bench.jsonl  # GPU/TPU, the real shapes
  python tools/benchmark.py --preset authors --flops         # per-network GFLOP, no run

Presets: 'authors' is the authors' released setting (128 px, 2048-d identity, their
generator, discriminator and Siamese identity network, identity-net + D + G per step);
'default' is configs/celeba.py (the paper generator, 128-d dlib identity, 1:1:3 updates);
'small' is a 32-px model for CPUs. --flops prints, per preset, one line per network with
its forward GFLOP per image and parameters beside the authors' figures
(``flops.network_flops``), and times nothing.
--sweep_train_batches / --sweep_gen_batches time growing batches until one does not fit.
--compile_for h100 (or h200) times nothing either: on a host without that GPU, with JAX's
CUDA plugin installed, it compiles the train step for the GPU (``compile_only``) and prints
the compile time, XLA's buffer assignment and the program's size, for the train batch and
each --sweep_train_batches batch.
Imports no TensorFlow (the GPU machines have none). Results go in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdgan_jax.configs import celeba, demo  # noqa: E402  (after the sys.path line)
from sdgan_jax.perf import benchmarking, compile_only, flops  # noqa: E402

BENCHES = ('train', 'generator', 'anonymize')


def preset_config(name: str):
  """The config a preset names, with random perceptual weights (same cost, no file)."""
  if name == 'small':
    config = demo.get_config('tiny')
  elif name == 'default':
    config = celeba.get_config('128')
  elif name == 'authors':
    config = benchmarking.authors_shapes_config(celeba.get_config('128'))
  else:
    raise ValueError(f'unknown preset {name!r}: use small, default or authors')
  config.loss.perceptual_weights = 'random'
  return config


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(',') if x.strip()]


def _is_oom(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--preset', default='small', help='comma list: small, default, authors')
  parser.add_argument('--bench', default=','.join(BENCHES), help=f'comma list of {BENCHES}')
  parser.add_argument('--dtypes', default='float32', help='comma list: float32, bfloat16')
  parser.add_argument(
    '--train_batch', type=int, default=None, help='train-step batch (default: 32, or 4 for small)'
  )
  parser.add_argument(
    '--gen_batch', type=int, default=None, help='generator batch (default: 256, or 8 for small)'
  )
  parser.add_argument(
    '--sweep_train_batches',
    default='',
    help='comma list of larger train batches to try (bfloat16 only)',
  )
  parser.add_argument(
    '--sweep_gen_batches',
    default='',
    help='comma list of larger generator batches to try (bfloat16 only)',
  )
  parser.add_argument('--steps', type=int, default=None, help='timed calls (default 10/20)')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--output', default=None, help='also append the JSON lines here')
  parser.add_argument(
    '--flops',
    action='store_true',
    help="only count each network's forward FLOPs and parameters (no compilation, no timing)",
  )
  parser.add_argument(
    '--compile_for',
    default=None,
    choices=sorted(compile_only.GPU_TARGETS),
    help='only compile the train step for this GPU, which this host need '
    "not have (needs JAX's CUDA plugin; no timing)",
  )
  parser.add_argument(
    '--profile_dir',
    default=None,
    help='also trace 3 train steps / generator calls here (jax.profiler) and '
    'add a per-kernel summary to their rows (not the sweeps)',
  )
  return parser


class _Rows:
  """Prints each result row as a JSON line, and appends it to ``--output`` if given."""

  def __init__(self, path: str | None):
    self.output = open(path, 'a') if path else None  # pylint: disable=consider-using-with

  def emit(self, row: dict) -> None:
    line = json.dumps(row, sort_keys=True)
    print(line, flush=True)
    if self.output:
      self.output.write(line + '\n')
      self.output.flush()

  def run(self, fn, *fn_args, **kwargs) -> bool:
    """``fn(*fn_args, **kwargs)``'s row, or an 'out of memory' row; False on the latter."""
    try:
      row = fn(*fn_args, **kwargs)
    except Exception as error:  # pylint: disable=broad-except
      if not _is_oom(error):
        raise
      row = dict(
        benchmarking.device_info(),
        bench=kwargs.get('name'),
        batch=fn_args[1],
        error='out of memory',
      )
    self.emit(row)
    return 'error' not in row

  def close(self) -> None:
    if self.output:
      self.output.close()


def _train_batch(args, preset: str) -> int:
  return args.train_batch or (4 if preset == 'small' else 32)


def _bench_preset(rows: _Rows, args, benches: list[str], preset: str) -> None:
  train_batch = _train_batch(args, preset)
  gen_batch = args.gen_batch or (8 if preset == 'small' else 256)
  for dtype in args.dtypes.split(','):
    config = preset_config(preset)
    config.dtype = dtype
    tag = f'{preset}/'
    profile = lambda suffix, dtype=dtype: (
      args.profile_dir and (f'{args.profile_dir}/{preset}_{dtype}{suffix}')
    )
    if 'train' in benches:
      rows.run(
        benchmarking.bench_train_step,
        config,
        train_batch,
        steps=args.steps or 10,
        warmup=args.warmup,
        name=tag + 'train_step',
        profile_dir=profile(''),
      )
    if 'generator' in benches:
      rows.run(
        benchmarking.bench_generator,
        config,
        gen_batch,
        steps=args.steps or 20,
        warmup=args.warmup,
        name=tag + 'generator',
        profile_dir=profile('_generator'),
      )
    if 'anonymize' in benches:
      rows.run(
        benchmarking.bench_anonymize_batch,
        config,
        gen_batch,
        steps=args.steps or 10,
        warmup=1,
        name=tag + 'anonymize_generate',
      )
    if dtype != 'bfloat16':
      continue
    for batch in _ints(args.sweep_train_batches):
      if not rows.run(
        benchmarking.bench_train_step,
        config,
        batch,
        steps=args.steps or 5,
        warmup=1,
        name=tag + 'train_step_sweep',
      ):
        break
    for batch in _ints(args.sweep_gen_batches):
      if not rows.run(
        benchmarking.bench_generator,
        config,
        batch,
        steps=args.steps or 10,
        warmup=1,
        name=tag + 'generator_sweep',
      ):
        break


def _compile_preset(rows: _Rows, args, preset: str, mesh) -> None:
  batches = [_train_batch(args, preset)] + _ints(args.sweep_train_batches)
  for dtype in args.dtypes.split(','):
    config = preset_config(preset)
    config.dtype = dtype
    for batch in batches:
      rows.emit(
        compile_only.compile_train_step(config, batch, mesh, name=f'{preset}/train_step_compile')
      )


def main(argv=None):
  parser = _parser()
  args = parser.parse_args(argv)
  if args.compile_for:
    if not os.environ.get('JAX_PLATFORMS'):
      # only the host's CPU runs anything; the CUDA plugin then skips its driver checks
      jax.config.update('jax_platforms', 'cpu')
    try:
      mesh = compile_only.compile_only_mesh(args.compile_for)
    except RuntimeError as error:
      parser.error(str(error))
  benches = [b for b in args.bench.split(',') if b]
  unknown = set(benches) - set(BENCHES)
  if unknown:
    parser.error(f'unknown --bench {sorted(unknown)}; choose from {BENCHES}')
  rows = _Rows(args.output)
  try:
    for preset in args.preset.split(','):
      if args.flops:
        for row in flops.network_flops(preset_config(preset)):
          rows.emit(dict(row, preset=preset))
      elif args.compile_for:
        _compile_preset(rows, args, preset, mesh)
      else:
        _bench_preset(rows, args, benches, preset)
  finally:
    rows.close()


if __name__ == '__main__':
  main()
