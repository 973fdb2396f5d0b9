"""Train a jaxgen model: python train.py --config configs/<family>_<dataset>.py[:preset] --workdir DIR."""
from absl import app, flags
from ml_collections import config_flags

from jaxgen import cli

config_flags.DEFINE_config_file('config', None, 'configs/<name>.py[:preset]', lock_config=True)
flags.DEFINE_string('workdir', None, 'run directory: checkpoints, metrics, samples; re-running resumes')
flags.DEFINE_string('coordinator', None, 'multi-host without a cluster manager: HOST:PORT of process 0')
flags.DEFINE_integer('num_processes', None, 'multi-host: number of processes')
flags.DEFINE_integer('process_id', None, 'multi-host: this process index')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.init_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  from jaxgen import stages
  stages.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
