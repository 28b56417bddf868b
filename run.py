"""Train SDGAN, or its EAGRNet face parser (configs with task='parser').

  python run.py --config=configs/celeba.py --workdir=workdirs/celeba128
  python run.py --config=configs/demo.py --workdir=workdirs/demo
  python run.py --config=configs/eagrnet_polygons.py --workdir=workdirs/parser \
      --config.data.dataset=DATASET_DIR

Multi-host (one process per host; on Cloud TPU and SLURM the cluster is auto-detected):
  python run.py --config=... --workdir=gs://... --distributed
or explicitly, e.g. two CPU processes on one machine:
  python run.py ... --coordinator_address=localhost:1234 --num_processes=2 --process_id=0

A usage, config or data error prints one line and exits with status 2. SIGTERM (a
scheduler's preemption) or Ctrl-C during training saves the current step, prints one line
and exits with status 143 (SIGTERM) or 130 (Ctrl-C): the job is not finished, and the same
command resumes it. Ctrl-C elsewhere prints one line and exits with status 130.
"""

import errno
import os
import pathlib
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from sdgan_jax import config as config_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summaries and the config.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (cluster auto-detect).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
flags.DEFINE_integer('process_id', None, 'This process (multi-process).')
flags.DEFINE_string(
  'compilation_cache',
  None,
  'Persistent XLA compilation cache: a restarted run skips its minutes of '
  'compiling. Default $JAX_COMPILATION_CACHE_DIR or ~/.cache/sdgan_jax/xla; '
  "'' turns it off.",
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel

  from sdgan_jax.perf import compile_cache  # pylint: disable=import-outside-toplevel

  compile_cache.enable(FLAGS.compilation_cache)
  if FLAGS.coordinator_address or FLAGS.distributed:
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
    )
  if FLAGS.config.get('task', 'sdgan') == 'parser':
    from sdgan_jax import train_parser  # pylint: disable=import-outside-toplevel

    train_parser.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    return
  from sdgan_jax import train  # pylint: disable=import-outside-toplevel

  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


# --------------------------------------------------------------------------------------
# The command line: usage and config errors as one line (exit 2), Ctrl-C as one (exit 130).

_PROG = 'run.py'
_CONFIG_ARG = re.compile(r'^--?config(=(?P<spec>.*))?$')
_OVERRIDE_ARG = re.compile(r'^--?config\.(?P<path>[^=]+)')


def _fail(message, status: int = 2):
  """Prints ``message`` as one line on stderr and exits with ``status``."""
  text = ' '.join(line.strip() for line in str(message).splitlines() if line.strip())
  print(f'{_PROG}: {"error: " if status == 2 else ""}{text}', file=sys.stderr)
  sys.exit(status)


def _config_spec(argv) -> str | None:
  for i, arg in enumerate(argv):
    found = _CONFIG_ARG.match(arg)
    if found:
      spec = found.group('spec')
      return spec if spec is not None else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _check_config_file(argv) -> None:
  """A missing config file fails here (config_flags would defer it to a chained traceback)."""
  spec = _config_spec(argv)
  if spec is None:
    return  # absl's required-flag check names it
  path = spec.partition(':')[0]
  if not os.path.isfile(path):
    ours = sorted(p.name for p in (pathlib.Path(__file__).parent / 'configs').glob('[!_]*.py'))
    _fail(
      f'config file {path!r} not found: pass --config=configs/FILE.py (FILE.py: '
      f'{", ".join(ours)}), optionally with :ARG (e.g. configs/celeba.py:64)'
    )


def _override_error(argv) -> str | None:
  """The unknown ``--config.KEY`` of ``argv``, named with the valid keys beside it."""
  spec = _config_spec(argv)
  paths = [m.group('path') for m in map(_OVERRIDE_ARG.match, argv) if m]
  if spec is None or not paths:
    return None
  try:
    config = config_lib.load_config(spec)
  except Exception:  # pylint: disable=broad-except
    return None
  return config_lib.override_error(config, paths)


def parse_flags(argv):
  """absl's flag parsing with each usage or config-override error as one line, exit 2."""
  try:
    _check_config_file(argv[1:])
    return FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # a failing get_config comes as a whole traceback: keep its first and last lines
    message = lines[0] if len(lines) < 3 else f'{lines[0]} {lines[-1]}'
    _fail(f'{message} (see --helpshort)')
  except (KeyError, AttributeError, ValueError, TypeError):
    message = _override_error(argv[1:])
    if message is None:
      raise
    _fail(message)
  except KeyboardInterrupt:
    _fail('interrupted while reading the config; nothing was started', 130)


def _latest_step(workdir) -> int | None:
  """The newest checkpoint step of a local ``workdir``, None when it has none (or is remote)."""
  if not workdir or '://' in workdir:
    return None
  try:
    names = os.listdir(os.path.join(workdir, 'checkpoints'))
  except OSError:
    return None
  steps = [
    int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(workdir, 'checkpoints', n))
  ]
  return max(steps) if steps else None


def _is_data_error(e: BaseException) -> bool:
  """A config, data, identity-bank or checkpoint error: its message names the fix."""
  if isinstance(e, config_lib.ConfigError):
    return True
  for module, name in (
    ('sdgan_jax.datasets.parsing_folders', 'LayoutError'),
    ('sdgan_jax.identity_bank', 'BankError'),
    ('sdgan_jax.inference', 'CheckpointError'),
  ):
    loaded = sys.modules.get(module)
    if loaded is not None and isinstance(e, getattr(loaded, name)):
      return True
  return False


def cli_main(argv):
  """``main`` for the command line: config and data errors, preemption and Ctrl-C as one
  line."""
  from sdgan_jax import trainer  # pylint: disable=import-outside-toplevel

  try:
    main(argv)
  except trainer.Preempted as e:
    import signal  # pylint: disable=import-outside-toplevel

    where = os.path.join(FLAGS.workdir, 'checkpoints')
    _fail(
      f'{signal.Signals(e.signal).name} at step {e.step}: saved in {where}, not finished; '
      'resume with the same command',
      e.exit_status,
    )
  except ValueError as e:
    if not _is_data_error(e):
      raise
    _fail(e)
  except trainer.CheckpointWriteError as e:
    _fail(f'error: {e}', 1)
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
      raise
    # e.g. the summaries or config.json on a full disk: one line, not the traceback
    _fail(
      f'error: {e.filename or FLAGS.workdir}: {e.strerror}: free disk space (or fix the '
      'folder) and rerun the same command to resume from the last saved step',
      1,
    )
  except KeyboardInterrupt:
    step = _latest_step(FLAGS.workdir)
    if step is None:
      _fail(
        'interrupted before the first checkpoint (nothing saved); rerun the same command to start',
        130,
      )
    where = os.path.join(FLAGS.workdir, 'checkpoints')
    _fail(f'interrupted at step {step}; saved in {where}, resume with the same command', 130)


if __name__ == '__main__':
  app.run(cli_main, flags_parser=parse_flags)
