"""Text-to-image evaluation on fashion_mnist_scenes: an attribute classifier, prompt accuracy, the evaluator.

The attribute classifier is jaxgen.models.classifier.Classifier (CLASSIFIER) applied to the 16x16 box of each of
scenes.POSITIONS (shared weights), with HEAD logits per box: its content (empty, or one of the 10 items) and its
colour (learned only where an item is). It is trained once on the real train scenes (CLASSIFIER_STEPS of batch
128) with every item re-tinted in a random colour (each colour has a full channel, so the largest channel is the
item's grey image), so that held-out (item, colour) pairs are recognised as well as seen ones; it is cached beside
the data (<TFDS data dir>/jaxgen_classifiers), as note_quality's pitch classifier is. The boxes' penultimate
features, concatenated, define FD-scenes.

prompt_accuracy: an image is right for its prompt when everything the prompt names (scenes.parse_prompt) is
recognised: each item at its named position (anywhere, where none is named), its colour there, and the number of
items. Per attribute: the share of the named items, colours and positions recognised, and of the counts.

text_to_image_quality (evaluator): ctx.num (default 500) test captions, half of scenes without and half with a
held-out (item, colour) pair; one sample per caption at each guidance weight (ctx.options['guidances'], else
--guidance, else GUIDANCES): prompt accuracy seen / held-out and FD-scenes against the real images of as many other
test scenes of the same mix; and the real floor: the same figures for the real images of those captions.
"""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import evaluators, metrics
from jaxgen.config import base_config
from jaxgen.data import captions, scenes
from jaxgen.errors import UserError
from jaxgen.models.classifier import Classifier

DATASET = 'fashion_mnist_scenes'
CLASSIFIER = dict(features=(16, 32), hidden=64)
CLASSIFIER_STEPS = 1_000                         # at batch 128: 2.1 epochs of the 60000 train scenes
CLASSIFIER_LR = 3e-3
CONTENTS = len(scenes.ITEMS) + 1                 # per position: empty (0) or item k (k + 1)
HEAD = CONTENTS + len(scenes.COLORS)             # logits per position: its content, then its colour
GUIDANCES = (1.0, 3.0, 5.0)


def targets(items, colors, positions) -> tuple[np.ndarray, np.ndarray]:
  """Scene slots (B, 2) -> per position (B, P): content (0 empty, 1 + item) and colour (-1 where empty)."""
  at = np.asarray(positions)[:, None, :] == np.arange(len(scenes.POSITIONS))[None, :, None]   # (B, P, 2)
  content = np.sum(np.where(at, np.asarray(items)[:, None, :] + 1, 0), -1)
  color = np.sum(np.where(at, np.asarray(colors)[:, None, :] + 1, 0), -1) - 1
  return content, color


def _criterion(logits, batch):
  """Content cross-entropy at every position + colour cross-entropy at the positions holding an item."""
  import optax
  logits = logits.reshape(-1, len(scenes.POSITIONS), HEAD)                      # (B, P, HEAD)
  content = optax.softmax_cross_entropy_with_integer_labels(logits[..., :CONTENTS], batch['content']).mean()
  has = batch['color'] >= 0
  color = optax.softmax_cross_entropy_with_integer_labels(logits[..., CONTENTS:], jnp.maximum(batch['color'], 0))
  return content + jnp.sum(color * has) / jnp.maximum(jnp.sum(has), 1)


def boxes(x):
  """Scenes (B, 32, 32, 3) in [0, 1] -> the box of each position (B * P, 16, 16, 4), P = len(POSITIONS) per scene,
  with the largest channel first (the item's grey image, whatever its colour) and then RGB."""
  x = jnp.concatenate([x.max(-1, keepdims=True), x], -1)
  size = scenes.ITEM_SIZE
  return jnp.stack([x[:, r:r + size, c:c + size] for r, c in scenes.BOXES], 1).reshape(-1, size, size, 4)


@functools.cache
def _model():
  """(Classifier of one box, jitted apply(params, scenes in [0, 1]) -> (logits (B, P HEAD), features (B, P D)))."""
  model = Classifier(num_classes=HEAD, **CLASSIFIER)

  def apply(params, x):
    logits, features = model.apply({'params': params}, boxes(x))
    return logits.reshape(len(x), -1), features.reshape(len(x), -1)
  return model, jax.jit(apply)


def predict(images, params, batch: int = 250) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """uint8 images (N, 32, 32, 3) -> content (N, P), colour (N, P) and features (N, P D)."""
  features, probs = evaluators.features_and_probs(_model()[1], params, np.asarray(images, np.float32) / 255, batch)
  probs = probs.reshape(len(probs), len(scenes.POSITIONS), HEAD)  # one softmax over all: argmax per head is the logits'
  return probs[..., :CONTENTS].argmax(-1), probs[..., CONTENTS:].argmax(-1), features


def recolor(images, positions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Scenes uint8 (B, 32, 32, 3) with every item re-tinted in a random colour: (images, colours (B, 2), -1 empty)."""
  images, colors = images.copy(), np.full(positions.shape, -1)
  rgb = np.array(list(scenes.COLORS.values()))
  for row, slot in zip(*np.nonzero(positions >= 0)):
    r, c = scenes.BOXES[positions[row, slot]]
    box = images[row, r:r + scenes.ITEM_SIZE, c:c + scenes.ITEM_SIZE]
    colors[row, slot] = rng.integers(len(rgb))
    box[:] = np.round(box.max(-1, keepdims=True) * rgb[colors[row, slot]] / 255)    # grey level x colour
  return images, colors


def score(content, color, prompts) -> dict:
  """prompt_accuracy and per-attribute accuracies of predicted contents and colours (N, P) for N prompts."""
  right = {'item': [], 'color': [], 'position': [], 'count': []}
  whole = []
  for c, col, prompt in zip(content, color, prompts):
    scene = scenes.parse_prompt(prompt)
    checks = [('count', int(np.sum(c > 0)) == scene['count'])]
    for item, want, position in zip(scene['items'], scene['colors'], scene['positions']):
      places = [position] if position is not None else np.flatnonzero(c == item + 1)
      checks.append(('item', any(c[p] == item + 1 for p in places)))
      if position is not None:
        checks.append(('position', bool(c[position] > 0)))
      if want is not None:
        checks.append(('color', any(c[p] > 0 and col[p] == want for p in places)))
    for k, ok in checks:
      right[k].append(ok)
    whole.append(all(ok for _, ok in checks))
  return dict(prompt_accuracy=float(np.mean(whole)) if whole else None,
              **{f'{k}_accuracy': float(np.mean(v)) if v else None for k, v in right.items()})


def prompt_accuracy(images, prompts: list[str], classifier_params, batch: int = 250) -> dict:
  """The share of images (N, 32, 32, 3) uint8 showing everything their prompt names, and per attribute (score)."""
  content, color, _ = predict(images, classifier_params, batch)
  return score(content, color, prompts)


def _scenes_config(config, batch_size: int):
  """A config reading fashion_mnist_scenes' captions from config's data dir."""
  c = base_config()
  c.data.modality, c.data.name, c.batch_size = 'captioned', DATASET, batch_size
  c.data.data_dir, c.data.manual_dir = config.data.get('data_dir'), config.data.get('manual_dir')
  return c


def real_scenes(config, split: str) -> dict:
  """All of a split in order: image uint8 (N, 32, 32, 3), caption (N,) str and the scene attributes."""
  batches = list(captions.ordered_batches(config, split))
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _subsets(content, color, prompts, heldout, suffix: str) -> dict:
  """score of the seen and of the held-out prompts, keyed <figure>_<seen|heldout>_<suffix>."""
  out = {}
  for subset, rows in (('seen', ~heldout), ('heldout', heldout)):
    for k, v in score(content[rows], color[rows], prompts[rows]).items():
      out[f'{k}_{subset}_{suffix}'] = v
  return out


def attribute_classifier(config, cache_dir: str):
  """(params, info) of the attribute classifier; trained once on the real train scenes and cached."""
  architecture = dict(CLASSIFIER, features=list(CLASSIFIER['features']), input='boxes of max channel + RGB, recolored',
                      positions=list(scenes.POSITIONS), head=HEAD, train_steps=CLASSIFIER_STEPS,
                      learning_rate=CLASSIFIER_LR)
  name = f'attributes_{DATASET}'
  cached = evaluators.load_classifier_params(cache_dir, name, architecture)
  if cached is not None:
    return cached
  print(f'no cached attribute classifier for {DATASET} in {cache_dir}: training it once '
        f'({CLASSIFIER_STEPS} steps of batch 128)')
  dconfig = _scenes_config(config, 128)

  def batches():
    rng = np.random.default_rng(0)
    for b in captions.load(dconfig, '').train_iterator():
      image, colors = recolor(b['image'], b['positions'], rng)
      content, color = targets(b['items'], colors, b['positions'])
      yield {'image': image, 'content': content, 'color': color}

  start = time.time()
  params = evaluators.fit_classifier(_model()[0], boxes(np.zeros((1, scenes.SIZE, scenes.SIZE, 3), np.float32)),
                                     batches(), CLASSIFIER_STEPS, inputs=lambda b: boxes(b['image'] / 255.0),
                                     criterion=_criterion, learning_rate=CLASSIFIER_LR)
  train_s = time.time() - start
  test = real_scenes(dconfig, 'test')
  content, color, _ = predict(test['image'], params)
  want_content, want_color = targets(test['items'], test['colors'], test['positions'])
  occupied = want_content > 0
  info = dict(dataset=DATASET, architecture=architecture, train_seconds=train_s, test_examples=len(content),
              test_content_accuracy=float(np.mean(content == want_content)),
              test_color_accuracy=float(np.mean((color == want_color)[occupied])),
              test_scene_accuracy=float(np.mean(np.all((content == want_content)
                                                       & ((color == want_color) | ~occupied), -1))),
              **{k: v for k, v in _subsets(content, color, test['caption'], test['heldout'], 'real').items()
                 if k.startswith('prompt_accuracy')})
  evaluators.save_classifier(cache_dir, name, params, info)
  print(f'attribute classifier: scene accuracy {100 * info["test_scene_accuracy"]:.2f}% on the test scenes '
        f'({train_s:.0f} s)')
  return params, info


def _generate(sampler, prompts: list[str], batch: int, seed: int, **options) -> np.ndarray:
  """One image per prompt from sampler calls of a fixed size `batch` (the last call padded: one compiled shape)."""
  out = []
  for i in range(0, len(prompts), batch):
    chunk = prompts[i:i + batch]
    out.append(np.asarray(sampler(jax.random.fold_in(jax.random.key(seed), i),
                                  prompt=chunk + chunk[:1] * (batch - len(chunk)), num=batch, **options)))
  return np.concatenate(out)[:len(prompts)]


def _evaluated_and_reference(heldout: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the first num test scenes, half with a held-out pair, and of the next ones of the same mix."""
  seen, held = np.flatnonzero(~heldout), np.flatnonzero(heldout)
  n_held = min(num // 2, len(held) // 2)
  n_seen = min(num - n_held, len(seen) // 2)
  return (np.concatenate([seen[:n_seen], held[:n_held]]),
          np.concatenate([seen[n_seen:2 * n_seen], held[n_held:2 * n_held]]))


def text_to_image_quality(ctx: evaluators.Context) -> dict:
  """Prompt accuracy (seen / held-out) and FD-scenes of samples per guidance weight, and the real floors."""
  if ctx.config.data.name != DATASET:
    raise UserError(f'text_to_image_quality reads the attributes of {DATASET} scenes; this run trained on '
                    f'{ctx.config.data.name}')
  num = ctx.num or 500
  batch = min(ctx.batch, num)
  options = dict(ctx.options.get('sampler_options', {}))
  guidances = ctx.options.get('guidances') or ((options['guidance'],) if 'guidance' in options else GUIDANCES)
  options.pop('guidance', None)
  evaluators.check_sampler_options(ctx.sampler, dict(options, prompt=None, guidance=None))
  cache_dir = ctx.options.get('cache_dir') or evaluators.classifier_dir(ctx.config.data.get('data_dir'))
  params, info = attribute_classifier(ctx.config, cache_dir)
  test = real_scenes(_scenes_config(ctx.config, batch), 'test')
  evaluated, reference = _evaluated_and_reference(test['heldout'], num)
  prompts, heldout = test['caption'][evaluated], test['heldout'][evaluated]
  content, color, real_f = predict(test['image'][evaluated], params, batch)
  _, _, reference_f = predict(test['image'][reference], params, batch)
  out = dict(num=len(evaluated), num_heldout=int(heldout.sum()), guidances=list(guidances), sampler_options=options,
             fd_name='FD-scenes', fd_floor=metrics.frechet_distance_of(real_f, reference_f),
             **_subsets(content, color, prompts, heldout, 'real'),
             classifier_test_scene_accuracy=info['test_scene_accuracy'])
  for w in guidances:
    start = time.time()
    fake = _generate(ctx.sampler, list(prompts), batch, ctx.seed, guidance=w, **options)
    out[f'sample_seconds_w{w:g}'] = time.time() - start
    fake_content, fake_color, fake_f = predict(fake, params, batch)
    out[f'fd_w{w:g}'] = metrics.frechet_distance_of(fake_f, reference_f)
    out |= _subsets(fake_content, fake_color, prompts, heldout, f'w{w:g}')
  out['note'] = "FD-scenes uses jaxgen's own attribute classifier's features; compare runs at the same num"
  return out
