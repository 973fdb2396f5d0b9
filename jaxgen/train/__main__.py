"""The train command: python train.py | jaxgen-train | python -m jaxgen.train
  --config NAME|FILE[:preset] --workdir DIR [--config.<key>=<value> ...]

Re-running it on a workdir resumes from its newest checkpoint. With --config.init_from (a Hugging Face GPT-2
folder or Hub name) the model's shape and tokenizer come from that checkpoint (jaxgen.hf_gpt2) and step 0
starts from its parameters.
"""
from absl import app, flags
from ml_collections import config_flags

from jaxgen import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined only when run as a program, so importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'a config by name (gpt_shakespeare_char) or file '
                                  '(configs/<name>.py), with :preset', lock_config=True)
  flags.DEFINE_string('workdir', None, 'run directory (local or gs://): checkpoints, metrics, samples; re-running '
                      'resumes')
  flags.DEFINE_string('coordinator', None, 'multi-host without a cluster manager: HOST:PORT of process 0')
  flags.DEFINE_integer('num_processes', None, 'multi-host: number of processes')
  flags.DEFINE_integer('process_id', None, 'multi-host: this process index')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.init_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  from jaxgen import hf_gpt2, stages
  stages.train_and_evaluate(hf_gpt2.with_pretrained_shape(FLAGS.config), FLAGS.workdir)
  summary = cli.compile_summary()
  if summary:
    print(summary)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
