"""train_and_evaluate end to end on a tiny prepared dataset: checkpoints, summaries, resume."""

import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from train_fixtures import (
  batch_for,
  nan_pixel_at,
  patch_train_batches,
  shallow_config,
  sigterm_at_read_of,
)

from sdgan_jax import identity_bank as bank_lib
from sdgan_jax import inference, parallel, train, trainer
from sdgan_jax.datasets.builder import tfds_features
from sdgan_jax.networks import Networks, generate

R = 32
IDENTITIES, PER_IDENTITY = 4, 4


def _records(rng, split):
  rows = []
  for label in range(IDENTITIES):
    for i in range(PER_IDENTITY):
      mask = np.zeros((R, R, 1), np.uint8)
      mask[8:24, 8:24] = 255
      semantic = (rng.integers(1, 10, (R, R, 1)) * (mask > 0)).astype(np.uint8)
      rows.append(
        dict(
          image=rng.integers(0, 256, (R, R, 3), dtype=np.uint8),
          mask=mask,
          semantic=semantic,
          landmarks=rng.uniform(8, 24, (68, 2)).astype(np.float32),
          identity=np.int64(100 + label),
          label=np.int64(label),
          filename=f'{split}_{label}_{i}.jpg',
        )
      )
  return rows


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  rng = np.random.default_rng(0)
  builder = tfds.dataset_builders.store_as_tfds_dataset(
    name='loop_test_faces',
    version='1.0.0',
    features=tfds_features(R),
    split_datasets={s: list(enumerate(_records(rng, s))) for s in ('train', 'test')},
    data_dir=tmp_path_factory.mktemp('tfds'),
    file_format='array_record',
  )
  cfg = shallow_config(R)
  bank = bank_lib.IdentityBank(
    rng.normal(size=(IDENTITIES, cfg.identity_dim)),
    np.full(IDENTITIES, PER_IDENTITY),
    features=rng.normal(size=(IDENTITIES * PER_IDENTITY, cfg.identity_dim)),
  )
  bank.save(bank_lib.bank_path(builder.data_dir, 'train', cfg.data.identity_backbone))
  return str(builder.data_dir)


def _config(dataset, num_steps):
  cfg = shallow_config(R)
  cfg.data.dataset = dataset
  cfg.loss.perceptual_weights = 'random'
  cfg.train.num_steps = num_steps
  cfg.train.log_every = 1
  cfg.train.image_every = 2
  cfg.checkpoint.every = 2
  cfg.eval.num_batches = 1
  return cfg


def _params(state):
  return [
    np.asarray(x)
    for x in jax.tree_util.tree_leaves(
      (state.generator.params, state.discriminator.params, state.identity.params)
    )
  ]


@pytest.mark.slow
def test_train_writes_checkpoints_and_summaries_and_resumes_bit_identically(dataset, tmp_path):
  straight = train.train_and_evaluate(_config(dataset, 4), str(tmp_path / 'straight'))
  workdir = tmp_path / 'resumed'
  train.train_and_evaluate(_config(dataset, 2), str(workdir))  # "killed" after step 2
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['2']
  assert (workdir / 'config.json').is_file()
  assert list(workdir.glob('events.out.tfevents.*')), 'no TensorBoard summaries'
  resumed = train.train_and_evaluate(_config(dataset, 4), str(workdir))
  assert int(resumed.step) == 4
  # validation metrics are stored with each save, so the best step survives restarts
  best = trainer.checkpoint_manager(_config(dataset, 4), str(workdir)).best_step()
  assert best in (2, 4)
  for a, b in zip(_params(straight), _params(resumed)):
    np.testing.assert_array_equal(a, b)

  # The workdir is self-contained for inference: config, bank copy, EMA generator.
  restored = inference.TrainedGenerator.from_workdir(workdir, batch_size=3)
  assert restored.step == 4 and restored.bank.num_identities == IDENTITIES
  batch = batch_for(_config(dataset, 4), seed=1, batch_size=4)  # 4 = one full + one padded
  got = restored.generate(
    batch['image'], batch['mask'], batch['semantic'], batch['target_identity']
  )
  models = Networks(_config(dataset, 4))
  want, _ = generate(
    models.generator, resumed.ema_params, resumed.ema_stats, batch, models.config.num_classes
  )
  np.testing.assert_allclose(got, np.clip(np.asarray(want), 0, 1), atol=1e-5)
  outside = batch['mask'][..., 0] == 0  # the background is the input's, exactly
  np.testing.assert_allclose(got[outside], batch['image'][outside], atol=1e-6)


@pytest.mark.slow
def test_fresh_batches_train_end_to_end(dataset, tmp_path):
  """The authors' schedule through the real input path: 4 batches a 1:1:1 step (identity
  net, D's fakes, D's reals, G), one epoch of the 16 examples per step."""
  cfg = _config(dataset, 2)
  cfg.train.fresh_batches = True
  cfg.eval.num_batches = 0
  state = train.train_and_evaluate(cfg, str(tmp_path / 'fresh'))
  assert int(state.step) == 2
  assert list((tmp_path / 'fresh').glob('events.out.tfevents.*'))
  assert all(np.all(np.isfinite(p)) for p in _params(state))


def test_config_errors_fail_before_device_work(dataset, tmp_path):
  cfg = _config(dataset, 1)
  with cfg.unlocked():
    cfg.train.num_stepz = 3
  with pytest.raises(ValueError, match='train.num_stepz'):
    train.train_and_evaluate(cfg, str(tmp_path / 'w'))
  cfg = _config(dataset, 1)
  cfg.identity_dim = 64
  with pytest.raises(ValueError, match='identity_dim'):
    train.train_and_evaluate(cfg, str(tmp_path / 'w2'))
  cfg = _config(dataset, 1)
  cfg.resolution = 64
  with pytest.raises(ValueError, match='resolution'):
    train.train_and_evaluate(cfg, str(tmp_path / 'w3'))
  assert not pathlib.Path(tmp_path / 'w').exists()


@pytest.mark.slow
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
  patch_train_batches(monkeypatch, nan_pixel_at(2))  # the third step sees a NaN pixel
  cfg = _config(dataset, 6)
  cfg.checkpoint.every = 1
  with pytest.raises(trainer.NonFiniteLossError, match='step 3'):
    train.train_and_evaluate(cfg, str(tmp_path / 'w'))
  saved = sorted(
    int(p.name) for p in (tmp_path / 'w' / 'checkpoints').iterdir() if p.name.isdigit()
  )
  assert saved == [1, 2]


@pytest.mark.slow
def test_sigterm_saves_and_stops(dataset, tmp_path, monkeypatch):
  import signal  # pylint: disable=import-outside-toplevel

  # preempted during the second step (batch k is read while step k - PREFETCH_BATCHES runs)
  patch_train_batches(monkeypatch, sigterm_at_read_of(1 + parallel.PREFETCH_BATCHES))
  handler_before = signal.getsignal(signal.SIGTERM)
  # Not finished: Preempted (run.py's exit status 143), never a normal return.
  with pytest.raises(trainer.Preempted) as stopped:
    train.train_and_evaluate(_config(dataset, 50), str(tmp_path / 'w'))
  assert stopped.value.step == 2 and int(stopped.value.state.step) == 2
  assert stopped.value.signal == signal.SIGTERM and stopped.value.exit_status == 143
  saved = [p.name for p in (tmp_path / 'w' / 'checkpoints').iterdir() if p.name.isdigit()]
  assert saved == ['2']
  assert signal.getsignal(signal.SIGTERM) == handler_before  # handler restored


TWO_PROCESS_CONFIG = """
import os
import signal
import sys
sys.path[:0] = [{repo!r}, {repo!r} + '/tests']
from train_fixtures import shallow_config

# process id -> the training batch (0-based) at whose read that process gets SIGTERM
SIGTERM_AT = {sigterm_at!r}


def get_config():
  cfg = shallow_config({r})
  cfg.data.dataset = {dataset!r}
  cfg.loss.perceptual_weights = 'random'
  cfg.train.num_steps = {num_steps}
  cfg.train.log_every = 1
  cfg.train.image_every = {image_every}
  cfg.checkpoint.every = {every}
  cfg.eval.num_batches = 1
  process = int(next(a.split('=')[1] for a in sys.argv if a.startswith('--process_id=')))
  if process in SIGTERM_AT:
    from sdgan_jax import input_pipeline
    read = input_pipeline.train_iterator

    def train_iterator(*args, **kwargs):
      for i, batch in enumerate(read(*args, **kwargs)):
        if i == SIGTERM_AT[process]:
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch

    input_pipeline.train_iterator = train_iterator
  # A preempted run logs no checksum of its own: print one over all three networks as it
  # stops, for the test to compare across processes.
  from sdgan_jax import trainer
  loop = trainer.run_training_loop

  def run_training_loop(*args, **kwargs):
    try:
      return loop(*args, **kwargs)
    except trainer.Preempted as stopped:
      import jax
      import numpy as np
      nets = stopped.state.generator, stopped.state.discriminator, stopped.state.identity
      total = sum(
        float(np.sum(np.asarray(x.addressable_data(0), np.float64)))
        for x in jax.tree_util.tree_leaves([n.params for n in nets])
      )
      print(f'process {{process}}: preempted at step {{stopped.step}}, checksum {{total:.10e}}',
            flush=True)
      raise

  trainer.run_training_loop = run_training_loop
  return cfg
"""


def _run_two_processes(tmp_path, dataset, *, num_steps=2, image_every=1, every=2, sigterm_at=None):
  """run.py as two jax.distributed processes on localhost (CPU, gloo) with
  ``TWO_PROCESS_CONFIG``: (exit statuses, outputs, workdir). A hang fails by timeout."""
  import os  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  repo = str(pathlib.Path(__file__).resolve().parents[1])
  config = tmp_path / 'two_process_config.py'
  config.write_text(
    TWO_PROCESS_CONFIG.format(
      repo=repo,
      r=R,
      dataset=dataset,
      num_steps=num_steps,
      image_every=image_every,
      every=every,
      sigterm_at=sigterm_at or {},
    )
  )
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  workdir = tmp_path / 'w'
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        f'{repo}/run.py',
        f'--config={config}',
        f'--workdir={workdir}',
        f'--coordinator_address=localhost:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
    )
    for i in range(2)
  ]
  deadline = time.monotonic() + 900
  try:
    outputs = [p.communicate(timeout=max(1, deadline - time.monotonic()))[0] for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    outputs = [p.communicate()[0] for p in procs]
    pytest.fail(
      'the two processes hung (900 s); their last output:\n'
      + '\n'.join(f'--- process {i}:\n{out[-3000:]}' for i, out in enumerate(outputs))
    )
  return [p.returncode for p in procs], outputs, workdir


def _saved_steps(workdir):
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_two_processes_train_on_their_shards_agree_and_stop_together(dataset, tmp_path):
  """jax.distributed on localhost (CPU, gloo): identical parameters, one summary writer,
  and one validation figure over both processes' shares of the test split. Issue 29, 7:
  SIGTERM reaches the hosts of one run at different steps; they agree on one step to stop
  at, save it together (a collective save entered at different steps hangs) and exit 143,
  the preempted status. One run checks both: each launch compiles the step twice over."""
  import re  # pylint: disable=import-outside-toplevel

  # batch k is read while step k - PREFETCH_BATCHES runs: process 0 is signalled during
  # step 2, process 1 during step 5 (or not at all, if the agreed step comes first)
  first = 1 + parallel.PREFETCH_BATCHES
  statuses, outputs, workdir = _run_two_processes(
    tmp_path, dataset, num_steps=40, image_every=1, every=1000, sigterm_at={0: first, 1: first + 3}
  )
  steps, checksums = [], []
  for i, (status, out) in enumerate(zip(statuses, outputs)):
    assert status == 143, out[-4000:]
    found = re.findall(r'SIGTERM at step (\d+): saved in', out)
    assert len(found) == 1, out[-4000:]
    steps.append(int(found[0]))
    found = re.findall(rf'process {i}: preempted at step (\d+), checksum (\S+)', out)
    assert len(found) == 1 and int(found[0][0]) == steps[-1], out[-4000:]
    checksums.append(found[0][1])
  assert steps[0] == steps[1] and 2 <= steps[0] < 40, steps
  assert checksums[0] == checksums[1]
  # each process validates its own half of the split at the save; both report the mean
  # over all of it
  ssims = [re.findall(r'eval/ssim=([-+.\deE]+)', out) for out in outputs]
  assert ssims[0] and ssims[0] == ssims[1], ssims
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1  # process 0 only
  assert _saved_steps(workdir) == steps[:1]  # the one save both took part in


def test_a_checkpoint_that_cannot_be_saved_is_one_error(monkeypatch):
  """Issue 27, 9: a full disk at a save is ``CheckpointWriteError`` (run.py: one line,
  exit 1) naming the step and the fix, not the checkpoint library's traceback."""
  import errno  # pylint: disable=import-outside-toplevel

  import ml_collections  # pylint: disable=import-outside-toplevel

  config = ml_collections.ConfigDict(
    dict(train=dict(num_steps=4, log_every=1), checkpoint=dict(every=2))
  )
  saved = []

  class Manager:
    def save(self, step, **kwargs):
      if step == 4:
        raise OSError(errno.ENOSPC, 'No space left on device')
      saved.append(step)

    def wait_until_finished(self):
      pass

  class Writer:
    def write_scalars(self, step, scalars):
      pass

    def flush(self):
      raise OSError(errno.ENOSPC, 'No space left on device')  # the summaries too

  def step_fn(state, batch):
    return state, {'train/all_finite': True}

  monkeypatch.setattr(parallel, 'keys_as_data', lambda state: state)  # a stand-in state

  with pytest.raises(OSError) as failed:
    trainer.run_training_loop(
      {'step': 0},
      step_fn,
      iter([(None, None)] * 4),
      config=config,
      workdir='/w',
      manager=Manager(),
      writer=Writer(),
      initial_step=0,
      evaluate=lambda state: {},
    )
  assert saved == [2]
  message = str(failed.value)  # the save's, not the summaries' failing after it
  assert 'could not save step 4 into /w/checkpoints' in message and '\n' not in message
  assert 'No space left on device' in message and 'resume' in message
  assert type(failed.value).__name__ == 'CheckpointWriteError'  # run.py: one line, exit 1
