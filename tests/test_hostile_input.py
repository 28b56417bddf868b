"""The anonymizer against hostile or careless inputs: nothing leaks, nothing is lost silently.

Every check runs without a model or downloaded weights: the CLI with ``--baseline
pixelate --detectors hog --no_identity_check`` (dlib's HOG detector is built in), the library
with a stand-in detector that "finds" a face where the test put one. What is checked is the
plumbing around the anonymizer (paths, reports, frames, errors), not its faces.
"""

import errno
import json
import logging
import os
import pathlib
import tempfile
import warnings

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from tool_loader import load_tool

from sdgan_jax import anonymize, media
from sdgan_jax.anonymize import cli as anonymize_cli
from sdgan_jax.faces import detect

FAST = ['--baseline', 'pixelate', '--detectors', 'hog', '--no_identity_check', '--no_progress']


def _cli():
  return load_tool('anonymize')


def _photo(path: pathlib.Path, seed: int = 0, size=(48, 64)) -> pathlib.Path:
  """A small faceless picture (HOG finds nothing: fast)."""
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (*size, 3)).astype(np.uint8)).save(path)
  return path


class BoxDetector:
  """Stands in for the detector ensemble: one face at ``box`` in every image."""

  def __init__(self, box=(8, 8, 39, 39)):
    self.box = np.array([box], np.float32)

  def detect_many(self, images, map_fn):
    return [
      detect.Detections(self.box.copy(), np.ones(1, np.float32), None, (('fake',),)) for _ in images
    ]


def _anonymizer(detector=None, **options) -> anonymize.FaceAnonymizer:
  # The stand-in boxes hold patterns, not faces: no second stage, and dlib's landmarks (whose
  # model comes with the packages) instead of the face mesh's converted weights.
  options = {'verify_faces': False, 'landmarks': 'dlib', **options}
  return anonymize.FaceAnonymizer(
    baseline='pixelate',
    detector=detector or BoxDetector(),
    options=anonymize.Options(identity_threshold=0, workers=1, **options),
  )


def _run(cli, inputs, output, *flags):
  return cli.main([*map(str, inputs), '--output', str(output), *FAST, *flags])


def _error_lines(err: str) -> list[str]:
  return [line for line in err.splitlines() if 'error' in line.lower()]


# --- 1, 10: numbers the run must refuse ---------------------------------------------------


def _refused(cli, capsys, cases):
  base = ['in.png', '--output', 'out', '--baseline', 'blur']
  for flags, words in cases:
    with pytest.raises(SystemExit) as exit_info:
      cli.parse_args(base + flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and 'Traceback' not in err, flags
    assert all(w in err for w in words), (flags, err)


def test_identity_check_is_never_off_silently(tmp_path, capsys):
  """1. A negative threshold is refused; turning the check off is explicit and reported."""
  cli = _cli()
  _refused(
    cli,
    capsys,
    (
      (['--identity_threshold', '-1'], ['--identity_threshold must be > 0', '--no_identity_check']),
      (['--identity_threshold', 'nan'], ['--identity_threshold must be > 0']),
      (['--identity_threshold', '0'], ['--no_identity_check']),
      (['--no_identity_check', '--identity_threshold', '0.5'], ['not both']),
    ),
  )
  with pytest.raises(ValueError, match='identity_threshold'):
    anonymize.Options(identity_threshold=-1)
  _photo(tmp_path / 'a.png')
  assert (
    cli.main(
      [
        str(tmp_path / 'a.png'),
        '--output',
        str(tmp_path / 'out'),
        '--baseline',
        'pixelate',
        '--detectors',
        'hog',
        '--no_identity_check',
        '--no_progress',
      ]
    )
    == 0
  )
  err = capsys.readouterr().err
  report = json.loads((tmp_path / 'out' / anonymize.REPORT_NAME).read_text())
  assert 'identity re-check is off' in err
  assert any('identity re-check is off' in w for w in report['warnings'])
  assert report['options']['identity_threshold'] == 0


def test_out_of_range_numbers_are_usage_errors(capsys):
  """10. The CLI's checks are Options' (the library refuses the same)."""
  _refused(
    _cli(),
    capsys,
    (
      (['--quality', '0'], ['--quality must be between 1 and 100']),
      (['--quality', '101'], ['--quality must be between 1 and 100']),
      (['--batch_size', '0'], ['--batch_size must be >= 1']),
      (['--images_per_batch', '0'], ['--images_per_batch must be >= 1']),
      (['--frames_per_batch', '-2'], ['--frames_per_batch must be >= 1']),
      (['--min_face_px', '-1'], ['--min_face_px must be >= 0']),
    ),
  )
  for kwargs, word in (
    (dict(quality=0), 'quality'),
    (dict(quality=101), 'quality'),
    (dict(batch_size=0), 'batch_size'),
    (dict(images_per_batch=0), 'images_per_batch'),
    (dict(frames_per_batch=0), 'frames_per_batch'),
    (dict(min_face_px=-0.5), 'min_face_px'),
  ):
    with pytest.raises(ValueError, match=word):
      anonymize.Options(**kwargs)


# --- 2, 3, 4: the run never writes over an input, another output or an existing file -----


def _photos(tmp_path) -> pathlib.Path:
  photos = tmp_path / 'photos'
  photos.mkdir()
  for name in ('a.jpg', 'b.png'):
    _photo(photos / name)
  return photos


def test_the_report_is_never_an_input_or_an_output(tmp_path, capsys):
  """2. Nor is it inside an input folder."""
  cli = _cli()
  photos, out = _photos(tmp_path), tmp_path / 'out'
  before = {p.name: p.read_bytes() for p in photos.iterdir()}
  for report, words in (
    (photos / 'a.jpg', 'is the input'),
    (out / 'b.png', 'is where'),
    (photos / 'r.json', 'inside the input folder'),
  ):
    assert _run(cli, [photos], out, '--report', str(report)) == 2, report
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and words in err and 'Traceback' not in err, err
  assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
  assert not out.exists()


def test_no_two_outputs_share_a_path(tmp_path, capsys):
  """3. a.jpg's visualization is a.detections.png, which is also an input's output."""
  cli = _cli()
  clash = tmp_path / 'clash'
  clash.mkdir()
  _photo(clash / 'a.jpg')
  _photo(clash / 'a.detections.png', seed=1)
  assert _run(cli, [clash], tmp_path / 'clash_out', '--visualize') == 2
  assert 'would both be written to' in capsys.readouterr().err
  assert not (tmp_path / 'clash_out').exists()
  assert _run(cli, [clash], tmp_path / 'clash_out') == 0  # without --visualize: no clash


def test_existing_outputs_are_replaced_only_with_overwrite(tmp_path, capsys):
  """4. In the CLI and the library."""
  cli = _cli()
  photos, out = _photos(tmp_path), tmp_path / 'out'
  assert _run(cli, [photos], out) == 0
  written = {p.name: p.read_bytes() for p in out.iterdir()}
  (out / 'a.jpg').write_bytes(b'keep me')
  assert _run(cli, [photos], out) == 2
  err = capsys.readouterr().err
  assert 'already exists' in err and '--overwrite' in err
  assert (out / 'a.jpg').read_bytes() == b'keep me'
  assert _run(cli, [photos], out, '--overwrite') == 0
  assert (out / 'a.jpg').read_bytes() == written['a.jpg']
  report = json.loads((out / anonymize.REPORT_NAME).read_text())
  assert report['overwrite'] is True
  # The library refuses the same unless told.
  with pytest.raises(anonymize.InputError, match='already exists'):
    anonymize.anonymize_paths([photos], out, _anonymizer(), progress=False)
  anonymize.anonymize_paths([photos], out, _anonymizer(), progress=False, overwrite=True)


# --- 5: every frame of an animation or multi-page file ------------------------------------


def _pattern_frames(n: int, size=(48, 56)) -> list[np.ndarray]:
  """Frames of flat colour with a fine checkerboard (pixelation flattens it) where the face
  box of ``BoxDetector`` is."""
  frames = []
  for k in range(n):
    frame = np.full((*size, 3), (40 * k + 30, 90, 160), np.uint8)
    checker = (np.indices((32, 32)).sum(0) // 2 % 2 * 255).astype(np.uint8)
    frame[8:40, 8:40] = checker[..., None]
    frames.append(frame)
  return frames


def test_animations_and_pages_have_every_frame_anonymized_and_their_timing_kept(tmp_path):
  """5. Animated GIF, APNG, animated WebP, multi-page TIFF."""
  frames = _pattern_frames(3)
  inputs = tmp_path / 'in'
  inputs.mkdir()
  pil = [Image.fromarray(f) for f in frames]
  durations = [120, 240, 360]
  pil[0].save(inputs / 'anim.gif', save_all=True, append_images=pil[1:], duration=durations, loop=0)
  pil[0].save(inputs / 'anim.png', save_all=True, append_images=pil[1:], duration=durations, loop=3)
  pil[0].save(
    inputs / 'anim.webp',
    save_all=True,
    append_images=pil[1:],
    duration=durations,
    loop=0,
    lossless=True,
  )
  pil[0].save(inputs / 'pages.tif', save_all=True, append_images=pil[1:])
  report = anonymize.anonymize_paths(
    [inputs], tmp_path / 'out', _anonymizer(), progress=False, frames_per_batch=2
  )
  entries = {pathlib.Path(e['input']).name: e for e in report['files']}
  for name, loop in (('anim.gif', 0), ('anim.png', 3), ('anim.webp', 0), ('pages.tif', None)):
    entry = entries[name]
    assert entry['status'] == 'ok' and entry['frames'] == 3, entry
    assert entry['faces_found'] == 3 and sorted(f['frame'] for f in entry['faces']) == [0, 1, 2]
    assert any('3 frames' in n or '3 pages' in n for n in entry['notes']), entry['notes']
    with Image.open(tmp_path / 'out' / name) as im:
      assert im.n_frames == 3, name
      if loop is not None:
        assert im.info.get('loop') == loop, name
      for k in range(3):
        im.seek(k)
        im.load()
        if name != 'pages.tif':
          assert im.info.get('duration') == durations[k], (name, k)
        got = np.asarray(im.convert('RGB'))
        # The checkerboard is gone (pixelated) in every frame; the rest is kept.
        assert got[8:40, 8:40].std() < 40, (name, k)
        assert np.abs(got[44:, :].astype(int) - frames[k][44:, :]).mean() < 12, (name, k)


# --- 6, 12: a truncated video, and no fork warning ---------------------------------------


def _noise_video(path: pathlib.Path, n: int = 12) -> pathlib.Path:
  """n frames of noise (a large mdat), index first (+faststart: survives truncation)."""
  writer = imageio_ffmpeg.write_frames(
    str(path), (64, 64), fps=6, macro_block_size=1, output_params=['-movflags', '+faststart']
  )
  os.environ['IMAGEIO_FFMPEG_NO_PREVENT_SIGINT'] = '1'  # this helper's ffmpeg: no fork warning
  try:
    writer.send(None)
  finally:
    del os.environ['IMAGEIO_FFMPEG_NO_PREVENT_SIGINT']
  for k in range(n):
    writer.send(np.random.default_rng(k).integers(0, 255, (64, 64, 3)).astype(np.uint8))
  writer.close()
  return path


def test_ffmpeg_starts_without_the_fork_warning(tmp_path):
  """12. Reading and writing a video where JAX's threads run warns nothing."""
  import jax  # pylint: disable=import-outside-toplevel

  jax.devices()  # JAX's threads run (and its fork hook is installed) as in a real run

  _noise_video(tmp_path / 'in.mp4', n=2)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    info, frames = media.read_video(tmp_path / 'in.mp4')
    writer = media.VideoWriter(tmp_path / 'out.mp4', info)
    for frame in frames:
      writer.write(frame)
    writer.close()
  forks = [str(w.message) for w in caught if 'fork' in str(w.message)]
  assert not forks, forks
  assert writer.frames_written == 2


def test_a_truncated_video_reports_its_missing_frames(tmp_path):
  """6. Its index survives: it decodes without an error, to fewer frames than declared."""
  inputs = tmp_path / 'in'
  inputs.mkdir()
  whole = _noise_video(inputs / 'whole.mp4').read_bytes()
  (inputs / 'cut.mp4').write_bytes(whole[: int(len(whole) * 0.45)])
  report = anonymize.anonymize_paths(
    [inputs], tmp_path / 'out', _anonymizer(detector=BoxDetector((0, 0, -1, -1))), progress=False
  )
  entries = {pathlib.Path(e['input']).name: e for e in report['files']}
  cut = entries['cut.mp4']
  assert cut['status'] == 'error' and 0 < cut['frames'] < 12, cut
  assert f'only {cut["frames"]} of the 12 frames' in cut['error']
  assert entries['whole.mp4']['status'] == 'ok' and entries['whole.mp4']['frames'] == 12
  assert entries['whole.mp4']['frames_declared'] == 12
  assert report['totals']['errors'] == 1


# --- 7, 8: errors that name the fix, in one line ------------------------------------------


def test_unwritable_outputs_and_a_failed_report_are_one_line(tmp_path, capsys, monkeypatch):
  """7. Checked before any work; the report's failure is exit 1."""
  cli = _cli()
  photo = _photo(tmp_path / 'a.png')
  # --output naming an existing file.
  assert _run(cli, [photo], tmp_path / 'a.png') == 2
  err = capsys.readouterr().err
  assert len(_error_lines(err)) == 1 and 'is an existing file' in err
  # A read-only output folder: refused before any work.
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o555)
  mkstemp = tempfile.mkstemp

  def refusing(*args, dir=None, **kwargs):  # pylint: disable=redefined-builtin
    if pathlib.Path(dir) == locked:  # root ignores the mode: refuse as a read-only disk would
      raise PermissionError(errno.EACCES, 'Permission denied')
    return mkstemp(*args, dir=dir, **kwargs)

  monkeypatch.setattr(tempfile, 'mkstemp', refusing)
  try:
    assert _run(cli, [photo], locked / 'out') == 2
  finally:
    locked.chmod(0o755)
  err = capsys.readouterr().err
  assert len(_error_lines(err)) == 1 and 'cannot write into' in err and 'Traceback' not in err
  monkeypatch.undo()

  # Disk full while writing the report: one line, exit 1, the outputs are there.
  def full(report, path, replace=True):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(anonymize.report, 'write_report', full)
  assert _run(cli, [photo], tmp_path / 'out') == 1
  err = capsys.readouterr().err
  assert len(_error_lines(err)) == 1 and 'No space left on device' in err
  assert 'Traceback' not in err and (tmp_path / 'out' / 'a.png').is_file()


def test_a_missing_step_lists_the_steps_and_orbax_says_nothing(tmp_path, capsys, caplog):
  """8 (and 12: orbax's "Metadata file does not exist")."""
  import train_fixtures  # pylint: disable=import-outside-toplevel

  cli = _cli()
  photo = _photo(tmp_path / 'a.png')
  workdir = tmp_path / 'workdir'
  for step in (0, 5):
    (workdir / 'checkpoints' / str(step)).mkdir(parents=True)
  (workdir / 'config.json').write_text(train_fixtures.tiny_config(32).to_json_best_effort())
  caplog.set_level(logging.WARNING)
  code = cli.main(
    [
      str(photo),
      '--output',
      str(tmp_path / 'o2'),
      '--checkpoint',
      str(workdir),
      '--step',
      '3',
      '--detectors',
      'hog',
      '--no_identity_check',
      '--no_progress',
    ]
  )
  err = capsys.readouterr().err
  assert code == 2 and 'Traceback' not in err, err
  assert len(_error_lines(err)) == 1 and 'available steps: 0, 5' in err, err
  assert 'Metadata file does not exist' not in caplog.text


# --- 9: Ctrl-C -----------------------------------------------------------------------------


def test_ctrl_c_writes_the_report_of_what_was_done(tmp_path, capsys, monkeypatch):
  """9. One line saying what was finished, exit 130, the report of the files done."""
  inputs = tmp_path / 'in'
  inputs.mkdir()
  for k in range(3):
    _photo(inputs / f'{k}.png', seed=k)

  def interrupting_after(n):
    anonymizer = _anonymizer()
    process, calls = anonymizer.process, []

    def process_or_ctrl_c(*args, **kwargs):
      calls.append(1)
      if len(calls) > n:
        raise KeyboardInterrupt
      return process(*args, **kwargs)

    anonymizer.process = process_or_ctrl_c
    return anonymizer

  with pytest.raises(anonymize.Interrupted) as info:
    anonymize.anonymize_paths(
      [inputs], tmp_path / 'lib', interrupting_after(1), progress=False, images_per_batch=1
    )
  report = json.loads((tmp_path / 'lib' / anonymize.REPORT_NAME).read_text())
  assert report['interrupted'] and report['totals']['files'] == 1
  assert [pathlib.Path(p).name for p in report['unfinished']] == ['1.png', '2.png']
  assert info.value.report['files'] == report['files']
  assert sorted(p.name for p in (tmp_path / 'lib').iterdir()) == ['0.png', anonymize.REPORT_NAME]
  cli = _cli()
  monkeypatch.setattr(anonymize_cli, 'build_anonymizer', lambda *a, **k: interrupting_after(2))
  code = _run(cli, [inputs], tmp_path / 'cli', '--images_per_batch', '1')
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith('interrupted')]
  assert code == 130 and len(lines) == 1 and 'Traceback' not in err, err
  assert '2 files finished' in lines[0] and 'report:' in lines[0]
  assert json.loads((tmp_path / 'cli' / anonymize.REPORT_NAME).read_text())['interrupted']


# --- 11: odd folder contents -----------------------------------------------------------------


def test_odd_folder_contents_are_reported_and_the_run_goes_on(tmp_path, capsys):
  """11. A dangling link, hidden files and folders, other types, conversions."""
  cli = _cli()
  inputs, out = tmp_path / 'in', tmp_path / 'out'
  (inputs / '.cache').mkdir(parents=True)
  _photo(inputs / 'good.jpg')
  _photo(inputs / '.hidden.jpg')
  (inputs / 'notes.txt').write_text('not media\n')
  os.symlink(inputs / 'gone.jpg', inputs / 'dangling.jpg')
  (tmp_path / 'elsewhere').mkdir()
  _photo(tmp_path / 'elsewhere' / 'linked.jpg')
  os.symlink(tmp_path / 'elsewhere', inputs / 'linked_folder')  # issue 27, 7
  gray16 = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20
  Image.fromarray(gray16).save(inputs / 'gray16.png')
  Image.fromarray(np.zeros((48, 64, 3), np.uint8) + 50).convert('P').save(inputs / 'pal.png')
  rgba = np.dstack([np.zeros((48, 64, 3), np.uint8) + 80, np.full((48, 64), 128, np.uint8)])
  Image.fromarray(rgba, 'RGBA').save(inputs / 'alpha.png')
  assert _run(cli, [inputs], out) == 1  # the dangling link is an error ...
  err = capsys.readouterr().err
  report = json.loads((out / anonymize.REPORT_NAME).read_text())
  entries = {pathlib.Path(e['input']).name: e for e in report['files']}
  for name in ('good.jpg', 'gray16.png', 'pal.png', 'alpha.png'):  # ... the rest ran
    assert entries[name]['status'] == 'ok' and (out / name).is_file(), entries[name]
  assert entries['dangling.jpg']['status'] == 'error'
  assert 'dangling symbolic link' in entries['dangling.jpg']['error']
  assert 'dangling.jpg' in err
  for name, word in (
    ('.hidden.jpg', 'hidden file'),
    ('.cache', 'hidden folder'),
    ('notes.txt', 'not an image or video'),
    ('linked_folder', 'symbolic link to the folder'),
  ):
    assert entries[name]['status'] == 'skipped' and word in entries[name]['error'], name
  assert any('16' in n and '8 bits' in n for n in entries['gray16.png']['notes'])
  assert any('palette' in n for n in entries['pal.png']['notes'])
  assert any('alpha channel kept' in n for n in entries['alpha.png']['notes'])
  assert not (out / '.hidden.jpg').exists()
  with Image.open(out / 'alpha.png') as im:
    assert im.mode == 'RGBA' and np.asarray(im)[..., 3].min() == 128


def test_a_killed_run_s_temporary_files_are_removed_by_the_next(tmp_path, capsys):
  """11. Only ``media.atomic_path``'s temporary names, only in the folders written to."""
  out = tmp_path / 'out'
  (out / 'sub').mkdir(parents=True)
  inputs = tmp_path / 'in'
  (inputs / 'sub').mkdir(parents=True)
  _photo(inputs / 'sub' / 'good.jpg')
  leftovers = [
    out / '.good.sdgan-tmp-k3j9x_2a.tmp.jpg',
    out / 'sub' / '.good.sdgan-tmp-abcdefgh.tmp.jpg',
    out / '.anonymize_report.sdgan-tmp-0a1b2c3d.tmp.json',
  ]
  for path in leftovers:
    path.write_bytes(b'half a file')
  (out / '.keep.txt').write_text('mine')
  (out / 'sub' / 'x.sdgan-tmp-abcdefgh.tmp.jpg').write_text('not hidden: not ours')
  assert _run(_cli(), [inputs], out) == 0
  assert not any(p.exists() for p in leftovers)
  assert (out / '.keep.txt').is_file() and (out / 'sub' / 'x.sdgan-tmp-abcdefgh.tmp.jpg').is_file()
  report = json.loads((out / anonymize.REPORT_NAME).read_text())
  # (out/ itself holds no output: its leftovers go because the report is written there.)
  assert sorted(report['removed_temporary_files']) == sorted(map(str, leftovers))
  # The pattern is the one atomic_path names its temporary files by.
  with media.atomic_path(tmp_path / 'x.detections.png') as tmp:
    assert media.TEMP_PATTERN.match(tmp.name), tmp.name
    tmp.write_bytes(b'')
  for name in ('.x.sdgan-tmp-abcdefgh.tmp', '.anonymize_report.sdgan-tmp-a_1b2c3d.tmp.json'):
    assert media.TEMP_PATTERN.match(name), name
  for name in (
    'x.sdgan-tmp-abcdefgh.tmp.jpg',
    '.notes.txt',
    '.x.sdgan-tmp-abc.tmp.jpg',
    '.x.abcdefgh.tmp.jpg',
    '.x.sdgan-tmp-abcdefgh.jpg',
  ):
    assert not media.TEMP_PATTERN.match(name), name


# === Second pass (issue 27) ==================================================================
# --- 1: no option turns detection off silently; photos with no face are listed -----------


def test_detection_options_that_find_nothing_are_usage_errors(capsys):
  """1. A threshold outside its detector's score range (or NaN), a minimum face larger than
  photos, a fallback too fine to cover a face: refused, in the CLI and the library."""
  cli = _cli()
  both = ['--detectors', 'blazeface_short_range,blazeface_full_range,hog']
  _refused(
    cli,
    capsys,
    [
      (
        both + ['--detector_threshold', f'blazeface_full_range={v}'],
        ['--detector_threshold blazeface_full_range', 'outside its range', 'between 0 and 1'],
      )
      for v in ('2', '95', 'nan', '0', '1', '-0.5')
    ]
    + [
      (both + ['--detector_threshold', f'hog={v}'], ['--detector_threshold hog', 'outside'])
      for v in ('95', 'nan', '-3')
    ]
    + [
      (
        both + ['--detector_threshold', 'hog=0.5', '--detector_threshold', 'hog=0.2'],
        ['given twice'],
      ),
      (['--detect_min_face_px', '5000'], ['--detect_min_face_px must be > 0 and <= 1024']),
      (['--detect_min_face_px', 'nan'], ['--detect_min_face_px must be']),
      (['--fallback_blocks', '100'], ['--fallback_blocks must be between 1 and 16']),
      (['--fallback_blocks', '0'], ['--fallback_blocks must be between 1 and 16']),
    ],
  )
  for kwargs, word in (
    (dict(detector_thresholds={'blazeface_short_range': 2.0}), 'outside'),
    (dict(detector_thresholds={'blazeface_short_range': float('nan')}), 'outside'),
    (dict(detector_thresholds={'hog': 0.5}), 'not one of the detectors'),
    (dict(detect_min_face_px=5000), 'detect_min_face_px'),
    (dict(fallback_blocks=100), 'fallback_blocks'),
  ):
    with pytest.raises(ValueError, match=word):
      anonymize.Options(**kwargs)
  args = cli.parse_args(
    [
      'in.png',
      '--output',
      'out',
      '--baseline',
      'blur',
      *both,
      '--detector_threshold',
      'blazeface_full_range=0.3',
      '--detector_threshold',
      'hog=-0.5',
    ]
  )
  assert args.options.detector_thresholds == {'blazeface_full_range': 0.3, 'hog': -0.5}


def test_files_with_no_face_are_counted_and_listed(tmp_path, capsys):
  """1. The summary line and the report say which files had no face at all."""
  inputs = tmp_path / 'in'
  inputs.mkdir()
  for k in range(2):
    _photo(inputs / f'{k}.png', seed=k)
  assert _run(_cli(), [inputs], tmp_path / 'out') == 0
  out = capsys.readouterr().out
  assert '2 with no face found' in out, out
  assert f'no face found: {inputs / "0.png"}' in out and f'{inputs / "1.png"}' in out
  report = json.loads((tmp_path / 'out' / anonymize.REPORT_NAME).read_text())
  assert report['totals']['no_face_found'] == 2
  assert report['no_face_found'] == [str(inputs / '0.png'), str(inputs / '1.png')]
  # A photo with a face is not listed.
  report = anonymize.anonymize_paths([inputs], tmp_path / 'lib', _anonymizer(), progress=False)
  assert report['totals']['no_face_found'] == 0 and report['no_face_found'] == []


# --- 3, 4: a run deletes and replaces only what it wrote ---------------------------------


def test_only_this_tool_s_stale_temporaries_are_removed(tmp_path):
  """3. A user's file shaped like an old temporary name stays; a live run's temporaries
  (its folder locked) are not touched: that run is refused instead."""
  inputs, out = tmp_path / 'in', tmp_path / 'out'
  inputs.mkdir()
  _photo(inputs / 'a.png')
  out.mkdir()
  users = [out / '.holiday.abcdefgh.tmp.jpg', out / '.notes.k3j9x_2a.tmp']
  for path in users:
    path.write_bytes(b"a user's own file")
  report = anonymize.anonymize_paths([inputs], out, _anonymizer(), progress=False)
  assert all(p.read_bytes() == b"a user's own file" for p in users)
  assert 'removed_temporary_files' not in report
  # Another run is writing into the folder (it holds the lock) with its temporary file.
  live = out / '.clip.sdgan-tmp-abcdefgh.tmp.mp4'
  live.write_bytes(b'a video being encoded')
  with media.FolderLock(out):
    with pytest.raises(anonymize.InputError, match='another run .* is writing into'):
      anonymize.anonymize_paths([inputs], out, _anonymizer(), progress=False, overwrite=True)
  assert live.read_bytes() == b'a video being encoded'
  assert not (out / media.LOCK_NAME).exists()  # released and removed
  # Once that run is gone, its leftover is stale: removed by the next run.
  report = anonymize.anonymize_paths([inputs], out, _anonymizer(), progress=False, overwrite=True)
  assert report['removed_temporary_files'] == [str(live)] and not live.exists()


def test_two_runs_into_one_folder_never_replace_each_other(tmp_path, capsys):
  """4. A second run while one works in the folder (or above or below it) is refused with
  one line; a file that appears at an output's path during a run is never replaced."""
  inputs = tmp_path / 'in'
  inputs.mkdir()
  for k in range(2):
    _photo(inputs / f'{k}.png', seed=k)
  out = tmp_path / 'out'
  tree = tmp_path / 'tree'  # mirrored into tmp_path: its out/2.png goes into our folder
  (tree / 'out').mkdir(parents=True)
  _photo(tree / 'out' / '2.png')
  seen = []

  def second_run_midway(anonymizer):
    process = anonymizer.process

    def process_and_start_another(*args, **kwargs):
      # Into the folder, one below it, and from above it into it.
      for source, target in ((inputs, out), (inputs, out / 'sub'), (tree, tmp_path)):
        try:
          anonymize.anonymize_paths([source], target, _anonymizer(), progress=False, overwrite=True)
        except anonymize.InputError as e:
          seen.append(str(e))
      return process(*args, **kwargs)

    anonymizer.process = process_and_start_another
    return anonymizer

  report = anonymize.anonymize_paths(
    [inputs], out, second_run_midway(_anonymizer()), progress=False, images_per_batch=1
  )
  assert report['totals']['errors'] == 0
  assert len(seen) == 6 and all('another run' in m and 'is writing into' in m for m in seen)
  # The CLI refuses it before loading the model, in one line.
  cli = _cli()
  with media.FolderLock(tmp_path / 'busy'):
    assert _run(cli, [inputs], tmp_path / 'busy') == 2
  err = capsys.readouterr().err
  assert len(_error_lines(err)) == 1 and 'another run' in err and 'Traceback' not in err

  # Someone writes 1.png's output while the run works: left as it is, reported.
  def writes_over(anonymizer):
    process = anonymizer.process

    def process_while_someone_writes(images, keys=None, **kwargs):
      if keys and keys[0].endswith('1.png'):
        (tmp_path / 'out2' / '1.png').write_bytes(b'written by someone else')
      return process(images, keys=keys, **kwargs)

    anonymizer.process = process_while_someone_writes
    return anonymizer

  report = anonymize.anonymize_paths(
    [inputs], tmp_path / 'out2', writes_over(_anonymizer()), progress=False, images_per_batch=1
  )
  entries = {pathlib.Path(e['input']).name: e for e in report['files']}
  assert entries['0.png']['status'] == 'ok'
  assert entries['1.png']['status'] == 'error' and 'not written' in entries['1.png']['error']
  assert (tmp_path / 'out2' / '1.png').read_bytes() == b'written by someone else'
  assert not list((tmp_path / 'out2').glob('.*sdgan-tmp*'))


# --- 6: a file name that is not UTF-8 -----------------------------------------------------


class FakeGenerator:
  """Stands in for a trained generator: a bank of 4 targets, inverted crops."""

  resolution, batch_size, semantic_maps, workdir = 32, 8, None, 'fake'

  def __init__(self):
    self.bank = type('Bank', (), dict(num_identities=4, means=np.eye(4, dtype=np.float32)))()

  def generate(self, crops, masks, semantic, features):
    return 1.0 - crops.astype(np.float32) / 255.0


def test_a_file_name_that_is_not_utf8_affects_only_its_own_file(monkeypatch):
  """6. Seeded targets hash the name's bytes; a face whose target cannot be chosen fails
  alone, not the batch."""
  anonymizer = anonymize.FaceAnonymizer(
    FakeGenerator(),
    detector=BoxDetector(),
    options=anonymize.Options(identity_threshold=0, workers=1),
  )
  bad = os.fsdecode(b'photos/caf\xe9-\xff.jpg')  # Latin-1 bytes: surrogate escapes

  def faces(n):
    rng = np.random.default_rng(0)
    return [
      anonymize.Face(
        crop=rng.integers(0, 255, (32, 32, 3)).astype(np.uint8),
        mask=np.full((32, 32, 1), 255, np.uint8),
        semantic=np.ones((32, 32, 1), np.uint8),
        index=k,
      )
      for k in range(n)
    ]

  batch = faces(3)
  keys = ['photos/a.jpg', bad, 'photos/b.jpg']
  anonymizer._generate(batch, keys, [None] * 3)  # pylint: disable=protected-access
  assert all(f.reason is None and f.output is not None for f in batch), [
    (f.reason, f.detail) for f in batch
  ]
  assert 0 <= batch[1].target < 4
  # A face whose target choice raises fails alone.
  stable_int = anonymize.anonymizer._stable_int  # pylint: disable=protected-access

  def refusing(text):
    if text == bad:
      raise UnicodeError('a name that cannot be hashed')
    return stable_int(text)

  monkeypatch.setattr(anonymize.anonymizer, '_stable_int', refusing)
  batch = faces(3)
  anonymizer._generate(batch, keys, [None] * 3)  # pylint: disable=protected-access
  assert [f.reason for f in batch] == [None, 'generation_error', None]
  assert 'cannot be hashed' in batch[1].detail and batch[0].output is not None


# --- 11: a detector that scores everything ------------------------------------------------


def test_a_detector_scoring_every_anchor_is_stopped_before_memory_runs_out(tmp_path, monkeypatch):
  """11. Zeroed weights score every anchor of every tile 0.5: the photo is an error (not
  written) before the suppression, which never sees more than MAX_CANDIDATES boxes."""
  from sdgan_jax.faces import blazeface_detector  # pylint: disable=import-outside-toplevel

  zeroed = blazeface_detector.BlazeFaceDetector('blazeface_full_range', variables={})
  # What zeroed weights give: every regressor and logit 0 (no network run needed).
  monkeypatch.setattr(
    zeroed,
    'raw',
    lambda tiles: (
      np.zeros((len(tiles), len(zeroed.anchors), 16), np.float32),
      np.zeros((len(tiles), len(zeroed.anchors)), np.float32),
    ),
  )
  nms = blazeface_detector.weighted_nms

  def bounded_nms(boxes, scores, keypoints, **kwargs):
    assert len(scores) <= 10_000, f'{len(scores)} candidates reached NMS'
    return nms(boxes, scores, keypoints, **kwargs)

  monkeypatch.setattr(blazeface_detector, 'weighted_nms', bounded_nms)

  class Zeroed:
    def detect_many(self, images, map_fn):
      return zeroed.detect_many(images)

  inputs = tmp_path / 'in'
  inputs.mkdir()
  _photo(inputs / 'big.png', size=(600, 800))
  _photo(inputs / 'small.png', size=(48, 64))  # few tiles: under the cap, processed
  report = anonymize.anonymize_paths(
    [inputs], tmp_path / 'out', _anonymizer(Zeroed()), progress=False
  )
  entries = {pathlib.Path(e['input']).name: e for e in report['files']}
  assert entries['big.png']['status'] == 'error', entries['big.png']
  assert 'candidate boxes over its threshold' in entries['big.png']['error']
  assert 'make weights' in entries['big.png']['error']
  assert not (tmp_path / 'out' / 'big.png').exists()
  assert entries['small.png']['status'] == 'ok'


# --- 5: a variable frame rate ---------------------------------------------------------------


def test_a_variable_frame_rate_video_keeps_every_frame_at_its_time(tmp_path, monkeypatch):
  """5. Six frames over 1.86 s at irregular times (ffmpeg's nominal 30 fps beside a mean of
  3.9): the output lasts as long, holds each of the six frames, with the audio."""
  import subprocess  # pylint: disable=import-outside-toplevel

  inputs = tmp_path / 'in'
  inputs.mkdir()
  source = inputs / 'vfr.mp4'
  # Six flat frames of different colours, the first two 35 ms apart, the rest 310 ms.
  subprocess.run(
    [
      imageio_ffmpeg.get_ffmpeg_exe(),
      '-y',
      '-loglevel',
      'error',
      '-f',
      'lavfi',
      '-i',
      'color=c=black:size=64x64:rate=30:duration=0.2',
      '-f',
      'lavfi',
      '-i',
      'sine=frequency=440:duration=1.86',
      '-vf',
      "geq=r='N*40':g='128':b='255-N*40',setpts='if(lt(N,2),N*0.035,N*0.31)/TB'",
      '-fps_mode',
      'vfr',
      '-c:v',
      'libx264',
      '-pix_fmt',
      'yuv420p',
      '-c:a',
      'aac',
      str(source),
    ],
    check=True,
  )
  monkeypatch.setenv('IMAGEIO_FFMPEG_NO_PREVENT_SIGINT', '1')  # this ffmpeg: no fork warning
  passthrough = imageio_ffmpeg.read_frames(str(source), output_params=['-fps_mode', 'passthrough'])
  assert next(passthrough)['fps'] < 4 and len(list(passthrough)) == 6  # mean 3.9 fps
  report = anonymize.anonymize_paths(
    [inputs], tmp_path / 'out', _anonymizer(detector=BoxDetector((0, 0, -1, -1))), progress=False
  )
  [entry] = report['files']
  assert entry['status'] == 'ok' and entry['audio'] == 'kept', entry
  info, frames = media.read_video(tmp_path / 'out' / 'vfr.mp4')
  frames = list(frames)
  # As long as the input (its 1.86 s), not 13 s: every frame at its time.
  assert abs(len(frames) / info.fps - 1.86) < 0.15, (len(frames), info.fps)
  changes = sum(np.abs(a.astype(int) - b).mean() > 3 for a, b in zip(frames, frames[1:]))
  assert changes == 5, changes  # the six source frames, each held until the next
  assert any('variable frame rate' in n for n in entry['notes']), entry
