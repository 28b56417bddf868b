"""The Beam pipeline (``anonymize.beam_pipeline``) on the DirectRunner with 2 worker
processes, against the CLI on the same files: photos, an animated GIF, a short video with
sound and a corrupt file.

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
from sdgan_jax.anonymize import report as run_report

TESTS = pathlib.Path(__file__).resolve().parent
TWO_WORKERS = ['--direct_num_workers=2', '--direct_running_mode=multi_processing']
NOT_MEDIA = {'anonymize_report.json'}


@pytest.fixture(autouse=True)
def worker_environment(monkeypatch):
  """Beam's worker processes import the tests' modules and compute as this process does
  (conftest's JAX settings, which they inherit through the environment)."""
  path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get('PYTHONPATH', '')])
  monkeypatch.setenv('PYTHONPATH', path)
  monkeypatch.setenv('JAX_DEFAULT_MATMUL_PRECISION', 'highest')
  monkeypatch.setenv('JAX_THREEFRY_PARTITIONABLE', '0')


@pytest.fixture(scope='module')
def inputs(tmp_path_factory, tiles):  # noqa: F811
  """Photos (one in a subfolder), an animated GIF, a 6-frame video with sound, a corrupt
  JPEG and a text file."""
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


@pytest.mark.slow  # a CLI run and a 2-worker Beam run of the small generator (~2 min)
def test_beam_outputs_rows_and_totals_are_the_clis(
  inputs,
  workdir,
  weights_dir,
  tmp_path,
  capsys,
):
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
  cli_out, beam_out = tmp_path / 'cli', tmp_path / 'beam'
  assert load_tool('anonymize').main([str(inputs), '--output', str(cli_out)] + flags) == 1
  cli_report = json.loads((cli_out / anonymize.REPORT_NAME).read_text())
  code = load_tool('anonymize_beam').main(
    [str(inputs), '--output', str(beam_out)] + flags + TWO_WORKERS
  )
  assert code == 1  # the corrupt file
  assert 'finished before (resumed)' in capsys.readouterr().out

  cli_files, beam_files = media_files(cli_out), media_files(beam_out)
  assert set(cli_files) == {'collage.jpg', 'sub/biden.png', 'moving.gif', 'clip.mp4'}
  assert set(beam_files) == set(cli_files)
  for name, data in cli_files.items():
    assert beam_files[name] == data, name

  cli_rows = {r['input']: comparable(r, cli_out) for r in cli_report['files']}
  beam_rows = {r['input']: comparable(r, beam_out) for r in shard_rows(beam_out)}
  assert beam_rows == cli_rows
  assert sum(r['faces_found'] for r in cli_rows.values() if 'faces_found' in r) >= 6
  assert cli_rows[str(inputs / 'corrupt.jpg')]['status'] == 'error'
  errors = [
    json.loads(line)
    for shard in beam_out.glob('anonymize_report.errors-*.jsonl')
    for line in shard.read_text().splitlines()
  ]
  assert [r['input'] for r in errors] == [str(inputs / 'corrupt.jpg')]

  summary = json.loads((beam_out / anonymize.REPORT_NAME).read_text())
  assert counts(summary['totals']) == counts(cli_report['totals'])
  assert summary['totals']['files'] == 6 and summary['resumed'] == 0
  for key in ('method', 'semantic_maps', 'options', 'warnings'):
    assert summary[key] == cli_report[key], key


@pytest.mark.slow  # a 2-worker Beam run (~1 min)
def test_a_file_whose_worker_raises_ends_as_an_error_row(inputs, weights_dir, tmp_path):  # noqa: F811
  """A photo whose processing raises and a video that raises in its second frame batch
  each end as one error row, nothing written under their names; the rest are written."""
  src = tmp_path / 'in'
  src.mkdir()
  for name in ('collage.jpg', 'moving.gif', 'clip.mp4', 'corrupt.jpg'):
    (src / name).write_bytes((inputs / name).read_bytes())
  biden = np.asarray(Image.open(inputs / 'sub' / 'biden.png'))
  Image.fromarray(biden[: beam_faults.RAISE_SIZE[0], : beam_faults.RAISE_SIZE[1]]).save(
    src / 'raises.png'
  )
  out = tmp_path / 'out'
  args, beam_args = beam_pipeline.parse_args(
    [
      str(src),
      '--output',
      str(out),
      '--baseline',
      'pixelate',
      '--no_identity_check',
      '--frames_per_batch',
      '4',
      '--images_per_batch',
      '3',
    ]
    + TWO_WORKERS
  )
  summary = beam_pipeline.run(
    args,
    beam_args,
    load=functools.partial(beam_faults.faulty_anonymizer, weights_dir, args.options),
  )
  rows = {pathlib.Path(r['input']).name: r for r in shard_rows(out)}
  assert sorted(rows) == ['clip.mp4', 'collage.jpg', 'corrupt.jpg', 'moving.gif', 'raises.png']
  assert 'worker blew up on this photo' in rows['raises.png']['error']
  assert 'worker blew up mid-video' in rows['clip.mp4']['error']
  assert rows['corrupt.jpg']['status'] == 'error'
  for name in ('collage.jpg', 'moving.gif'):
    assert rows[name]['status'] == 'ok' and rows[name]['faces_found'] >= 1, rows[name]
  # Nothing under a final name but the finished files, and no temporary file left behind.
  assert sorted(media_files(out)) == ['collage.jpg', 'moving.gif']
  assert summary['totals']['errors'] == 3 and summary['totals']['files'] == 5


@pytest.mark.slow  # a killed 2-worker Beam run and its rerun (~1-2 min)
def test_a_killed_run_rerun_writes_every_output_exactly_once(inputs, weights_dir, tmp_path):  # noqa: F811
  src = tmp_path / 'in'
  src.mkdir()
  names = ['a.png', 'b.jpg', 'c.gif', f'{beam_faults.STALL_NAME}.png', 'clip.mp4']
  for name, orig in zip(
    names, ['sub/biden.png', 'collage.jpg', 'moving.gif', 'sub/biden.png', 'clip.mp4']
  ):
    (src / name).write_bytes((inputs / orig).read_bytes())
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
    time.sleep(5)
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
  assert code == 0
  assert sorted(media_files(out)) == sorted(names)  # each once, no temporary file
  for path, mtime in finished.items():  # a finished file is not redone
    assert path.stat().st_mtime_ns == mtime, path
  rows = shard_rows(out)
  assert sorted(pathlib.Path(r['input']).name for r in rows) == sorted(names)
  summary = json.loads((out / anonymize.REPORT_NAME).read_text())
  assert summary['resumed'] == len(finished)
  assert summary['totals']['files'] == len(names) and summary['totals']['errors'] == 0
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
  shares one model, loaded at the first batch: a copy given no batch loads nothing."""
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
  fn = beam_worker.AnonymizeFiles(spec, load)
  copies = [pickler.loads(pickler.dumps(fn)) for _ in range(2)]
  for copy in copies:
    copy.setup()
  assert not loads.exists()
  notes = beam_inputs.Source(str(tmp_path / 'notes.txt'), 'notes.txt', None, 'not media')
  rows = [row for copy in copies for row in copy.process([notes])]
  assert loads.read_text() == 'load\n'
  assert [r['status'] for r in rows] == ['skipped', 'skipped'], rows
  for copy in copies:
    copy.teardown()
  assert not beam_worker._SHARED  # pylint: disable=protected-access
