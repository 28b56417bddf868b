"""The Beam pipeline (``anonymize.beam_pipeline``) on the DirectRunner with 2 worker
processes, against the CLI on the same files: photos, an animated GIF, a short video with
sound, a corrupt file, and a photo and a video whose processing raises. One CLI run and
one Beam run (the ``runs`` fixture) serve the checks of bytes, rows, totals and
dead-letter rows; a killed run and its rerun check resuming.

References: the CLI's own outputs and report on the same inputs and seed (the pipeline
must be the CLI's anonymizer, byte for byte), and the files found on disk by walking the
output folder.
"""

import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import beam_faults
import numpy as np
import psutil
import pytest
from PIL import Image
from test_anonymize import make_collage, tiles, weights_dir, workdir, write_video  # noqa: F401  pylint: disable=unused-import
from tool_loader import load_tool

from sdgan_jax import anonymize, media
from sdgan_jax.anonymize import (
  beam_inputs,
  beam_pipeline,
  beam_resume,
  beam_spec,
  beam_summary,
  beam_worker,
)
from sdgan_jax.anonymize import cli as anonymize_cli
from sdgan_jax.anonymize import report as run_report

TESTS = pathlib.Path(__file__).resolve().parent
TWO_WORKERS = ['--direct_num_workers=2', '--direct_running_mode=multi_processing']
NOT_MEDIA = {'anonymize_report.json'}
RAISE_SIZE = beam_faults.RAISE_SIZE


@pytest.fixture(autouse=True, scope='module')
def worker_environment():
  """Beam's worker processes import the tests' modules and compute as this process does
  (conftest's JAX settings, which they inherit through the environment)."""
  path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get('PYTHONPATH', '')])
  with pytest.MonkeyPatch.context() as env:
    env.setenv('PYTHONPATH', path)
    env.setenv('JAX_DEFAULT_MATMUL_PRECISION', 'highest')
    env.setenv('JAX_THREEFRY_PARTITIONABLE', '0')
    yield


@pytest.fixture(scope='module')
def inputs(tmp_path_factory, tiles):  # noqa: F811
  """Photos (one in a subfolder), an animated GIF, a 6-frame video with sound, a corrupt
  JPEG, a text file, and a photo and a video that raise in the anonymizer
  (``beam_faults.with_faults``)."""
  root = tmp_path_factory.mktemp('beam_in') / 'in'
  (root / 'sub').mkdir(parents=True)
  collage, _ = make_collage(tiles)
  Image.fromarray(collage).save(root / 'collage.jpg', quality=95)
  Image.fromarray(tiles['biden']).save(root / 'sub' / 'biden.png')
  frames = [Image.fromarray(np.roll(tiles['obama'], 3 * k, axis=1)) for k in range(3)]
  frames[0].save(root / 'moving.gif', save_all=True, append_images=frames[1:], duration=120, loop=0)
  video_face = np.asarray(Image.fromarray(tiles['astronaut']).resize((96, 96), Image.LANCZOS))
  write_video(root / 'clip.mp4', [np.roll(video_face, 2 * k - 5, axis=1) for k in range(6)])
  good = (root / 'sub' / 'biden.png').read_bytes()
  (root / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0' + good[100:400])
  (root / 'notes.txt').write_text('not media: skipped\n')
  raises = np.asarray(Image.open(root / 'sub' / 'biden.png'))[: RAISE_SIZE[0], : RAISE_SIZE[1]]
  Image.fromarray(raises).save(root / 'raises.png')
  (root / f'{beam_faults.RAISE_VIDEO_NAME}.mp4').write_bytes((root / 'clip.mp4').read_bytes())
  return root


def media_files(folder: pathlib.Path) -> dict[str, bytes]:
  """Every file under ``folder`` but the run's report, state and row shards."""
  return {
    p.relative_to(folder).as_posix(): p.read_bytes()
    for p in sorted(folder.rglob('*'))
    if p.is_file()
    and p.name not in NOT_MEDIA
    and beam_spec.STATE_DIR not in p.parts
    and not p.name.endswith('.jsonl')
  }


def shard_rows(out: pathlib.Path) -> list[dict]:
  return [
    json.loads(line)
    for shard in sorted(out.glob('anonymize_report-*-of-*.jsonl'))
    for line in shard.read_text().splitlines()
  ]


def comparable(row: dict, out: pathlib.Path) -> dict:
  """A report row without its timing, its output relative to the output folder."""
  row = {k: v for k, v in row.items() if k != 'seconds'}
  if 'output' in row:
    row['output'] = os.path.relpath(row['output'], out)
  return row


def counts(totals: dict) -> dict:
  return {k: v for k, v in totals.items() if k not in ('seconds', 'images_per_s', 'faces_per_s')}


@pytest.fixture(scope='module')
def runs(inputs, workdir, weights_dir, tmp_path_factory):  # noqa: F811
  """The CLI and a 2-worker Beam run on ``inputs`` with the same model, seed and flags,
  both through ``beam_faults.with_faults`` (a photo and a video raise in the anonymizer):
  {'cli': its output folder, 'cli_code': its exit status, 'beam': the Beam output,
  'summary': the Beam run's summary}."""
  flags = [
    '--checkpoint',
    str(workdir),
    '--weights_dir',
    str(weights_dir),
    '--seed',
    '3',
    '--fallback',
    'fill',
    '--min_face_px',
    '60',
    '--frames_per_batch',
    '4',
    '--images_per_batch',
    '2',
    '--no_progress',
  ]
  root = tmp_path_factory.mktemp('beam_runs')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(anonymize_cli, 'build_anonymizer', beam_faults.faulty_model)
    cli_code = load_tool('anonymize').main([str(inputs), '--output', str(root / 'cli')] + flags)
  args, beam_args = beam_pipeline.parse_args(
    [str(inputs), '--output', str(root / 'beam')] + flags + TWO_WORKERS
  )
  load = functools.partial(
    beam_faults.faulty_model,
    args.checkpoint,
    options=args.options,
    weights_dir=args.weights_dir,
  )
  summary = beam_pipeline.run(args, beam_args, load=load)
  return {'cli': root / 'cli', 'cli_code': cli_code, 'beam': root / 'beam', 'summary': summary}


RAISING = ('raises.png', f'{beam_faults.RAISE_VIDEO_NAME}.mp4')


@pytest.mark.slow  # the shared CLI and 2-worker Beam runs (~2 min)
def test_beam_writes_the_clis_bytes(runs):
  cli_files, beam_files = media_files(runs['cli']), media_files(runs['beam'])
  # Nothing under the names of the files that raised (nor a temporary file left).
  assert set(cli_files) == {'collage.jpg', 'sub/biden.png', 'moving.gif', 'clip.mp4'}
  assert set(beam_files) == set(cli_files)
  for name, data in cli_files.items():
    assert beam_files[name] == data, name


@pytest.mark.slow  # the shared CLI and 2-worker Beam runs (~2 min)
def test_beam_rows_and_totals_are_the_clis(runs, inputs):
  cli_out, beam_out = runs['cli'], runs['beam']
  cli_report = json.loads((cli_out / anonymize.REPORT_NAME).read_text())
  assert runs['cli_code'] == 1  # the corrupt and the raising files
  cli_rows = {r['input']: comparable(r, cli_out) for r in cli_report['files']}
  beam_rows = {r['input']: comparable(r, beam_out) for r in shard_rows(beam_out)}
  assert beam_rows == cli_rows
  assert sum(r['faces_found'] for r in cli_rows.values() if 'faces_found' in r) >= 6
  assert cli_rows[str(inputs / 'corrupt.jpg')]['status'] == 'error'
  assert 'worker blew up on this photo' in beam_rows[str(inputs / RAISING[0])]['error']
  assert 'worker blew up mid-video' in beam_rows[str(inputs / RAISING[1])]['error']
  for name in ('collage.jpg', 'moving.gif'):  # the files beside the raising ones: done
    row = beam_rows[str(inputs / name)]
    assert row['status'] == 'ok' and row['faces_found'] >= 1, row

  summary = runs['summary']
  assert summary == json.loads((beam_out / anonymize.REPORT_NAME).read_text())
  assert counts(summary['totals']) == counts(cli_report['totals'])
  assert summary['totals']['files'] == 8 and summary['totals']['errors'] == 3
  assert summary['resumed'] == 0
  for key in ('method', 'semantic_maps', 'options', 'warnings'):
    assert summary[key] == cli_report[key], key


@pytest.mark.slow  # the shared CLI and 2-worker Beam runs (~2 min)
def test_the_dead_letter_rows_are_the_error_rows(runs, inputs):
  errors = [
    json.loads(line)
    for shard in runs['beam'].glob('anonymize_report.errors-*.jsonl')
    for line in shard.read_text().splitlines()
  ]
  assert sorted(r['input'] for r in errors) == sorted(
    str(inputs / name) for name in ('corrupt.jpg', *RAISING)
  )
  assert sorted(errors, key=lambda r: r['input']) == sorted(
    (r for r in shard_rows(runs['beam']) if r['status'] == 'error'), key=lambda r: r['input']
  )


@pytest.mark.slow  # a killed 2-worker Beam run and its rerun (~1-2 min)
def test_a_killed_run_rerun_writes_every_output_exactly_once(
  inputs,
  weights_dir,  # noqa: F811
  tmp_path,
  capsys,
):
  """The tool's rerun of a killed run: each output written once, the finished ones not
  redone, the corrupt file an error row again (exit status 1)."""
  src = tmp_path / 'in'
  src.mkdir()
  names = ['a.png', 'c.gif', f'{beam_faults.STALL_NAME}.png', 'clip.mp4']
  for name, orig in zip(names, ['sub/biden.png', 'moving.gif', 'sub/biden.png', 'clip.mp4']):
    (src / name).write_bytes((inputs / orig).read_bytes())
  (src / 'corrupt.jpg').write_bytes((inputs / 'corrupt.jpg').read_bytes())
  out = tmp_path / 'out'
  flags = [
    str(src),
    '--output',
    str(out),
    '--baseline',
    'pixelate',
    '--no_identity_check',
    '--weights_dir',
    str(weights_dir),
    '--images_per_batch',
    '1',
  ] + TWO_WORKERS
  rows_dir = out / beam_spec.STATE_DIR / 'rows'
  killed = subprocess.Popen(
    [sys.executable, str(TESTS / 'beam_faults.py'), str(weights_dir)] + flags,
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.monotonic() + 300
    # Killed once some files are done (the stalled worker never finishes its file).
    while not list(rows_dir.rglob('*.json')) and time.monotonic() < deadline:
      assert killed.poll() is None, 'the run ended before it was killed'
      time.sleep(1)
    time.sleep(2)
  finally:
    # The run and its Beam worker processes (which Beam starts in sessions of their own).
    for process in [psutil.Process(killed.pid)] + psutil.Process(killed.pid).children(
      recursive=True
    ):
      try:
        process.send_signal(signal.SIGKILL)
      except psutil.NoSuchProcess:
        pass
    killed.wait()
  finished = {
    p: p.stat().st_mtime_ns
    for p in out.rglob('*')
    if p.is_file()
    and p.suffix in ('.png', '.jpg', '.gif', '.mp4')
    and not media.TEMP_PATTERN.match(p.name)
  }
  assert 1 <= len(finished) < len(names), finished  # really killed part-way
  assert not (out / anonymize.REPORT_NAME).exists()

  code = load_tool('anonymize_beam').main(flags)
  assert code == 1  # the corrupt file
  assert f'{len(finished)} finished before (resumed)' in capsys.readouterr().out
  assert sorted(media_files(out)) == sorted(names)  # each once, no temporary file
  for path, mtime in finished.items():  # a finished file is not redone
    assert path.stat().st_mtime_ns == mtime, path
  rows = shard_rows(out)
  assert sorted(pathlib.Path(r['input']).name for r in rows) == sorted(names + ['corrupt.jpg'])
  summary = json.loads((out / anonymize.REPORT_NAME).read_text())
  assert summary['resumed'] == len(finished)
  assert summary['totals']['files'] == len(names) + 1 and summary['totals']['errors'] == 1
  assert counts(summary['totals']) == counts(
    run_report.finish_totals(run_report.file_totals(rows), 1.0)
  )


def test_inputs_map_to_the_clis_layout(tmp_path):
  """One folder is mirrored into the output; several each under their name; a pattern's
  files keep their path under its folder; hidden folders are one skipped row."""
  (tmp_path / 'photos' / 'a' / '.cache').mkdir(parents=True)
  for rel in ('x.jpg', 'a/y.png', 'a/.cache/z.jpg', 'a/notes.txt'):
    (tmp_path / 'photos' / rel).write_bytes(b'')
  (tmp_path / 'more').mkdir()
  (tmp_path / 'more' / 'w.mp4').write_bytes(b'')

  def layout(inputs):
    found = [
      s
      for item in beam_inputs.expand_inputs(inputs)
      for s in beam_inputs.match_input(item, visualize=False)
    ]
    return sorted((s.rel, s.kind) for s in found)

  photos = str(tmp_path / 'photos')
  assert layout([photos]) == [
    ('a/.cache', None),
    ('a/notes.txt', None),
    ('a/y.png', 'image'),
    ('x.jpg', 'image'),
  ]
  assert layout([photos + '/a/*.png', str(tmp_path / 'more')]) == [
    ('a/y.png', 'image'),
    ('more/w.mp4', 'video'),
  ]
  assert layout([photos + '/x.jpg']) == [('x.jpg', 'image')]
  # The CLI's order and batches: input by input, a folder's files before its subfolders.
  found = [
    s
    for item in beam_inputs.expand_inputs([photos, str(tmp_path / 'more')])
    for s in beam_inputs.match_input(item, visualize=False)
  ]
  batches = list(beam_inputs.cli_batches(found[::-1], images_per_batch=2))
  jobs = anonymize.plan_jobs([photos, str(tmp_path / 'more')], tmp_path / 'out')
  assert [[s.url for s in b] for b in batches if b[0].kind == 'image'] == [
    [str(j.source) for j in jobs if j.kind == 'image']
  ]
  assert [s.rel for b in batches for s in b] == [
    'photos/x.jpg',
    'photos/a/y.png',
    'photos/a/.cache',
    'photos/a/notes.txt',
    'more/w.mp4',
  ]
  dup = [
    beam_inputs.Source('/p/x.jpg', 'x.jpg', 'image'),
    beam_inputs.Source('/q/x.jpg', 'x.jpg', 'image'),
  ]
  kept, refused = beam_inputs.one_per_output(('x.jpg', dup))
  assert kept == dup[0] and refused.kind == 'error' and '/p/x.jpg' in refused.reason


def test_totals_sum_over_workers_to_the_clis():
  rows = [
    {'status': 'ok', 'kind': 'image', 'faces_found': 2, 'anonymized': 1, 'fallbacks': 1},
    {'status': 'ok', 'kind': 'image', 'faces_found': 0},
    {
      'status': 'ok',
      'kind': 'video',
      'frames': 6,
      'faces_found': 6,
      'anonymized': 6,
      'covered_by_tracking': 1,
    },
    {'status': 'error', 'kind': 'image', 'error': 'x'},
    {'status': 'skipped', 'error': 'y'},
  ]
  fn = beam_summary.TotalsFn()
  halves = [fn.create_accumulator(), fn.create_accumulator()]
  for k, row in enumerate(rows):
    halves[k % 2] = fn.add_input(halves[k % 2], row)
  total = fn.extract_output(fn.merge_accumulators(halves))
  assert total == run_report.file_totals(rows)
  assert total['files'] == 5 and total['no_face_found'] == 1 and total['faces_found'] == 8


def test_the_beam_tool_shares_the_clis_checks_and_passes_beam_options(capsys, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    beam_pipeline.parse_args(['in', '--output', 'out', '--baseline', 'blur', '--workers', '-1'])
  assert exit_info.value.code == 2 and '--workers must be >= 0' in capsys.readouterr().err
  args, beam_args = beam_pipeline.parse_args(
    [
      'in',
      '--output',
      'out',
      '--baseline',
      'blur',
      '--runner',
      'FlinkRunner',
      '--flink_master=localhost:8081',
      '--parallelism',
      '4',
    ]
  )
  assert args.runner == 'FlinkRunner' and args.options.fallback == 'pixelate'
  assert beam_args == ['--flink_master=localhost:8081', '--parallelism', '4']
  (tmp_path / 'in').mkdir()
  code = beam_pipeline.main(
    [str(tmp_path / 'in'), '--output', str(tmp_path / 'in' / 'out'), '--baseline', 'blur']
  )
  assert code == 2 and 'is inside the input' in capsys.readouterr().err


def test_an_output_holding_a_run_with_other_options_is_refused(tmp_path):
  """Resuming reuses finished files only under the same options: a run with others is
  refused, unless --overwrite (which redoes every file); the same options resume."""
  (tmp_path / 'in').mkdir()
  out = tmp_path / 'out'

  def spec(*flags):
    args, _ = beam_pipeline.parse_args(
      [str(tmp_path / 'in'), '--output', str(out), '--baseline', 'blur', *flags]
    )
    return beam_pipeline.run_spec(args)

  first = spec('--seed', '1')
  assert not first.resume
  beam_resume.prepare_output(first)
  assert spec('--seed', '1').resume
  with pytest.raises(anonymize.InputError, match='holds a run with other options'):
    spec('--seed', '2')
  again = spec('--seed', '2', '--overwrite')
  assert again.overwrite and not again.resume
  assert again.fingerprint() != first.fingerprint()


def test_a_worker_process_loads_the_model_once_at_its_first_batch(tmp_path):
  """Every copy of the DoFn in one process (a runner's threads or bundle processors)
  shares one model, loaded at the first batch: a copy given no batch loads nothing. A copy
  made after the others are torn down gets the same model back; the next run's model
  replaces it, so a process keeps at most one idle model."""
  import gc  # pylint: disable=import-outside-toplevel
  import weakref  # pylint: disable=import-outside-toplevel

  from apache_beam.internal import pickler  # pylint: disable=import-outside-toplevel

  loads = tmp_path / 'loads'  # the copies' ``load`` is a pickled copy: it counts in a file

  class Stub:  # what the Runner reads of an anonymizer for files it skips
    options = anonymize.Options()
    method = 'stub'
    semantic_maps = None

    def take_rejected(self, key):
      return []

  def load():
    with open(loads, 'a') as f:
      f.write('load\n')
    return Stub()

  spec = beam_spec.RunSpec(output=str(tmp_path / 'out'), report='r.json', options=Stub.options)
  notes = beam_inputs.Source(str(tmp_path / 'notes.txt'), 'notes.txt', None, 'not media')

  def copies_of(fn, n):
    copies = [pickler.loads(pickler.dumps(fn)) for _ in range(n)]
    for copy in copies:
      copy.setup()
    return copies

  fn = beam_worker.AnonymizeFiles(spec, load)
  copies = copies_of(fn, 3)
  assert not loads.exists()
  rows = [row for copy in copies[:2] for row in copy.process([notes])]
  assert loads.read_text() == 'load\n'
  assert [r['status'] for r in rows] == ['skipped', 'skipped'], rows
  made = [weakref.ref(copies[0]._worker.runner.anonymizer)]  # pylint: disable=protected-access
  for copy in copies:
    copy.teardown()
  (late,) = copies_of(fn, 1)
  assert [r['status'] for r in late.process([notes])] == ['skipped']
  assert loads.read_text() == 'load\n'
  late.teardown()

  (other_run,) = copies_of(beam_worker.AnonymizeFiles(spec, load), 1)
  list(other_run.process([notes]))
  assert loads.read_text() == 'load\nload\n'
  made.append(weakref.ref(other_run._worker.runner.anonymizer))  # pylint: disable=protected-access
  other_run.teardown()
  gc.collect()
  assert [ref() is None for ref in made] == [True, False]
