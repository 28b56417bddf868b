"""What every trainer here shares: config checks, optimizers, checkpoints and the loop.

The SDGAN trainer (``sdgan_jax.train``) and the face-parser trainer
(``sdgan_jax.train_parser``) are built from these pieces; neither imports the other. States
are flax struct dataclasses with an ``rng`` PRNG-key field, checkpointed whole with orbax
(its raw key data, ``parallel.keys_as_data``). This is the training side: it imports
TensorFlow Datasets, clu and orbax; the train step and the optimizers it builds
(``sdgan_jax.optimizers``) do not, so accelerator hosts without TensorFlow run them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pathlib
import re
import signal
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
import tensorflow_datasets as tfds
from clu import periodic_actions
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from sdgan_jax import configs, inference, parallel
from sdgan_jax.config import ConfigError, load_config, unknown_key_message


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/inf losses; the last good checkpoint is kept."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be saved (a full disk...); the steps saved before are kept."""


class Preempted(Exception):
  """SIGTERM or SIGINT stopped training after saving ``step``: the job did not finish and
  the same command resumes it (run.py exits 143 or 130, so a scheduler does not mistake a
  preemption for a finished job).

  Attributes:
    signal: the signal number.
    step: the step saved.
    state: the training state at that step.
  """

  def __init__(self, signum: int, step: int, state):
    super().__init__(f'{signal.Signals(signum).name} at step {step}: saved, stopped')
    self.signal = signum
    self.step = step
    self.state = state

  @property
  def exit_status(self) -> int:
    """The shell's status of a process killed by the signal: 128 + its number."""
    return 128 + self.signal


def reference_config(name: str) -> ml_collections.ConfigDict:
  """The package's reference config ``name`` (``sdgan_jax/configs/NAME.py``): its keys are
  the keys every config of that trainer may use."""

  return load_config(str(configs.config_path(name)))


def check_keys(
  config: ml_collections.ConfigDict,
  reference: ml_collections.ConfigDict,
  free_form: frozenset[str] = frozenset(),
) -> None:
  """Every key of ``config`` must exist in ``reference`` (``ConfigError`` with the closest
  known key otherwise); groups named in ``free_form`` are left to their constructors."""

  def walk(cfg, ref, prefix):
    for key in cfg.keys():
      name = f'{prefix}{key}'
      if key not in ref:
        raise ConfigError(unknown_key_message(name, ref.keys()))
      if (
        isinstance(cfg[key], ml_collections.ConfigDict)
        and key not in free_form
        and isinstance(ref[key], ml_collections.ConfigDict)
      ):
        walk(cfg[key], ref[key], f'{name}.')

  walk(config, reference, '')


def check_at_least(config: ml_collections.ConfigDict, limits: dict[str, int]) -> None:
  """``limits`` maps 'group.key' to the least integer it may hold (absent keys pass)."""
  for name, least in limits.items():
    group, key = name.split('.')
    value = config.get(group, {}).get(key)
    if value is not None and (not isinstance(value, int) or value < least):
      raise ConfigError(f'config.{name}={value!r}: must be an integer >= {least}')


def as_config_error(build: Callable[[], Any]) -> Any:
  """``build()``, its ValueError/TypeError/KeyError turned into a one-line ``ConfigError``
  (model and optimizer constructors check their own keys)."""
  try:
    return build()
  except (ValueError, TypeError, KeyError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise ConfigError(str(message)) from e


def check_dataset(dataset: str) -> None:
  """``config.data.dataset`` must name a prepared dataset (``ConfigError`` otherwise)."""
  make = (
    'make one with `python tools/prepare_data.py --source samples --output data` '
    '(or --source celeba_files --celeba_dir DIR), which prints the directory to pass'
  )
  if not dataset:
    raise ConfigError(
      f'config.data.dataset is empty: pass --config.data.dataset=DIR, a prepared dataset; {make}'
    )
  path = pathlib.Path(dataset)
  if (path / 'dataset_info.json').is_file():
    try:
      json.loads((path / 'dataset_info.json').read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
      raise ConfigError(
        f'config.data.dataset={dataset!r}: its dataset_info.json is not '
        f'readable JSON ({e}); prepare the dataset again with '
        'tools/prepare_data.py'
      ) from e
    return
  if path.is_dir():
    found = sorted(
      str(p.parent)
      for pattern in ('*', '*/*', '*/*/*')
      for p in path.glob(f'{pattern}/dataset_info.json')
    )
    hint = f'did you mean {found[0]}?' if found else make
    raise ConfigError(
      f'config.data.dataset={dataset!r} is not a prepared dataset (no '
      f'dataset_info.json in it); {hint}'
    )
  if path.exists():
    raise ConfigError(
      f'config.data.dataset={dataset!r} is a file, not a prepared dataset directory; {make}'
    )
  name = re.fullmatch(r'([A-Za-z_]\w*)(/\w+)?(:[\d.*]+)?', dataset)
  if name:  # a registered TFDS name is looked up by load_data_source
    if name.group(1) in tfds.list_builders(with_community_datasets=False):
      return
  raise ConfigError(f'config.data.dataset={dataset!r}: no such directory; {make}')


def absolute_workdir(workdir: str) -> str:
  """``workdir`` made absolute (orbax refuses relative local paths); URLs kept."""
  return workdir if '://' in workdir else os.path.abspath(workdir)


_BARRIERS = itertools.count()


def wait_for_all_processes(name: str, timeout_s: int = 1800) -> None:
  """Returns once every process of the run has called this, in the same order (no-op
  alone); ``name`` tells the barriers apart in logs.

  A run's first collective also sets up the CPU collectives (gloo), whose rendezvous gives
  up after 30 s: processes arriving further apart (one still compiling on a loaded machine)
  fail there, in orbax's first barrier ("sync_global_devices name mismatch"). The
  coordination service's barrier waits as long as ``timeout_s``.
  """
  if jax.process_count() == 1:
    return

  ocp.multihost.get_barrier_sync_fn()(
    key=f'sdgan_jax:{name}:{next(_BARRIERS)}', timeout_ms=timeout_s * 1000
  )


def checkpoint_manager(config, workdir: str, track_best: bool = True):
  """orbax manager keeping the latest ``keep_latest`` saves plus the best by ``best_metric``.

  ``track_best`` is False when a run has no validation metric to rank by. Processes of one
  run meet first: creating the manager is their first collective.
  """

  wait_for_all_processes('checkpoint_manager')

  ckpt = config.checkpoint
  policies = [pp.LatestN(n=ckpt.keep_latest)]
  track = bool(ckpt.best_metric) and track_best
  if track:
    policies.append(
      pp.BestN(
        get_metric_fn=lambda m: m[ckpt.best_metric],
        reverse=ckpt.best_mode == 'min',
        n=1,
        keep_checkpoints_without_metrics=False,
      )
    )
  # orbax writes a step's metrics to disk only when ``best_fn`` is set; without them BestN
  # would forget the best step across restarts.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=pp.AnyPreservationPolicy(policies),
    create=True,
    enable_async_checkpointing=False,
    best_fn=(lambda m: m[ckpt.best_metric]) if track else None,
    best_mode=ckpt.best_mode,
  )
  return ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), options=options)


def save_checkpoint(manager, step: int, state, metrics: dict | None) -> None:
  manager.save(
    step, args=ocp.args.StandardSave(parallel.keys_as_data(state)), metrics=metrics, force=True
  )


def restore_state(workdir: str, abstract_state, step: int | None = None):
  """Restores the latest (or given) checkpoint of ``workdir`` onto ``abstract_state``'s
  layout (arrays or ``ShapeDtypeStruct``s, e.g. from ``jax.eval_shape``); returns
  ``(state, step)``."""

  # the stored layout is read only to fail early, with one line, on a damaged checkpoint
  manager, step, _ = inference.open_checkpoint(workdir, step)
  target = jax.tree_util.tree_map(
    lambda host, x: jax.ShapeDtypeStruct(
      host.shape, host.dtype, sharding=getattr(x, 'sharding', None)
    ),
    jax.eval_shape(parallel.keys_as_data, abstract_state),
    abstract_state,
  )
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  except (ValueError, KeyError, TypeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(
      f'{workdir}: the checkpoint of step {step} does not hold the state '
      f'this config trains ({first}); it was written with another config or '
      'an older sdgan_jax: train in a fresh --workdir'
    ) from e
  except Exception as e:  # pylint: disable=broad-except
    raise inference.damaged_checkpoint(workdir, step, e) from None
  return parallel.keys_from_data(restored), step


def resume_or_start(manager, workdir: str, state, config) -> tuple[Any, int]:
  """(state, first step): the latest checkpoint of ``workdir`` restored onto ``state`` if
  ``manager`` has one, else ``state`` at step 0; process 0 also writes the run's
  config.json."""
  initial_step = 0
  if manager.latest_step() is not None:
    state, initial_step = restore_state(workdir, state)
    logging.info('resumed from step %d', initial_step)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  return state, initial_step


class _StopSignals:
  """Where SIGTERM/SIGINT stop training: after a whole step, whose state is saved.

  One process stops at the step its signal arrives in. Processes of one run
  (``jax.distributed``) must enter the collective save at the same step, and a scheduler's
  SIGTERM reaches each host at a different one; there JAX's preemption sync point agrees
  on the step (its coordination service tells every process of a notice, and the next step
  all of them reach is the one to stop at). JAX's own SIGTERM handler raises that notice;
  SIGINT, handled here, raises it too. Handlers are restored on exit.
  """

  def __init__(self, initial_step: int):
    self._initial_step = initial_step

  def __enter__(self):
    self.received, self._previous = None, {}
    self.coordinated = jax.process_count() > 1 and self._sync_point_ready()
    if jax.process_count() > 1 and not self.coordinated:
      logging.warning(
        'JAX preemption service is off: each process stops at the step its '
        'own signal arrives in, and a save they do not share can hang'
      )
    # JAX's SIGTERM handler must stay in place when it coordinates the stop.
    for sig in (signal.SIGINT,) if self.coordinated else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._record)
    return self

  def _sync_point_ready(self) -> bool:
    try:  # the step before the first: all processes start from the same one
      multihost_utils.reached_preemption_sync_point(self._initial_step)
    except RuntimeError:  # no preemption sync manager (jax_enable_preemption_service off)
      return False
    return True

  def _record(self, sig, _):
    self.received = sig
    if self.coordinated:  # the other processes learn of it as of a preemption notice
      os.kill(os.getpid(), signal.SIGTERM)

  def stop_at(self, step: int) -> int | None:
    """The signal to stop after ``step`` for (SIGTERM when another process got it), or
    None to go on. Called once after every step, by every process."""
    if not self.coordinated:
      return self.received

    if multihost_utils.reached_preemption_sync_point(step):
      return self.received or signal.SIGTERM
    return None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _check_finite(metrics, step: int, workdir: str, failure: str, hint: str) -> dict:
  host = jax.device_get(metrics)
  if not host['train/all_finite']:
    raise NonFiniteLossError(
      f'non-finite {failure} at step {step}: {host}; the last good checkpoint in '
      f'{workdir}/checkpoints is kept ({hint})'
    )
  return host


def run_training_loop(
  state,
  step_fn: Callable,
  batches: Iterator[tuple[dict, dict]],
  *,
  config: ml_collections.ConfigDict,
  workdir: str,
  manager,
  writer,
  initial_step: int,
  evaluate: Callable[[Any], dict],
  images: Callable[[Any, dict], dict] | None = None,
  failure: str = 'loss',
  hint: str = '',
) -> tuple[Any, int]:
  """Runs ``step_fn`` up to ``config.train.num_steps``; returns (state, last step).

  ``batches`` yields (host batch, device batch) (``parallel.prefetch_to_mesh``). Every
  ``train.log_every`` steps the metrics are fetched (the loop's only wait for the device),
  checked (a non-finite ``failure`` raises ``NonFiniteLossError`` before anything of that
  step is saved) and written; every ``train.image_every`` steps process 0 writes
  ``images(state, host batch)``; every ``checkpoint.every`` steps and at the end
  ``evaluate(state)`` runs and the state is saved with its metrics. SIGTERM/SIGINT save
  the current step (one step agreed by all processes, ``_StopSignals``) and raise
  ``Preempted`` (the run did not finish).
  """

  num_steps = config.train.num_steps
  image_every = config.train.get('image_every', 0) if images is not None else 0
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  step, stop_signal = initial_step, None
  with _StopSignals(initial_step) as stop:
    try:
      while step < num_steps:
        batch, device_batch = next(batches)
        state, metrics = step_fn(state, device_batch)
        step += 1
        report(step)
        stop_signal = stop.stop_at(step)
        save = step % config.checkpoint.every == 0 or step == num_steps or stop_signal is not None
        if step % config.train.log_every == 0 or save:
          writer.write_scalars(step, _check_finite(metrics, step, workdir, failure, hint))
        if image_every and step % image_every == 0 and jax.process_index() == 0:
          writer.write_images(step, images(state, batch))  # process 0 writes summaries
        if save:
          eval_metrics = evaluate(state)
          if eval_metrics:
            writer.write_scalars(step, eval_metrics)
          try:
            save_checkpoint(manager, step, state, eval_metrics or None)
          except Exception as e:  # pylint: disable=broad-except
            text = str(e).strip()
            first = text.splitlines()[0][:200] if text else type(e).__name__
            raise CheckpointWriteError(
              f'could not save step {step} into {workdir}/checkpoints ({first}); the steps '
              'saved before are kept: free disk space (or fix the folder) and rerun the same '
              'command to resume'
            ) from None
        if stop_signal is not None:
          logging.warning('signal %d: saved step %d, stopping', stop_signal, step)
          break
    except BaseException:
      try:
        manager.wait_until_finished()
        writer.flush()
      except Exception as e:  # pylint: disable=broad-except
        # Already failing (e.g. on the full disk the summaries hit too): the first error
        # is the one to report.
        logging.warning('closing the checkpoints and summaries failed too: %s', e)
      raise
    manager.wait_until_finished()
    writer.flush()
  if stop_signal is not None and step < num_steps:  # a signal at the last step: finished
    raise Preempted(stop_signal, step, state)
  return state, step
