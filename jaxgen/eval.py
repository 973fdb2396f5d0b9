"""Sample-quality evaluation of a trained workdir; results printed and appended to DIR/eval.jsonl.

  python -m jaxgen.eval --workdir DIR [--num N]
  python -m jaxgen.eval --train-classifier --dataset fashion_mnist     # the feature extractor, kept in the TFDS dir

Image families (gan, vae, ddpm, ldm), with N generated images and N real ones:
  fd           FD-FMNIST / FD-MNIST / FD-CIFAR10: Fréchet distance between generated and real *train* images in
               the penultimate feature space of a small classifier jaxgen trains itself (jaxgen.models.classifier).
               NOT Inception FID: not comparable with published FIDs; compare runs at the same N.
  fd_floor     the same FD between N real *test* and the N real train images: what a perfect model would score.
  inception_score (and inception_score_real, of the test images): exp(E KL(p(y|x) || p(y))) with the classifier.
  precision, recall: k-NN manifold estimates in the same features (Kynkäänniemi et al. 2019), vs the train images.
VAE also: iwae_nll (nats) and iwae_bits_per_dim over the test set, k importance samples (IWAE bound).
GPT: val_loss (nats/token), perplexity, bits_per_char over the validation windows of the run's config, and
distinct_1..4 (unique / total word n-grams) across --num samples drawn with the config's sample settings.
"""
import json
import math
import os
import time

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from flax import traverse_util

from jaxgen import cli, data, families, metrics
from jaxgen.config import base_config
from jaxgen.errors import UserError

FLAGS = flags.FLAGS

# dataset -> (metric name, classifier architecture and training steps at batch 128)
CLASSIFIERS = {
    'fashion_mnist': ('FD-FMNIST', dict(features=(32, 64), hidden=128), 2_000),
    'mnist': ('FD-MNIST', dict(features=(32, 64), hidden=128), 1_000),
    'cifar10': ('FD-CIFAR10', dict(features=(64, 128, 256), hidden=256), 10_000),
}


# ------------------------------------------------------------------------------------------- classifier

def _data_config(dataset: str, data_dir: str | None, batch_size: int, eval_examples: int = 10_000):
  """A config for jaxgen.data that reads `dataset` with pixels in [0, 1]."""
  config = base_config()
  config.data.name, config.data.data_dir, config.data.pixel_range = dataset, data_dir, (0.0, 1.0)
  config.batch_size, config.data.eval_examples = batch_size, eval_examples
  return config


def classifier_dir(data_dir: str | None) -> str:
  """Where classifiers are cached: beside the datasets they are trained on (jaxgen writes nowhere else)."""
  return os.path.join(os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR), 'jaxgen_classifiers')


def _classifier_paths(cache_dir: str, dataset: str) -> tuple[str, str]:
  stem = os.path.join(cache_dir, f'classifier_{dataset}')
  return stem + '.npz', stem + '.json'


def save_classifier(cache_dir: str, dataset: str, params, info: dict) -> None:
  """Parameters as a plain .npz ('/'-joined keys; no pickle) and their description as .json, atomically."""
  os.makedirs(cache_dir, exist_ok=True)
  npz, info_path = _classifier_paths(cache_dir, dataset)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep='/')
  tmp = f'{npz}.tmp{os.getpid()}.npz'
  np.savez(tmp, **{k: np.asarray(v) for k, v in flat.items()})
  os.replace(tmp, npz)
  with open(info_path + '.tmp', 'w') as f:
    json.dump(info, f, indent=2)
  os.replace(info_path + '.tmp', info_path)


def load_classifier_params(cache_dir: str, dataset: str):
  """(params, info) from the cache, or None when there is none for this architecture."""
  npz, info_path = _classifier_paths(cache_dir, dataset)
  if not (os.path.exists(npz) and os.path.exists(info_path)):
    return None
  with open(info_path) as f:
    info = json.load(f)
  if info.get('architecture') != _architecture(dataset):
    return None
  with np.load(npz, allow_pickle=False) as flat:
    return traverse_util.unflatten_dict({k: flat[k] for k in flat.files}, sep='/'), info


def _architecture(dataset: str) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in CLASSIFIERS[dataset][1].items()}


def _model(dataset: str, num_classes: int = 10):
  from jaxgen.models.classifier import Classifier
  return Classifier(num_classes=num_classes, **CLASSIFIERS[dataset][1])


def train_classifier(dataset: str, cache_dir: str, data_dir: str | None, seed: int = 0) -> dict:
  """Train the feature classifier on the train split (AdamW, cosine decay), report test accuracy, cache it."""
  import optax
  from jaxgen.train import optim
  if dataset not in CLASSIFIERS:
    raise UserError(f'no classifier for dataset {dataset!r}; choose one of {sorted(CLASSIFIERS)}')
  num_steps = CLASSIFIERS[dataset][2]
  config = _data_config(dataset, data_dir, batch_size=128)
  config.seed = seed
  data.setup(config, cache_dir)
  model = _model(dataset, config.data.num_classes)
  config.optim.schedule, config.optim.weight_decay, config.optim.warmup_steps = 'cosine', 1e-4, 100
  tx = optim.make_optimizer(1e-3, config.optim, num_steps)
  params = jax.jit(model.init)(jax.random.key(seed), np.zeros((1, *config.data.image_shape), np.float32))['params']
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, batch):
    def loss_fn(params):
      logits, _ = model.apply({'params': params}, batch['image'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  print(f'training the {dataset} feature classifier: {num_steps} steps of batch {config.batch_size}')
  start = time.time()
  batches = data.train_iterator(config, cache_dir)
  for step in range(num_steps):
    params, opt_state, loss = train_step(params, opt_state, next(batches))
    if (step + 1) % 500 == 0:
      print(f'  step {step + 1}: loss {float(loss):.4f}')
  apply = _jitted_apply(model)
  correct = total = 0
  for batch in data.eval_batches(_data_config(dataset, data_dir, batch_size=500), cache_dir):
    logits, _ = apply(params, batch['image'])
    correct += int(np.sum(np.argmax(logits, -1) == batch['label']))
    total += len(batch['label'])
  info = dict(dataset=dataset, architecture=_architecture(dataset), num_classes=config.data.num_classes,
              image_shape=list(config.data.image_shape), train_steps=num_steps, batch_size=config.batch_size,
              test_accuracy=correct / total, test_examples=total, train_seconds=time.time() - start)
  save_classifier(cache_dir, dataset, params, info)
  print(f'{dataset} classifier: test accuracy {100 * info["test_accuracy"]:.2f}% on {total} examples; '
        f'cached in {_classifier_paths(cache_dir, dataset)[0]}')
  return info


def _jitted_apply(model):
  return jax.jit(lambda params, x: model.apply({'params': params}, x))


def classifier(dataset: str, cache_dir: str, data_dir: str | None):
  """(features_and_probs(images in [0, 1] (N, H, W, C), batch) -> (features (N, D), probs (N, K)), info);
  trains and caches the classifier on first use."""
  if dataset not in CLASSIFIERS:
    raise UserError(f'no feature classifier for dataset {dataset!r}; image metrics support {sorted(CLASSIFIERS)}')
  cached = load_classifier_params(cache_dir, dataset)
  if cached is None:
    print(f'no cached {dataset} classifier in {cache_dir}: training it once (python -m jaxgen.eval '
          f'--train-classifier --dataset {dataset} does this explicitly)')
    train_classifier(dataset, cache_dir, data_dir)
    cached = load_classifier_params(cache_dir, dataset)
  params, info = cached
  apply = _jitted_apply(_model(dataset, info['num_classes']))

  def features_and_probs(x, batch: int):
    feats, probs = [], []
    for i in range(0, len(x), batch):
      chunk = x[i:i + batch]
      padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])  # one shape
      logits, f = jax.device_get(apply(params, padded))
      feats.append(f[:len(chunk)])
      logits = logits[:len(chunk)].astype(np.float64)
      p = np.exp(logits - logits.max(-1, keepdims=True))                # softmax
      probs.append(p / p.sum(-1, keepdims=True))
    return np.concatenate(feats), np.concatenate(probs)

  return features_and_probs, info


# ------------------------------------------------------------------------------------------- image metrics

def real_images(config, split: str, num: int, batch: int) -> np.ndarray:
  """The first `num` test images, or `num` shuffled train images, float32 in [0, 1] (N, H, W, C)."""
  dconfig = _data_config(config.data.name, config.data.get('data_dir'), batch, eval_examples=num)
  dconfig.seed = config.seed
  data.setup(dconfig, '')
  if split == 'test':
    batches = list(data.eval_batches(dconfig, ''))
  else:
    it = data.train_iterator(dconfig, '')
    batches = [next(it) for _ in range(-(-num // batch))]
  return np.concatenate([b['image'] for b in batches])[:num]


def generated_images(sampler, num: int, batch: int, seed: int, options: dict) -> np.ndarray:
  """num samples, float32 in [0, 1], from sampler calls of a fixed size `batch` (compiled once)."""
  out = [np.asarray(sampler(jax.random.fold_in(jax.random.key(seed), i), num=batch, **options))
         for i in range(-(-num // batch))]
  return np.concatenate(out)[:num].astype(np.float32) / 255.0


def image_metrics(config, family, state, num: int, batch: int, seed: int, pr_k: int, cache_dir: str,
                  sampler_options: dict) -> dict:
  features_and_probs, info = classifier(config.data.name, cache_dir, config.data.get('data_dir'))
  test_size = tfds.builder(config.data.name, data_dir=config.data.get('data_dir')).info.splits['test'].num_examples
  num_real = min(num, test_size)
  train_f, _ = features_and_probs(real_images(config, 'train', num, batch), batch)
  test_f, test_p = features_and_probs(real_images(config, 'test', num_real, batch), batch)
  t0 = time.time()
  fake = generated_images(family.make_sampler(state), num, batch, seed, sampler_options)
  sample_s = time.time() - t0
  fake_f, fake_p = features_and_probs(fake, batch)
  precision, recall = metrics.precision_recall(train_f, fake_f, k=pr_k)
  return dict(
      fd_name=CLASSIFIERS[config.data.name][0], fd=metrics.frechet_distance_of(fake_f, train_f),
      fd_floor=metrics.frechet_distance_of(test_f, train_f[:num_real]),
      inception_score=metrics.inception_score(fake_p), inception_score_real=metrics.inception_score(test_p),
      precision=precision, recall=recall, pr_k=pr_k, num=num, num_real_test=num_real,
      sampler_options=sampler_options, sample_seconds=sample_s,
      classifier_test_accuracy=info['test_accuracy'],
      note=f"{CLASSIFIERS[config.data.name][0]} uses jaxgen's own {config.data.name} classifier features; "
           'it is not Inception FID')


# ------------------------------------------------------------------------------------------- likelihoods

def _family_eval(config, workdir: str, state, seed: int) -> dict[str, float]:
  """The family's eval_step averaged over the test batches by the trainer (state on the load_state mesh)."""
  import ml_collections
  from jaxgen.train import sharding, trainer
  family = families.build(config, workdir)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  eval_step = trainer.jit_eval_step(family, jax.tree.map(lambda x: x.sharding, state), mesh)
  return trainer.evaluate(eval_step, state, config, workdir, mesh, jax.random.key(seed))


def vae_nll(config, workdir: str, state, k: int, examples: int, seed: int) -> dict:
  """NLL = -log p(x) <= -L_k, the IWAE bound with k samples (jaxgen.families.vae.iwae_bound, through the
  family's eval_step): an upper bound on the test NLL that tightens as k grows."""
  if k < 1 or examples < 1:
    raise UserError(f'--iwae_k={k} and --iwae_examples={examples} must be >= 1')
  config = config.copy_and_resolve_references()
  config.model.iwae_k, config.data.eval_examples = k, examples
  test_size = tfds.builder(config.data.name, data_dir=config.data.get('data_dir')).info.splits['test'].num_examples
  t0 = time.time()
  result = _family_eval(config, workdir, state, seed)
  return dict(iwae_k=k, iwae_examples=min(examples, test_size) // config.batch_size * config.batch_size,
              iwae_nll=result['eval/iwae_nll'], iwae_bits_per_dim=result['eval/iwae_bits_per_dim'],
              neg_elbo=result['eval/neg_elbo'], iwae_seconds=time.time() - t0)


def gpt_metrics(config, family, state, workdir: str, num: int, seed: int) -> dict:
  from jaxgen.data import tokenizers
  loss = _family_eval(config, workdir, state, seed)['eval/loss']
  val_ids = np.load(os.path.join(workdir, 'data', 'val.npy'), mmap_mode='r')
  chars_per_token = len(tokenizers.load(workdir).decode(np.asarray(val_ids))) / len(val_ids)
  s = config.sample
  options = dict(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
  texts = family.make_sampler(state)(jax.random.key(seed), num=num, **options)
  return dict(val_loss=loss, perplexity=math.exp(loss), bits_per_char=metrics.bits_per_char(loss, chars_per_token),
              chars_per_token=chars_per_token, val_windows=config.data.eval_examples, num=num, sample_options=options,
              **{f'distinct_{n}': metrics.distinct_n(texts, n) for n in range(1, 5)})


# ------------------------------------------------------------------------------------------- CLI

def evaluate_workdir(workdir: str, num: int | None = None, *, seed: int = 0, batch: int = 250, pr_k: int = 3,
                     cache_dir: str | None = None, iwae_k: int = 1000, iwae_examples: int = 10_000,
                     sampler_options: dict | None = None) -> dict:
  """All metrics of the workdir's family at its latest checkpoint; appends the record to DIR/eval.jsonl."""
  import jaxgen
  if num is not None and num < 2:
    raise UserError(f'--num={num} must be >= 2')
  config, family, state = jaxgen.load_state(workdir)
  data.setup(config, workdir)
  record = dict(workdir=os.path.abspath(workdir), step=int(state.step), family=config.family,
                dataset=config.data.name, time=time.strftime('%Y-%m-%dT%H:%M:%S'))
  if config.family == 'gpt':
    record.update(gpt_metrics(config, family, state, workdir, num or 20, seed))
  else:
    sampler_options = sampler_options or {}
    if sampler_options and config.family not in ('ddpm', 'ldm'):
      raise UserError(f'--{next(iter(sampler_options))} applies to diffusion models only')
    record.update(image_metrics(config, family, state, num or 10_000, batch, seed, pr_k,
                                cache_dir or classifier_dir(config.data.get('data_dir')), sampler_options))
    if config.family == 'vae':
      record.update(vae_nll(config, workdir, state, iwae_k, iwae_examples, seed))
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
  flags.DEFINE_integer('num', None, 'generated samples (default: 10000 images, 20 texts)')
  flags.DEFINE_bool('train-classifier', False, 'train (or retrain) and cache the feature classifier of --dataset')
  flags.DEFINE_string('dataset', 'fashion_mnist', 'with --train-classifier: fashion_mnist | mnist | cifar10')
  flags.DEFINE_string('cache_dir', None,
                      'where classifiers are cached (default: <TFDS data dir>/jaxgen_classifiers)')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir for --train-classifier (default: TFDS default)')
  flags.DEFINE_integer('iwae_k', 1000, 'VAE: importance samples per test example')
  flags.DEFINE_integer('iwae_examples', 10_000, 'VAE: test examples for the IWAE NLL')
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
    train_classifier(FLAGS.dataset, FLAGS.cache_dir or classifier_dir(FLAGS.data_dir), FLAGS.data_dir, FLAGS.seed)
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
