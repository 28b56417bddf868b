"""Train SDGAN, or its EAGRNet face parser (configs with task='parser').

  python run.py --config=configs/celeba.py --workdir=workdirs/celeba128
  python run.py --config=configs/demo.py --workdir=workdirs/demo
  python run.py --config=configs/eagrnet_polygons.py --workdir=workdirs/parser \
      --config.data.dataset=DATASET_DIR

Multi-host (one process per host; on Cloud TPU and SLURM the cluster is auto-detected):
  python run.py --config=... --workdir=gs://... --distributed
or explicitly, e.g. two CPU processes on one machine:
  python run.py ... --coordinator_address=localhost:1234 --num_processes=2 --process_id=0
"""

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summaries and the config.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (cluster auto-detect).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
flags.DEFINE_integer('process_id', None, 'This process (multi-process).')
flags.DEFINE_string('compilation_cache', None,
                    'Persistent XLA compilation cache: a restarted run skips its minutes of '
                    "compiling. Default $JAX_COMPILATION_CACHE_DIR or ~/.cache/sdgan_jax/xla; "
                    "'' turns it off.")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel

  from sdgan_jax import compile_cache  # pylint: disable=import-outside-toplevel
  compile_cache.enable(FLAGS.compilation_cache)
  if FLAGS.coordinator_address or FLAGS.distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  if FLAGS.config.get('task', 'sdgan') == 'parser':
    from sdgan_jax import train_parser  # pylint: disable=import-outside-toplevel
    train_parser.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    return
  from sdgan_jax import train  # pylint: disable=import-outside-toplevel
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
