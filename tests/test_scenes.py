"""Captioned scenes: the fashion_mnist_scenes builder, prompt parsing, the captioned source, prompt accuracy.

The builder runs on tiny synthetic Fashion-MNIST idx files (every pixel 1..255, so a tinted item fills its box).
"""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxgen import evaluators, scene_eval
from jaxgen.config import base_config
from jaxgen.data import captions, images, local_fashion_mnist, scenes
from jaxgen.errors import UserError
from tests.test_data_images import _write_idx

NUM = {'train': 40, 'test': 30}
T = 80


def _config(data_dir, manual_dir, modality='captioned'):
  c = base_config()
  c.data.modality, c.data.name, c.batch_size = modality, 'fashion_mnist_scenes', 4
  c.data.data_dir, c.data.manual_dir = str(data_dir), str(manual_dir)
  return c


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """Two preparations of the scenes from the same synthetic Fashion-MNIST: their configs."""
  manual = tmp_path_factory.mktemp('fmnist')
  rng = np.random.default_rng(0)
  for split, n in NUM.items():
    pixels, labels = rng.integers(1, 256, (n, 28, 28), np.uint8), (np.arange(n) % 10).astype(np.uint8)
    for name, array in zip(local_fashion_mnist.FILES[split], (pixels, labels)):
      _write_idx(manual / name, array)
  configs = [_config(tmp_path_factory.mktemp('tfds'), manual) for _ in range(2)]
  for c in configs:
    images.prepare(c)
  return configs


def _examples(config, split):
  return list(tfds.data_source('fashion_mnist_scenes', split=split, data_dir=config.data.data_dir, download=False))


def _text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def _attributes(e) -> dict:
  n = int(e['count'])
  return dict(items=list(e['items'][:n]), colors=list(e['colors'][:n]), positions=list(e['positions'][:n]), count=n)


# ------------------------------------------------------------------------------------------- builder

def test_builder_is_deterministic_and_captions_describe_the_pixels(prepared):
  for split in NUM:
    first, second = (_examples(c, split) for c in prepared)
    assert len(first) == NUM[split]
    for a, b in zip(first, second):
      assert a['image'].tobytes() == b['image'].tobytes() and _text(a['caption']) == _text(b['caption'])
      assert all(np.array_equal(a[k], b[k]) for k in ('items', 'colors', 'positions', 'count', 'heldout'))
    for e in first:
      attributes = _attributes(e)
      assert scenes.parse_prompt(_text(e['caption'])) == attributes and e['label'] == e['items'][0]
      assert all(e[k][1] == -1 for k in ('items', 'colors', 'positions')) == (e['count'] == 1)
      image, outside = e['image'], np.ones((32, 32), bool)
      for color, position in zip(attributes['colors'], attributes['positions']):
        row, col = scenes.BOXES[position]
        box = image[row:row + 16, col:col + 16]
        lit = np.array(list(scenes.COLORS.values())[color]) == 255
        assert np.all(box[..., lit] > 0) and np.all(box[..., ~lit] == 0)     # the tint's channels, all of the box
        assert np.all(box[..., lit] == box[..., lit][..., :1])               # in equal parts
        outside[row:row + 16, col:col + 16] = False
      assert not image[outside].any()                                        # black elsewhere


def test_heldout_pairs_never_appear_in_train_and_are_flagged_in_test(prepared):
  assert sorted(item for item, _ in scenes.HELDOUT) == list(range(10))        # one colour held out per item
  assert sorted(color for _, color in scenes.HELDOUT) == sorted(list(range(5)) * 2)
  labels = np.random.default_rng(1).integers(0, 10, 3_000)
  train = {pair for s in scenes.scene_table(labels, 'train') for pair in zip(s.items, s.colors)}
  assert not train & scenes.HELDOUT and len(train) == 50 - len(scenes.HELDOUT)  # every other pair is seen
  test = scenes.scene_table(labels, 'test')
  assert 0.2 < np.mean([s.heldout for s in test]) < 0.35
  for split in NUM:
    for e in _examples(prepared[0], split):
      pairs = set(zip(*(_attributes(e)[k] for k in ('items', 'colors'))))
      assert bool(e['heldout']) == bool(pairs & scenes.HELDOUT)
      assert not (split == 'train' and e['heldout'])
  assert any(e['heldout'] for e in _examples(prepared[0], 'test'))


def test_render_tints_each_grey_item_in_its_box():
  grey = np.full((28, 28), 200, np.uint8)
  image = scenes.render([grey, grey], [0, 3], [2, 3])                       # red at the top, yellow at the bottom
  np.testing.assert_array_equal(image[0:16, 8:24], np.broadcast_to([200, 0, 0], (16, 16, 3)))
  np.testing.assert_array_equal(image[16:32, 8:24], np.broadcast_to([200, 200, 0], (16, 16, 3)))
  assert not image[:, :8].any() and not image[:, 24:].any()


def test_without_local_files_the_items_come_from_tfds_fashion_mnist(tmp_path, monkeypatch):
  monkeypatch.setattr(images, '_online', lambda builder: True)
  examples = _Source({'image': np.full((28, 28, 1), i, np.uint8), 'label': np.int64(i)} for i in range(3))
  with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kw: examples):
    pixels, labels = scenes.fashion_mnist('train', str(tmp_path), str(tmp_path / 'tfds'))
  assert pixels.shape == (3, 28, 28) and list(labels) == [0, 1, 2] and pixels[2].min() == 2
  monkeypatch.setattr(images, '_online', lambda builder: False)
  with pytest.raises(UserError, match='no network.*apt-get install dataset-fashion-mnist'):
    scenes.fashion_mnist('train', str(tmp_path), str(tmp_path / 'tfds'))


# ------------------------------------------------------------------------------------------- prompts

def test_parse_prompt_reads_every_template_and_synonym():
  rng = np.random.default_rng(0)
  for s in scenes.scene_table(rng.integers(0, 10, 2_000), 'test'):
    assert scenes.parse_prompt(s.caption) == dict(items=list(s.items), colors=list(s.colors),
                                                  positions=list(s.positions), count=len(s.items))
  for item, phrases in enumerate(scenes.ITEM_PHRASES):
    for phrase in phrases:
      for position, places in enumerate(scenes.POSITION_PHRASES):
        for place in places:
          assert scenes.parse_prompt(f'a white {phrase} {place}') == dict(items=[item], colors=[4],
                                                                           positions=[position], count=1)
      for position, relations in enumerate(scenes.RELATION_PHRASES):
        for relation in relations:
          assert scenes.parse_prompt(f'a red bag {relation} a blue {phrase}')['positions'] == [
              position, (1, 0, 3, 2)[position]]
  assert scenes.parse_prompt('A Red Bag!') == dict(items=[8], colors=[0], positions=[None], count=1)
  assert scenes.parse_prompt('a sneaker') == dict(items=[7], colors=[None], positions=[None], count=1)


@pytest.mark.parametrize('prompt,match', [
    ('a purple bag on the left', r"unknown word\(s\) 'purple' in the prompt .*; the known words are: a above"),
    ('a red on the left', 'a colour with no item'),
    ('a bag on the left at the top', 'cannot tell which position goes with which item'),
    ('a bag, a coat and a dress', 'names 3 items'),
])
def test_unreadable_prompts_are_one_line_user_errors(prompt, match):
  with pytest.raises(UserError, match=match) as error:
    scenes.parse_prompt(prompt)
  assert '\n' not in str(error.value)


# ------------------------------------------------------------------------------------------- captioned source

def char_tokenize(texts):
  """Bytes of each text, zero padded to T: (tokens int32 (B, T), mask bool (B, T))."""
  tokens = np.zeros((len(texts), T), np.int32)
  for row, text in enumerate(texts):
    tokens[row, :len(text)] = np.frombuffer(text.encode()[:T], np.uint8)
  return tokens, tokens > 0


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_captioned_batches_carry_tokens_and_attributes_and_resume(prepared):
  config = prepared[0]
  dataset = captions.load(config, '', tokenize=char_tokenize)
  spec = dataset.spec
  assert (spec.modality, spec.image_shape, spec.num_classes, spec.max_tokens) == ('captioned', (32, 32, 3), 10, T)
  batch = next(dataset.train_iterator())
  assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['tokens'].dtype == np.int32 and batch['mask'].dtype == bool and batch['tokens'].shape == (4, T)
  assert batch['items'].dtype == np.int32 and batch['heldout'].dtype == bool
  for row in range(4):
    text = bytes(batch['tokens'][row][batch['mask'][row]].astype(np.uint8)).decode()
    n = batch['count'][row]
    assert scenes.parse_prompt(text) == dict(items=list(batch['items'][row, :n]), colors=list(batch['colors'][row, :n]),
                                             positions=list(batch['positions'][row, :n]), count=n)
  it = dataset.train_iterator()
  first = _take(it, 12)[0]                                        # 12 batches: into the second epoch of 10
  assert all(np.array_equal(first[k], batch[k]) for k in batch)    # the same order again
  state = it.get_state()
  expected = _take(it, 4)
  fresh = captions.load(config, '', tokenize=char_tokenize).train_iterator()
  fresh.set_state(state)
  for got, want in zip(_take(fresh, 4), expected):
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_raw_captions_and_the_image_view_of_the_scenes(prepared):
  config = prepared[0]
  batch = next(captions.load(config, '').train_iterator())
  assert batch['caption'].dtype == object and 'tokens' not in batch
  assert [scenes.parse_prompt(t)['count'] for t in batch['caption']] == list(batch['count'])
  ordered = np.concatenate([b['caption'] for b in captions.ordered_batches(config, 'test')]).tolist()
  assert captions.captions_text(config, 'test') == ordered == [_text(e['caption']) for e in _examples(config, 'test')]
  assert captions.captions_text(config, 'test', limit=5) == ordered[:5]
  image_view = images.load(_config(config.data.data_dir, config.data.manual_dir, 'image'), '')   # stage one's data
  batch = next(image_view.train_iterator())
  assert image_view.spec.num_classes == 10 and batch['image'].shape == (4, 32, 32, 3) and batch['label'].shape == (4,)


class _Source(list):
  """A TFDS-like random-access source of the examples in the list."""

  def __getitems__(self, keys):
    return [self[k] for k in keys]


def _captioned(n):
  """coco_captions-like examples of varying sizes, three captions each: 'example k caption j'."""
  return _Source({'image': np.full((20 + k, 30, 3), k, np.uint8),
                  'captions': {'text': np.array([f'example {k} caption {j}'.encode() for j in range(3)])}}
                 for k in range(n))


def test_one_of_several_captions_is_drawn_per_epoch(tmp_path, monkeypatch):
  monkeypatch.setattr(images, '_online', lambda builder: True)
  config = base_config()
  config.data.modality, config.data.name, config.batch_size = 'captioned', 'coco_captions', 4
  config.data.data_dir, config.data.caption_key, config.data.image_size = str(tmp_path), 'captions/text', 16
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=lambda builder, split, **kw: _captioned(8)):
    dataset = captions.load(config, '')
    batches = _take(dataset.train_iterator(), 2 * 10)             # 10 epochs of 8 examples
    again = _take(captions.load(config, '').train_iterator(), 2 * 10)
    first_eval = [t for b in dataset.eval_batches() for t in b['caption']]
    config.data.image_size = 0
    with pytest.raises(UserError, match='vary in size'):
      captions.load(config, '')
  assert batches[0]['image'].shape == (4, 16, 16, 3)
  shown = {}
  for b in batches:
    for text in b['caption']:
      shown.setdefault(int(text.split()[1]), set()).add(text)
  assert sorted(shown) == list(range(8)) and all(len(texts) > 1 for texts in shown.values())
  assert all(np.array_equal(a['caption'], b['caption']) for a, b in zip(batches, again))
  assert [t.rsplit(' ', 2)[0] for t in first_eval] == [f'example {k}' for k in range(8)]


# ------------------------------------------------------------------------------------------- prompt accuracy

def _predictions(scene_list):
  """The contents and colours (N, P) of scenes, as a perfect classifier would predict them."""
  return scene_eval.targets(*(np.array([getattr(s, k) + (-1,) * (2 - len(s.items)) for s in scene_list])
                              for k in ('items', 'colors', 'positions')))


def test_prompt_accuracy_is_one_for_the_true_attributes_and_zero_for_a_wrong_colour():
  scene_list = scenes.scene_table(np.arange(40) % 10, 'test')
  content, color = _predictions(scene_list)
  prompts = [s.caption for s in scene_list]
  assert scene_eval.score(content, color, prompts) == dict(prompt_accuracy=1.0, item_accuracy=1.0, color_accuracy=1.0,
                                                           position_accuracy=1.0, count_accuracy=1.0)
  wrong = np.where(content > 0, (color + 1) % 5, -1)
  assert scene_eval.score(content, wrong, prompts) == dict(prompt_accuracy=0.0, item_accuracy=1.0, color_accuracy=0.0,
                                                           position_accuracy=1.0, count_accuracy=1.0)
  red_bag_right = np.array([[0, 9, 0, 0, 0]]), np.array([[-1, 0, -1, -1, -1]])
  assert scene_eval.score(*red_bag_right, ['a red handbag'])['prompt_accuracy'] == 1.0     # no position named
  figures = scene_eval.score(*red_bag_right, ['a red bag on the left and a blue coat on the right'])
  assert figures == dict(prompt_accuracy=0.0, item_accuracy=0.0, color_accuracy=0.0, position_accuracy=0.5,
                         count_accuracy=0.0)


def test_evaluator_scores_a_sampler_that_returns_the_real_scenes_as_the_real_floor(prepared, monkeypatch):
  """With samples = the real images of their captions, every figure per guidance weight equals the floor's."""
  config = prepared[0]
  model, _ = scene_eval._model()
  params = jax.jit(model.init)(jax.random.key(0), scene_eval.boxes(np.zeros((1, 32, 32, 3), np.float32)))['params']
  monkeypatch.setattr(scene_eval, 'attribute_classifier', lambda config, cache_dir: (params, {
      'test_scene_accuracy': 0.5}))
  real = scene_eval.real_scenes(config, 'test')
  by_caption = dict(zip(real['caption'], real['image']))
  assert len(by_caption) == NUM['test']
  calls = []

  def sampler(rng, prompt, num, guidance=1.0, steps=None, negative_prompt=None):
    calls.append((len(prompt), num, guidance))
    return np.stack([by_caption[p] for p in prompt])

  ctx = evaluators.Context(config, None, '', None, sampler, None, None, num=12, batch=5, seed=0,
                           options={'guidances': (1.0, 4.0)})
  out = scene_eval.text_to_image_quality(ctx)
  assert calls == [(5, 5, 1.0)] * 3 + [(5, 5, 4.0)] * 3              # fixed-size calls, the last one padded
  assert out['num'] == 12 and 0 < out['num_heldout'] <= 6
  for w in ('1', '4'):
    assert out[f'fd_w{w}'] == pytest.approx(out['fd_floor'])
    for key in [k for k in out if k.endswith('_real')]:
      assert out[key.removesuffix('real') + f'w{w}'] == out[key]


def test_attribute_classifier_is_trained_once_and_cached(prepared, tmp_path, monkeypatch):
  monkeypatch.setattr(scene_eval, 'CLASSIFIER_STEPS', 3)
  params, info = scene_eval.attribute_classifier(prepared[0], str(tmp_path))
  assert info['test_examples'] == NUM['test'] and 0 <= info['test_scene_accuracy'] <= 1
  assert {'prompt_accuracy_seen_real', 'prompt_accuracy_heldout_real'} <= set(info)
  monkeypatch.setattr(evaluators, 'fit_classifier', lambda *a, **k: pytest.fail('trained twice'))
  cached, cached_info = scene_eval.attribute_classifier(prepared[0], str(tmp_path))
  assert cached_info == info and jax.tree.all(jax.tree.map(np.array_equal, cached, jax.device_get(params)))
  test = scene_eval.real_scenes(prepared[0], 'test')
  figures = scene_eval.prompt_accuracy(test['image'], list(test['caption']), cached)
  assert set(figures) == {'prompt_accuracy', 'item_accuracy', 'color_accuracy', 'position_accuracy', 'count_accuracy'}
