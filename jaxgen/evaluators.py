"""Evaluators a family names in `Family.evaluators`, run by `python -m jaxgen.eval` with a `Context`.

An evaluator is fn(ctx: Context) -> dict of JSON-able figures. The shared ones here:
  image_quality  FD-FMNIST / FD-MNIST / FD-CIFAR10: Fréchet distance between generated and real *train* images in
                 the penultimate feature space of a small classifier jaxgen trains itself (jaxgen.models.classifier),
                 NOT Inception FID (not comparable with published FIDs; compare runs at the same N); fd_floor, the
                 same FD between N real *test* and N real train images (what a perfect model would score);
                 inception_score (and of the test images) exp(E KL(p(y|x) || p(y))) with the classifier; k-NN
                 precision and recall in the same features (Kynkäänniemi et al. 2019), against the train images.
  text_diversity distinct_1..4 (unique / total word n-grams) across ctx.num samples of a text sampler
The classifiers live in <TFDS data dir>/jaxgen_classifiers, trained once on first use.
"""
import inspect
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import tensorflow_datasets as tfds
from flax import traverse_util

from jaxgen import data, metrics
from jaxgen.data import images as image_source
from jaxgen.config import base_config
from jaxgen.errors import UserError


class Context(NamedTuple):
  """What an evaluator gets: the restored run, its sampler, the test split and the CLI's options."""
  config: Any
  spec: Any
  workdir: str
  state: Any
  sampler: Callable
  test_metrics: Callable[[Any], dict]     # config -> {metric: mean} of eval_step over that config's test split
  test_batches: Callable[[], Any]         # the run's test batches (this process's rows), as the trainer reads them
  num: int | None                         # samples asked for (None: the evaluator's default)
  batch: int                              # samples per sampler / classifier call
  seed: int
  options: dict                           # pr_k, iwae_k, iwae_examples, cache_dir, sampler_options


def check_sampler_options(sampler, options: dict, what: str = '') -> None:
  """Options the sampler does not take are one error line naming those it does (a sampler taking **options
  checks its own)."""
  params = inspect.signature(sampler).parameters
  if any(p.kind is p.VAR_KEYWORD for p in params.values()):
    return
  for name in options:
    if name not in params:
      raise UserError(f'--{name} does not apply to this model{what}; its options are '
                      + ', '.join(f'--{p}' for p in params if p != 'rng'))


# dataset -> (metric name, classifier architecture and training steps at batch 128)
CLASSIFIERS = {
    'fashion_mnist': ('FD-FMNIST', dict(features=(32, 64), hidden=128), 2_000),
    'mnist': ('FD-MNIST', dict(features=(32, 64), hidden=128), 1_000),
    'cifar10': ('FD-CIFAR10', dict(features=(64, 128, 256), hidden=256), 10_000),
}


# ------------------------------------------------------------------------------------------- classifier

def _data_config(dataset: str, data_dir: str | None, batch_size: int, eval_examples: int = 10_000):
  """A config for jaxgen.data that reads the image dataset `dataset` with pixels in [0, 1]."""
  config = base_config()
  config.data.modality, config.data.name, config.data.data_dir = 'image', dataset, data_dir
  config.data.pixel_range = (0.0, 1.0)
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


def load_classifier_params(cache_dir: str, dataset: str, architecture: dict | None = None):
  """(params, info) from the cache, or None when there is none for this architecture (default: the image
  classifier's of `dataset`, CLASSIFIERS)."""
  npz, info_path = _classifier_paths(cache_dir, dataset)
  if not (os.path.exists(npz) and os.path.exists(info_path)):
    return None
  with open(info_path) as f:
    info = json.load(f)
  if info.get('architecture') != (architecture or _architecture(dataset)):
    return None
  with np.load(npz, allow_pickle=False) as flat:
    return traverse_util.unflatten_dict({k: flat[k] for k in flat.files}, sep='/'), info


def _architecture(dataset: str) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in CLASSIFIERS[dataset][1].items()}


def _model(dataset: str, num_classes: int = 10):
  from jaxgen.models.classifier import Classifier
  return Classifier(num_classes=num_classes, **CLASSIFIERS[dataset][1])


def label_loss(logits, batch):
  """Mean softmax cross-entropy of logits (B, K) for the classes batch['label'] (B,)."""
  import optax
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()


def fit_classifier(model, example, batches, num_steps: int, seed: int = 0, inputs=lambda batch: batch['image'],
                   criterion=label_loss, learning_rate: float = 1e-3):
  """Params of `model` (x -> (logits, features)) minimising criterion(logits of inputs(batch), batch) (default:
  softmax cross-entropy to batch['label']), over num_steps batches of the iterator `batches` (AdamW, cosine decay
  from learning_rate, weight decay 1e-4); `example` is one input (1, ...) for init. inputs and criterion run inside
  the jitted step (e.g. waveforms -> log-mel)."""
  import optax
  from jaxgen.train import optim
  hparams = base_config().optim
  hparams.schedule, hparams.weight_decay, hparams.warmup_steps = 'cosine', 1e-4, min(100, num_steps // 10)
  tx = optim.make_optimizer(learning_rate, hparams, num_steps)
  params = jax.jit(model.init)(jax.random.key(seed), example)['params']
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, batch):
    def loss_fn(params):
      logits, _ = model.apply({'params': params}, inputs(batch))
      return criterion(logits, batch)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for step in range(num_steps):
    params, opt_state, loss = train_step(params, opt_state, next(batches))
    if (step + 1) % 500 == 0:
      print(f'  step {step + 1}: loss {float(loss):.4f}')
  return params


def train_classifier(dataset: str, cache_dir: str, data_dir: str | None, seed: int = 0) -> dict:
  """Train the feature classifier on the train split (AdamW, cosine decay), report test accuracy, cache it."""
  if dataset not in CLASSIFIERS:
    raise UserError(f'no classifier for dataset {dataset!r}; choose one of {sorted(CLASSIFIERS)}')
  num_steps = CLASSIFIERS[dataset][2]
  config = _data_config(dataset, data_dir, batch_size=128)
  config.seed = seed
  dataset_ = data.load(config, cache_dir)
  spec = dataset_.spec
  model = _model(dataset, spec.num_classes)
  print(f'training the {dataset} feature classifier: {num_steps} steps of batch {config.batch_size}')
  start = time.time()
  params = fit_classifier(model, np.zeros((1, *spec.image_shape), np.float32), dataset_.train_iterator(),
                          num_steps, seed)
  apply = jitted_apply(model)
  correct = total = 0
  for batch in data.load(_data_config(dataset, data_dir, batch_size=500), cache_dir).eval_batches():
    logits, _ = apply(params, batch['image'])
    correct += int(np.sum(np.argmax(logits, -1) == batch['label']))
    total += len(batch['label'])
  info = dict(dataset=dataset, architecture=_architecture(dataset), num_classes=spec.num_classes,
              image_shape=list(spec.image_shape), train_steps=num_steps, batch_size=config.batch_size,
              test_accuracy=correct / total, test_examples=total, train_seconds=time.time() - start)
  save_classifier(cache_dir, dataset, params, info)
  print(f'{dataset} classifier: test accuracy {100 * info["test_accuracy"]:.2f}% on {total} examples; '
        f'cached in {_classifier_paths(cache_dir, dataset)[0]}')
  return info


def jitted_apply(model):
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
  apply = jitted_apply(_model(dataset, info['num_classes']))
  return lambda x, batch: features_and_probs(apply, params, x, batch), info


def features_and_probs(apply, params, x: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(features (N, D), softmax probabilities (N, K)) of apply(params, x) -> (logits, features), in calls of
  a fixed size `batch` (the last one zero padded: one compiled shape)."""
  feats, probs = [], []
  for i in range(0, len(x), batch):
    chunk = x[i:i + batch]
    padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
    logits, f = jax.device_get(apply(params, padded))
    feats.append(f[:len(chunk)])
    logits = logits[:len(chunk)].astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))                # softmax
    probs.append(p / p.sum(-1, keepdims=True))
  return np.concatenate(feats), np.concatenate(probs)



# ------------------------------------------------------------------------------------------- image metrics

def real_images(dataset: str, data_dir: str | None, split: str, num: int, batch: int, seed: int) -> np.ndarray:
  """The first `num` test images, or `num` shuffled train images, float32 in [0, 1] (N, H, W, C)."""
  batch = min(batch, num)                 # eval batches drop a partial batch: never ask for more than num
  dconfig = _data_config(dataset, data_dir, batch, eval_examples=num)
  dconfig.seed = seed
  source = data.load(dconfig, '')
  if split == 'test':                     # in order, the last batch partial: a small test split still counts
    batches, have = [], 0
    for b in image_source.ordered_batches(dconfig, 'test'):
      if have >= num:
        break
      batches.append(b)
      have += len(b['label'])
  else:
    it = source.train_iterator()
    batches = [next(it) for _ in range(-(-num // batch))]
  return np.concatenate([b['image'] for b in batches])[:num]


def generated_images(sampler, num: int, batch: int, seed: int, options: dict) -> np.ndarray:
  """num samples, float32 in [0, 1], from sampler calls of a fixed size `batch` (compiled once)."""
  out = [np.asarray(sampler(jax.random.fold_in(jax.random.key(seed), i), num=batch, **options))
         for i in range(-(-num // batch))]
  return np.concatenate(out)[:num].astype(np.float32) / 255.0


def image_quality(ctx: Context, dataset: str | None = None) -> dict:
  """FD, IS and precision/recall of ctx.num (default 10000) samples against `dataset` (default: the run's)."""
  dataset = dataset or ctx.spec.name
  data_dir = ctx.config.data.get('data_dir')
  num, batch, sampler_options = ctx.num or 10_000, ctx.batch, ctx.options.get('sampler_options', {})
  check_sampler_options(ctx.sampler, sampler_options)
  if batch < 1 or num < 2:
    raise UserError(f'--num={num} must be >= 2 and --batch={batch} >= 1')
  batch = min(batch, num)                 # --num below --batch: one smaller call, not none
  cache_dir = ctx.options.get('cache_dir') or classifier_dir(data_dir)
  features_and_probs, info = classifier(dataset, cache_dir, data_dir)
  train_f, _ = features_and_probs(real_images(dataset, data_dir, 'train', num, batch, ctx.config.seed), batch)
  test_images = real_images(dataset, data_dir, 'test', num, batch, ctx.config.seed)
  num_real = len(test_images)             # min(num, size of the test split)
  test_f, test_p = features_and_probs(test_images, batch)
  t0 = time.time()
  fake = generated_images(ctx.sampler, num, batch, ctx.seed, sampler_options)
  sample_s = time.time() - t0
  fake_f, fake_p = features_and_probs(fake, batch)
  pr_k = ctx.options.get('pr_k', 3)
  precision, recall = metrics.precision_recall(train_f, fake_f, k=pr_k)
  return dict(
      fd_name=CLASSIFIERS[dataset][0], fd=metrics.frechet_distance_of(fake_f, train_f),
      fd_floor=metrics.frechet_distance_of(test_f, train_f[:num_real]),
      inception_score=metrics.inception_score(fake_p), inception_score_real=metrics.inception_score(test_p),
      precision=precision, recall=recall, pr_k=pr_k, num=num, num_real_test=num_real,
      sampler_options=sampler_options, sample_seconds=sample_s,
      classifier_test_accuracy=info['test_accuracy'],
      note=f"{CLASSIFIERS[dataset][0]} uses jaxgen's own {dataset} classifier features; it is not Inception FID")


# ------------------------------------------------------------------------------------------- text

def text_diversity(ctx: Context, **sampler_options) -> dict:
  """distinct_1..4 across ctx.num (default 20) texts drawn with `sampler_options`."""
  num = ctx.num or 20
  texts = ctx.sampler(jax.random.key(ctx.seed), num=num, **sampler_options)
  return dict(num=num, sample_options=sampler_options,
              **{f'distinct_{n}': metrics.distinct_n(texts, n) for n in range(1, 5)})
