"""Sample-quality evaluation of a trained workdir: its family's evaluators; printed and appended to DIR/eval.jsonl.

  python -m jaxgen.eval --workdir DIR [--num N]
  python -m jaxgen.eval --train-classifier --dataset fashion_mnist     # the feature extractor, kept in the TFDS dir

What is reported is what the family declares (`Family.evaluators`, see jaxgen.evaluators for the shared
ones): image families FD in jaxgen's classifier features (not Inception FID), its real-data floor, an
Inception-score analogue and k-NN precision/recall; the VAE also the IWAE NLL; GPT val loss, perplexity,
bits/char and distinct-n of samples.
"""
import json
import os
import time

import jax
import ml_collections
from absl import app, flags

from jaxgen import cli, evaluators, families, stages
from jaxgen.errors import UserError
from jaxgen.train import checkpointing, sharding, trainer

FLAGS = flags.FLAGS


def _test_metrics(workdir: str, spec, state, seed: int):
  """config -> the family's eval_step metrics (its names) averaged over the test split of that config (state on
  the local mesh)."""
  def test_metrics(config) -> dict[str, float]:
    family = families.build(config, spec)
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
    eval_step = trainer.jit_eval_step(family, jax.tree.map(lambda x: x.sharding, state), mesh)
    batches = stages.resolve(config, workdir).eval_batches()
    means = trainer.evaluate(eval_step, state, config, batches, mesh, jax.random.key(seed))
    return {k.removeprefix('eval/'): v for k, v in means.items()}
  return test_metrics


def evaluate_workdir(workdir: str, num: int | None = None, *, seed: int = 0, batch: int = 250, **options) -> dict:
  """Every evaluator of the workdir's family at its latest checkpoint; appends the record to DIR/eval.jsonl.
  options: pr_k, iwae_k, iwae_examples, cache_dir, sampler_options (what the evaluators read)."""
  if num is not None and num < 2:
    raise UserError(f'--num={num} must be >= 2')
  if batch < 1:
    raise UserError(f'--batch={batch} must be >= 1 (images per sampler and classifier call)')
  config, spec, family, state = checkpointing.restore_run(workdir, families.build)
  ctx = evaluators.Context(config, spec, workdir, state, family.make_sampler(state),
                           _test_metrics(workdir, spec, state, seed),
                           lambda: stages.resolve(config, workdir).eval_batches(), num, batch, seed, options)
  record = dict(workdir=os.path.abspath(workdir), step=int(state.step), family=config.family,
                dataset=spec.get('name', config.data.name), time=time.strftime('%Y-%m-%dT%H:%M:%S'))
  for name, evaluator in family.evaluators.items():
    record.update(evaluator(ctx))
    print(f'{name}: done')
  with open(os.path.join(workdir, 'eval.jsonl'), 'a') as f:
    f.write(json.dumps(record) + '\n')
  return record


def format_record(record: dict) -> str:
  width = max(map(len, record))
  lines = []
  for k, v in record.items():
    lines.append(f'{k.ljust(width)}  {v:.4f}' if isinstance(v, float) else f'{k.ljust(width)}  {v}')
  return '\n'.join(lines)


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string('workdir', None, 'a workdir written by train.py')
  flags.DEFINE_integer('num', None, 'generated samples (default: 10000 images, 20 texts; BERT: pseudo-perplexity '
                       'windows, default 8)')
  flags.DEFINE_bool('train-classifier', False, 'train (or retrain) and cache the feature classifier of --dataset')
  flags.DEFINE_string('dataset', None, 'with --train-classifier: the image dataset, one of '
                      + ' | '.join(evaluators.CLASSIFIERS))
  flags.DEFINE_string('cache_dir', None,
                      'where classifiers are cached (default: <TFDS data dir>/jaxgen_classifiers)')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir for --train-classifier (default: TFDS default)')
  flags.DEFINE_integer('iwae_k', None, 'VAEs: importance samples per test example (default: 1000 for images, '
                       'model.iwae_k for sentences)')
  flags.DEFINE_integer('iwae_examples', None, 'image VAE: test examples for the IWAE NLL (default 10000)')
  flags.DEFINE_integer('pr_k', 3, 'k of the k-NN precision/recall')
  flags.DEFINE_integer('batch', 250, 'images per sampler / classifier call')
  flags.DEFINE_integer('seed', 0, 'sampling seed')
  flags.DEFINE_integer('steps', None, 'diffusion sampling steps (DDIM when fewer than training steps)')
  flags.DEFINE_enum('sampler', None, ['ancestral', 'ddim'], 'diffusion sampler')
  flags.DEFINE_float('guidance', None, 'diffusion: classifier-free guidance weight (default: the config\'s)')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS['train-classifier'].value:
    if FLAGS.dataset not in evaluators.CLASSIFIERS:
      raise UserError(f'--train-classifier needs --dataset, one of {sorted(evaluators.CLASSIFIERS)}')
    evaluators.train_classifier(FLAGS.dataset, FLAGS.cache_dir or evaluators.classifier_dir(FLAGS.data_dir),
                                FLAGS.data_dir, FLAGS.seed)
    return
  if not FLAGS.workdir:
    raise UserError('give --workdir DIR (a trained run) or --train-classifier --dataset NAME')
  record = evaluate_workdir(
      FLAGS.workdir, FLAGS.num, seed=FLAGS.seed, batch=FLAGS.batch, pr_k=FLAGS.pr_k, cache_dir=FLAGS.cache_dir,
      iwae_k=FLAGS.iwae_k, iwae_examples=FLAGS.iwae_examples,
      sampler_options={k: FLAGS[k].value for k in ('steps', 'sampler', 'guidance') if FLAGS[k].value is not None})
  print(format_record(record))
  print(f'appended to {os.path.join(FLAGS.workdir, "eval.jsonl")}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
