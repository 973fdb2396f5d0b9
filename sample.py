"""Sample from a trained workdir: python sample.py --workdir DIR [--num N] [--out FILE] [family options]."""
import inspect
import os

import jax
from absl import app, flags

from jaxgen import cli
from jaxgen.errors import UserError

flags.DEFINE_string('workdir', None, 'a workdir written by train.py')
flags.DEFINE_integer('num', None, 'number of images, or num_return_sequences for GPT')
flags.DEFINE_string('out', None, 'output file (default DIR/samples/sample.png or .txt)')
flags.DEFINE_integer('seed', 0, 'sampling seed')
flags.DEFINE_integer('checkpoint_step', None, 'checkpoint to load (default: latest)')
# diffusion / conditional image models
flags.DEFINE_integer('steps', None, 'diffusion sampling steps (DDIM when fewer than training steps)')
flags.DEFINE_enum('sampler', None, ['ancestral', 'ddim'], 'diffusion sampler')
flags.DEFINE_float('eta', None, 'DDIM eta in [0, 1]')
flags.DEFINE_integer('label', None, 'class label for conditional models')
flags.DEFINE_float('guidance', None, 'classifier-free guidance weight w')
# GPT
flags.DEFINE_string('prompt', None, 'GPT prompt text')
flags.DEFINE_integer('max_new_tokens', None, 'GPT tokens to generate')
flags.DEFINE_float('temperature', None, 'GPT sampling temperature')
flags.DEFINE_integer('top_k', None, 'GPT top-k filtering')
flags.DEFINE_float('top_p', None, 'GPT nucleus (top-p) filtering')
flags.mark_flag_as_required('workdir')
FLAGS = flags.FLAGS
FAMILY_OPTIONS = ('num', 'steps', 'sampler', 'eta', 'label', 'guidance', 'prompt', 'max_new_tokens',
                  'temperature', 'top_k', 'top_p')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jaxgen
  from jaxgen import images
  sampler = jaxgen.load_sampler(FLAGS.workdir, FLAGS.checkpoint_step)
  options = {k: FLAGS[k].value for k in FAMILY_OPTIONS if FLAGS[k].value is not None}
  params = inspect.signature(sampler).parameters
  if not any(p.kind is p.VAR_KEYWORD for p in params.values()):   # else the sampler checks its own options
    for name in options:
      if name not in params:
        raise UserError(f'--{name} does not apply to this model; its options are '
                        + ', '.join(f'--{p}' for p in params if p != 'rng'))
  out = sampler(jax.random.key(FLAGS.seed), **options)
  if isinstance(out, list):                              # texts
    path = FLAGS.out or os.path.join(FLAGS.workdir, 'samples', 'sample.txt')
    text = '\n\n----------\n\n'.join(out)
    print(text)
    with open(path, 'w') as f:
      f.write(text + '\n')
  else:
    path = FLAGS.out or os.path.join(FLAGS.workdir, 'samples', 'sample.png')
    images.save_png(path, images.make_grid(jax.device_get(out)))
  print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main)
