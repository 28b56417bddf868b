"""Hostile input to the command lines: one line naming what is wrong and what to do, a
usage exit status (2; 130 for Ctrl-C), never a traceback. Every case is a subprocess of the
CLI that stops before any training; the cases of a test run side by side."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS='cpu')
# A user's shell: not the 1 that importing JAX puts into this process's environment.
ENV.pop('TF_CPP_MIN_LOG_LEVEL', None)


def _run_all(commands, cwd=REPO):
  """Runs the argv lists side by side: [(returncode, stderr lines)], in order."""
  procs = [
    subprocess.Popen(c, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for c in commands
  ]
  results = []
  for p in procs:
    _, err = p.communicate(timeout=300)
    results.append((p.returncode, [line for line in err.splitlines() if line.strip()]))
  return results


def _one_line(result, status=2):
  """The single stderr line of a refused command (asserting its status)."""
  code, lines = result
  assert code == status and len(lines) == 1 and 'Traceback' not in lines[0], (code, lines)
  return lines[0]


def _run_py(*args, workdir='w'):
  return [sys.executable, str(REPO / 'run.py'), *args, f'--workdir={workdir}']


# ---------------------------------------------------------------------------------------
# 1. tools/prepare_data.py --source celeba_files with a wrong --celeba_dir.


def test_prepare_data_refuses_a_wrong_celeba_dir(tmp_path):
  (tmp_path / 'a_file').write_text('x')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'no_identities' / 'img_align_celeba').mkdir(parents=True)
  (tmp_path / 'images').mkdir()
  (tmp_path / 'images' / '000001.jpg').write_bytes(b'')
  (tmp_path / 'parent' / 'celeba' / 'img_align_celeba').mkdir(parents=True)
  cases = {
    'missing': 'does not exist',
    'a_file': 'is a file, not a folder',
    'empty': 'lacks the official img_align_celeba/ and identity_CelebA.txt',
    'no_identities': 'lacks the official identity_CelebA.txt',
    'images': f'image folder itself: pass its parent, {tmp_path}',
    'parent': f'did you mean --celeba_dir {tmp_path / "parent" / "celeba"}?',
  }
  results = _run_all(
    [
      [
        sys.executable,
        str(REPO / 'tools' / 'prepare_data.py'),
        '--source',
        'celeba_files',
        '--celeba_dir',
        str(tmp_path / name),
        '--output',
        str(tmp_path / 'out'),
      ]
      for name in cases
    ]
  )
  for (name, want), result in zip(cases.items(), results):
    line = _one_line(result)
    assert line.startswith('prepare_data.py: error: CelebA folder') and want in line, line
    if name in ('missing', 'empty'):
      assert 'mmlab' in line and '--source tfds_celeb_a' in line  # what to do
  assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------------------
# 2.-3. run.py: no dataset, a wrong dataset path, unknown config keys, bad values.


def test_run_py_refuses_a_missing_or_wrong_dataset(tmp_path):
  (tmp_path / 'a_file').write_text('x')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'data' / 'sdgan_faces' / 'samples_128' / '1.0.0').mkdir(parents=True)
  (tmp_path / 'data' / 'sdgan_faces' / 'samples_128' / '1.0.0' / 'dataset_info.json').write_text(
    '{}'
  )
  (tmp_path / 'corrupt').mkdir()
  (tmp_path / 'corrupt' / 'dataset_info.json').write_text('')
  cases = [
    ([], ['config.data.dataset is empty', '--config.data.dataset=DIR', 'tools/prepare_data.py']),
    (
      [f'--config.data.dataset={tmp_path / "missing"}'],
      ['no such directory', 'tools/prepare_data.py'],
    ),
    ([f'--config.data.dataset={tmp_path / "a_file"}'], ['is a file']),
    (
      [f'--config.data.dataset={tmp_path / "empty"}'],
      ['is not a prepared dataset', 'tools/prepare_data.py'],
    ),
    (
      [f'--config.data.dataset={tmp_path / "data"}'],
      [f'did you mean {tmp_path / "data" / "sdgan_faces" / "samples_128" / "1.0.0"}?'],
    ),
    (
      [f'--config.data.dataset={tmp_path / "corrupt"}'],
      ['not readable JSON', 'prepare the dataset again'],
    ),
  ]
  results = _run_all(
    [
      _run_py('--config=configs/celeba.py', *args, workdir=tmp_path / f'w{i}')
      for i, (args, _) in enumerate(cases)
    ]
  )
  for (_, wants), result in zip(cases, results):
    line = _one_line(result)
    assert line.startswith('run.py: error: '), line
    for want in wants:
      assert want in line, (want, line)
  assert not any(tmp_path.glob('w*')), 'nothing may be written before the data is checked'


def test_run_py_refuses_unknown_config_keys_and_bad_values(tmp_path):
  cases = [
    (
      ['--config=configs/celeba.py', '--config.train.batchsize=4'],
      [
        "unknown config key 'train.batchsize'",
        "did you mean 'train.batch_size'?",
        'keys of config.train: batch_size, d_steps',
      ],
    ),
    (
      ['--config=configs/demo.py', '--config.trian.batch_size=4'],
      ["unknown config key 'trian'", "did you mean 'train'?", 'keys of config: checkpoint'],
    ),
    (
      ['--config=configs/celeba.py', '--config.model.generator.widht=4'],
      ["unknown config key 'model.generator.widht'", 'keys of config.model.generator'],
    ),
    (
      ['--config=configs/celeba.py', '--config.train.batch_size.x=4'],
      ["'train.batch_size' holds a value (int)"],
    ),
    (
      ['--config=configs/celeba.py', '--config.train.batch_size=four'],
      ['--config.train.batch_size=four', 'invalid literal'],
    ),
    (['--config=configs/celeba.py:abc'], ['configs/celeba.py:abc', 'ValueError']),
    (
      ['--config=configs/nope.py'],
      ["config file 'configs/nope.py' not found", 'celeba.py, demo.py'],
    ),
    (
      ['--config=configs/eagrnet_polygons.py', '--config.optim.momentun=0.9'],
      ["unknown config key 'optim.momentun'", "did you mean 'optim.momentum'?"],
    ),
    ([], ['--config']),  # required flag
    # the trainers' own checks (validate_config), before any device work
    (
      ['--config=configs/celeba.py', '--config.train.batch_size=0'],
      ['config.train.batch_size=0: must be an integer >= 1'],
    ),
    (['--config=configs/celeba.py:40'], ['config.resolution=40', 'multiple of 16']),
    (
      ['--config=configs/eagrnet_folder.py'],
      ['config.data.folder is empty', '--config.data.folder=PATH'],
    ),
    (
      ['--config=configs/eagrnet_folder.py', f'--config.data.folder={tmp_path / "missing"}'],
      ['is not a folder', 'CelebAMask-HQ or LaPa'],
    ),
  ]
  results = _run_all(
    [_run_py(*args, workdir=tmp_path / f'w{i}') for i, (args, _) in enumerate(cases)]
  )
  for (args, wants), result in zip(cases, results):
    line = _one_line(result)
    assert line.startswith('run.py: error: '), (args, line)
    for want in wants:
      assert want in line, (args, want, line)
  assert not any(tmp_path.glob('w*'))


# ---------------------------------------------------------------------------------------
# 4. tools/eval.py: bad numeric arguments are usage errors.


def test_eval_refuses_bad_numbers(tmp_path):
  cases = [
    ('--batch_size', '0'),
    ('--batch_size', '-8'),
    ('--max_faces', '0'),
    ('--grid_faces', '-1'),
    ('--resolution', '0'),
    ('--batch_size', 'many'),
  ]
  results = _run_all(
    [
      [
        sys.executable,
        str(REPO / 'tools' / 'eval.py'),
        '--data',
        str(tmp_path / 'nowhere'),
        '--output',
        str(tmp_path / 'out'),
        flag,
        value,
      ]
      for flag, value in cases
    ]
  )
  for (flag, value), result in zip(cases, results):
    line = _one_line(result)
    assert line.startswith(f'eval.py: error: argument {flag}: ') and value in line, line
  assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------------------
# 5. Ctrl-C outside the training loop (which saves and stops by itself): one line, 130.

INTERRUPTED_RUN = """
import runpy, signal, sys, time
sys.path.insert(0, {repo!r})
from sdgan_jax import train

def ctrl_c(*args, **kwargs):  # Ctrl-C while the config and data are checked
  signal.raise_signal(signal.SIGINT)  # to this thread, the main one
  time.sleep(60)

# A terminal's Ctrl-C raises KeyboardInterrupt; a test runner started in the background
# hands its children SIGINT ignored, and Python then keeps it ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

train.validate_config = ctrl_c
sys.argv = ['run.py', '--config={repo}/configs/celeba.py', '--workdir=' + sys.argv[1]]
runpy.run_path({repo!r} + '/run.py', run_name='__main__')
"""

PREEMPTED_RUN = """
import errno, runpy, signal, sys
sys.path.insert(0, {repo!r})
from sdgan_jax import identity_bank, inference, train, trainer

FAILURES = {{  # what the training loop and the restore raise (tests of each beside them)
    'sigterm': trainer.Preempted(signal.SIGTERM, 7, None),  # saved step 7 on SIGTERM
    'disk_full': trainer.CheckpointWriteError('could not save step 8 into W/checkpoints '
                                              '(No space left on device); ...'),
    'summaries': OSError(errno.ENOSPC, 'No space left on device', 'W/events.out'),
    'checkpoint': inference.CheckpointError('the checkpoint W/checkpoints/7 cannot be read'),
    'bank': identity_bank.BankError('W/identity_bank.npz is not a readable identity bank'),
}}

FAILURE = FAILURES[sys.argv[2]]

def failing(config, workdir):
  raise FAILURE

train.train_and_evaluate = failing
sys.argv = ['run.py', '--config={repo}/configs/celeba.py', '--workdir=' + sys.argv[1]]
runpy.run_path({repo!r} + '/run.py', run_name='__main__')
"""

INTERRUPTED_CONFIG = """
def get_config():
  raise KeyboardInterrupt
"""


def test_ctrl_c_outside_the_loop_is_one_line(tmp_path):
  script = tmp_path / 'interrupted_run.py'
  script.write_text(INTERRUPTED_RUN.format(repo=str(REPO)))
  resumable = tmp_path / 'resumable'
  (resumable / 'checkpoints' / '7').mkdir(parents=True)
  (resumable / 'checkpoints' / '12.orbax-checkpoint-tmp-3').mkdir()  # unfinished save
  config = tmp_path / 'interrupted_config.py'
  config.write_text(INTERRUPTED_CONFIG)
  preempted = tmp_path / 'preempted_run.py'
  preempted.write_text(PREEMPTED_RUN.format(repo=str(REPO)))
  results = _run_all(
    [
      [sys.executable, str(script), str(resumable)],
      [sys.executable, str(script), str(tmp_path / 'fresh')],
      _run_py(f'--config={config}', workdir=tmp_path / 'w'),
      *[
        [sys.executable, str(preempted), str(resumable), failure]
        for failure in ('sigterm', 'disk_full', 'summaries', 'checkpoint', 'bank')
      ],
    ]
  )
  assert _one_line(results[0], 130) == (
    f'run.py: interrupted at step 7; saved in {resumable / "checkpoints"}, resume with '
    'the same command'
  )
  assert _one_line(results[1], 130).startswith(
    'run.py: interrupted before the first checkpoint (nothing saved)'
  )
  assert _one_line(results[2], 130) == (
    'run.py: interrupted while reading the config; nothing was started'
  )
  # SIGTERM in the loop saved and stopped: not finished, so not 0 (a scheduler would think
  # the job done) but 143, the status of a process the signal ended.
  assert _one_line(results[3], 143) == (
    f'run.py: SIGTERM at step 7: saved in {resumable / "checkpoints"}, not finished; '
    'resume with the same command'
  )
  # Issue 27, 9: a full disk, a damaged checkpoint or identity bank: one line each.
  assert _one_line(results[4], 1).startswith('run.py: error: could not save step 8')
  assert _one_line(results[5], 1) == (
    'run.py: error: W/events.out: No space left on device: free disk space (or fix the '
    'folder) and rerun the same command to resume from the last saved step'
  )
  assert _one_line(results[6]) == ('run.py: error: the checkpoint W/checkpoints/7 cannot be read')
  assert _one_line(results[7]).endswith('is not a readable identity bank')


# ---------------------------------------------------------------------------------------
# 6. (issue 27, 9-10) tools/eval.py: an unreadable dataset, a read-only --output.


def _tiny_dataset(root: pathlib.Path) -> pathlib.Path:
  """A prepared 32-px dataset of two people per split (train_fixtures' record format)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from sdgan_jax.datasets.builder import tfds_features  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)

  def records(split):
    mask = np.zeros((32, 32, 1), np.uint8)
    mask[8:24, 8:24] = 255
    return [
      (
        i,
        dict(
          image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
          mask=mask,
          semantic=(mask > 0).astype(np.uint8),
          landmarks=rng.uniform(8, 24, (68, 2)).astype(np.float32),
          identity=np.int64(100 + i % 2),
          label=np.int64(i % 2),
          filename=f'{split}_{i}.jpg',
        ),
      )
      for i in range(4)
    ]

  built = tfds.dataset_builders.store_as_tfds_dataset(
    name='cli_error_faces',
    version='1.0.0',
    features=tfds_features(32),
    split_datasets={s: records(s) for s in ('train', 'test')},
    data_dir=root,
    file_format='array_record',
  )
  return pathlib.Path(built.data_dir)


def test_eval_refuses_an_unreadable_dataset_in_one_line(tmp_path, capsys):
  """In this process (TensorFlow is loaded already): each case fails before any work."""
  import shutil  # pylint: disable=import-outside-toplevel

  from tool_loader import load_tool  # pylint: disable=import-outside-toplevel

  data = _tiny_dataset(tmp_path / 'tfds')
  for name in ('truncated', 'bad_info'):
    shutil.copytree(data, tmp_path / name)
  record = next((tmp_path / 'truncated').glob('*-test.array_record-*'))
  record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
  (tmp_path / 'bad_info' / 'dataset_info.json').write_text('{"name": ')
  cases = [
    (data, ['--split', 'tset'], ["--split 'tset'", 'no such split', 'test, train']),
    (
      tmp_path / 'truncated',
      [],
      ["split 'test' cannot be read", 'truncated or damaged', 'prepare the dataset again'],
    ),
    (
      tmp_path / 'bad_info',
      [],
      ['dataset_info.json is not a readable', 'prepare the dataset again'],
    ),
  ]
  tool = load_tool('eval')
  capsys.readouterr()
  for i, (d, flags, wants) in enumerate(cases):
    code = tool.main(
      [
        '--data',
        str(d),
        '--output',
        str(tmp_path / f'out{i}'),
        '--baselines',
        'pixelate8',
        '--detectors',
        'hog',
        '--detection_processes',
        '1',
        '--no_progress',
        *flags,
      ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and err.startswith('eval.py: error: '), err
    for want in wants:
      assert want in err, (want, err)


def test_eval_checks_its_output_folder_before_the_work(tmp_path, capsys, monkeypatch):
  """A read-only --output is refused at once, not after the whole evaluation."""
  import errno  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel

  from tool_loader import load_tool  # pylint: disable=import-outside-toplevel

  tool = load_tool('eval')
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o555)
  mkstemp = tempfile.mkstemp

  def refusing(*args, dir=None, **kwargs):  # pylint: disable=redefined-builtin
    if pathlib.Path(dir) == locked:  # root ignores the mode: refuse as a read-only disk would
      raise PermissionError(errno.EACCES, 'Permission denied')
    return mkstemp(*args, dir=dir, **kwargs)

  monkeypatch.setattr(tempfile, 'mkstemp', refusing)
  started = []
  monkeypatch.setattr(tool.runner, 'evaluate', lambda options: started.append(1))
  try:
    with pytest.raises(SystemExit) as exit_info:
      tool.main(['--data', str(tmp_path), '--output', str(locked / 'eval')])
  finally:
    locked.chmod(0o755)
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and not started
  assert err.count('\n') == 1 and 'cannot write into --output' in err, err


# ---------------------------------------------------------------------------------------
# 7. (issue 27, 9) tools/prepare_data.py: a wrong --parser, out-of-range numbers, a
# read-only --output: one line each, before any download or preparation.


def test_prepare_data_refuses_a_bad_parser_numbers_or_output_in_one_line(
  tmp_path, capsys, monkeypatch
):
  """In this process: each case stops before any work."""
  import errno  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel

  from tool_loader import load_tool  # pylint: disable=import-outside-toplevel

  tool = load_tool('prepare_data')
  sdgan = tmp_path / 'sdgan_workdir'
  sdgan.mkdir()
  (sdgan / 'config.json').write_text('{"resolution": 64}')  # an SDGAN run, no task
  base = ['--source', 'samples', '--output', str(tmp_path / 'data')]
  for flags, wants in (
    (['--resolution', '0'], ['argument --resolution', '>= 16']),
    (['--resolution', '40'], ['multiple of 16']),
    (['--chunk_size', '0'], ['argument --chunk_size', '>= 1']),
    (['--workers', '-1'], ['argument --workers']),
  ):
    with pytest.raises(SystemExit) as exit_info:
      tool.main(base + flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().splitlines()[-1].startswith(
      'prepare_data.py: error: '
    ), err
    assert all(w in err for w in wants) and 'Traceback' not in err, (flags, err)
  for flags, wants in (
    (['--parser', str(tmp_path / 'missing')], ['--parser', 'no config.json']),
    (['--parser', str(sdgan)], ["holds a 'sdgan' run, not a face parser"]),
  ):
    assert tool.main(base + flags) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('prepare_data.py: error: '), err
    assert all(w in err for w in wants), (flags, err)
  locked = tmp_path / 'locked'
  locked.mkdir()
  mkstemp = tempfile.mkstemp

  def refusing(*args, dir=None, **kwargs):  # pylint: disable=redefined-builtin
    if pathlib.Path(dir) == locked:  # root ignores modes: refuse as a read-only disk would
      raise PermissionError(errno.EACCES, 'Permission denied')
    return mkstemp(*args, dir=dir, **kwargs)

  monkeypatch.setattr(tempfile, 'mkstemp', refusing)
  assert tool.main(['--source', 'samples', '--output', str(locked / 'data')]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'cannot write into --output' in err, err
  assert not (locked / 'data').exists()
