"""The sample command: python sample.py | jaxgen-sample | python -m jaxgen.sample

Sample from a trained workdir: --workdir DIR [--num N] [--out FILE] [family options];
or from a Hugging Face GPT-2 checkpoint without one: --pretrained NAME|DIR --prompt TEXT.
Images: --out x.npz writes the raw uint8 (N, H, W, C) samples (for external FID tools) instead of a grid."""
import os

import jax
from absl import app, flags

from jaxgen import cli

FLAGS = flags.FLAGS
FAMILY_OPTIONS = ('num', 'steps', 'sampler', 'eta', 'label', 'guidance', 'prompt', 'negative_prompt',
                  'max_new_tokens', 'temperature', 'top_k', 'top_p', 'iterative', 'melody', 'truncation', 'mix')


def define_flags() -> None:
  """The command's flags (defined only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string('workdir', None, 'a workdir written by train.py')
  flags.DEFINE_string('pretrained', None, 'instead of --workdir: a Hugging Face GPT-2 checkpoint (a folder with '
                      'config.json + model.safetensors + tokenizer files, or a Hub name such as gpt2-medium)')
  flags.DEFINE_integer('num', None, 'number of samples (num_return_sequences for GPT)')
  flags.DEFINE_string('out', None, 'output file (default DIR/samples/sample.<ext> of the family\'s sample kind)')
  flags.DEFINE_integer('seed', 0, 'sampling seed')
  flags.DEFINE_integer('checkpoint_step', None, 'checkpoint to load (default: latest)')
  # diffusion / conditional image models
  flags.DEFINE_integer('steps', None, 'diffusion sampling steps (DDIM when fewer than training steps)')
  flags.DEFINE_enum('sampler', None, ['ancestral', 'ddim'], 'diffusion sampler')
  flags.DEFINE_float('eta', None, 'DDIM eta in [0, 1]')
  flags.DEFINE_integer('label', None, 'class label for conditional models (audio: the MIDI pitch)')
  flags.DEFINE_float('guidance', None, 'classifier-free guidance weight w (text-to-image: SD\'s scale, 1 = none)')
  # StyleGAN2
  flags.DEFINE_float('truncation', None, 'StyleGAN2: truncation psi (1: none, 0: every sample at w_avg)')
  flags.DEFINE_bool('mix', None, 'StyleGAN2: one style-mixing grid (coarse styles from the rows, fine from the '
                    'columns) of --num sources each way')
  # audio
  flags.DEFINE_string('melody', None, 'audio: MIDI pitches P1,P2,... sampled one note each and joined with crossfades')
  # GPT, text-to-image
  flags.DEFINE_string('prompt', None, 'GPT prompt text; text-to-image: the prompt of every image')
  flags.DEFINE_string('negative_prompt', None, 'text-to-image: what guidance steers away from (default: the empty '
                      'prompt)')
  flags.DEFINE_integer('max_new_tokens', None, 'GPT tokens to generate')
  flags.DEFINE_float('temperature', None, 'GPT sampling temperature')
  flags.DEFINE_integer('top_k', None, 'GPT top-k filtering')
  flags.DEFINE_float('top_p', None, 'GPT nucleus (top-p) filtering')
  # BERT
  flags.DEFINE_string('fill', None, 'BERT: replace every [MASK] in TEXT')
  flags.DEFINE_bool('iterative', None, 'BERT --fill: one position per model call, most confident first')
  # text VAE
  flags.DEFINE_string('reconstruct', None, 'text VAE: reconstruct TEXT from its posterior mean')
  flags.DEFINE_string('interpolate', None, 'text VAE: --interpolate "TEXT A" "TEXT B" --num N decodes N sentences '
                      'along the line between their posterior means')
  flags.register_multi_flags_validator(['workdir', 'pretrained'],
                                       lambda f: (f['workdir'] is None) != (f['pretrained'] is None),
                                       message='give either --workdir DIR (a trained run) or --pretrained NAME|DIR')


def main(argv):
  if FLAGS.interpolate is not None and len(argv) != 2:
    raise app.UsageError('--interpolate takes two texts: --interpolate "TEXT A" "TEXT B"')
  if FLAGS.interpolate is None and len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jaxgen
  from jaxgen import evaluators, samples
  if FLAGS.pretrained:
    sampler, kind = jaxgen.load_pretrained(FLAGS.pretrained), samples.Texts()
  else:
    _, family, state = jaxgen.load_state(FLAGS.workdir, FLAGS.checkpoint_step)
    sampler, kind = family.make_sampler(state), family.sample_kind
  options = {k: FLAGS[k].value for k in FAMILY_OPTIONS if FLAGS[k].value is not None}
  if FLAGS.reconstruct is not None:
    options['text'] = [FLAGS.reconstruct]
  if FLAGS.fill is not None:
    options['text'] = FLAGS.fill
  if FLAGS.interpolate is not None:
    options['between'] = (FLAGS.interpolate, argv[1])
  evaluators.check_sampler_options(sampler, options)
  out = sampler(jax.random.key(FLAGS.seed), **options)
  path = FLAGS.out or (os.path.join(FLAGS.workdir, 'samples', 'sample' + kind.extension) if FLAGS.workdir
                       else 'sample' + kind.extension)
  text = kind.text(out)
  if text is not None:
    print(text)
  print('wrote ' + ', '.join(kind.save(path, jax.device_get(out))))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
