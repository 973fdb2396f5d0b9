"""TFDS `fashion_mnist_scenes`: captioned 32x32 colour scenes of one or two Fashion-MNIST items, made offline.

A scene is a black 32x32 RGB canvas holding one or two Fashion-MNIST items, each resized to 16x16 (PIL bilinear)
and tinted one of COLORS (pixel = grey level x RGB / 255), each in the 16x16 box of its position (BOXES): two
items left + right (rows 8..23, columns 0..15 / 16..31) or top + bottom (columns 8..23); one item left, right,
top, bottom or in the center (rows and columns 8..23). The caption comes from templates and synonyms ("a red
sneaker on the left and a blue handbag to the right", "a photo of a yellow pair of trousers at the top", "a
white coat above a green bag"), naming the items in slot order; parse_prompt reads every caption back, and
simple prompts in the same words.

Splits: `train` from Fashion-MNIST's train images (one scene per image, its first item; a second item, in half
of the scenes, is another image of the split), `test` likewise from its test images. The HELDOUT (item, colour)
pairs, one colour for each item and two items for each colour, never appear in train; test draws colours
uniformly, so about 28 % of its scenes hold a held-out pair (feature `heldout`). Every draw comes from SEED:
two preparations write the same examples.

Features: image uint8 (32, 32, 3); caption (Text); label = the first item's class; items, colors, positions
int64 (2,) (ids into ITEMS, COLORS, POSITIONS; -1 in an empty second slot); count (1 or 2); heldout (bool).
Source images: the idx .gz files in manual_dir (default /usr/share/datasets/fashion-mnist, Debian's
`dataset-fashion-mnist`), else TFDS's own `fashion_mnist` (downloaded as usual).
"""
import gzip
import os
import re
from typing import NamedTuple

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jaxgen.data import local_fashion_mnist
from jaxgen.errors import UserError

SEED = 0
SIZE, ITEM_SIZE = 32, 16
ITEMS = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot')
COLORS = {'red': (255, 0, 0), 'green': (0, 255, 0), 'blue': (0, 0, 255), 'yellow': (255, 255, 0),
          'white': (255, 255, 255)}
POSITIONS = ('left', 'right', 'top', 'bottom', 'center')
BOXES = ((8, 0), (8, 16), (0, 8), (16, 8), (8, 8))       # (row, column) of each position's 16x16 box
LAYOUTS = ((0, 1), (1, 0), (2, 3), (3, 2))                # positions of two items: left + right, top + bottom
HELDOUT = frozenset((item, (3 * item + 1) % len(COLORS)) for item in range(len(ITEMS)))  # (item, colour) ids

# The words of captions. An item phrase's last word names it (others are fillers: 'pair of trousers').
ITEM_PHRASES = (('t-shirt', 'tee'), ('trouser', 'pair of trousers'), ('pullover', 'sweater', 'jumper'),
                ('dress', 'gown'), ('coat', 'jacket'), ('sandal',), ('shirt', 'blouse'), ('sneaker', 'trainer'),
                ('bag', 'handbag'), ('ankle boot', 'boot'))
POSITION_PHRASES = (('on the left', 'to the left', 'at the left'), ('on the right', 'to the right', 'at the right'),
                    ('at the top', 'on top'), ('at the bottom', 'on the bottom'), ('in the center', 'in the middle'))
RELATION_PHRASES = (('to the left of', 'left of'), ('to the right of', 'right of'), ('above', 'on top of'),
                    ('below', 'under', 'beneath'))        # the first item's position relative to the second's
PREFIXES = ('', 'a photo of ', 'a picture of ')

_ITEM_WORDS = {phrase.split()[-1]: i for i, phrases in enumerate(ITEM_PHRASES) for phrase in phrases}
_POSITION_WORDS = {'left': 0, 'right': 1, 'top': 2, 'bottom': 3, 'center': 4, 'centre': 4, 'middle': 4}
_RELATION_WORDS = {'above': 2, 'over': 2, 'below': 3, 'under': 3, 'beneath': 3}   # '<position> of' is one too
_SEPARATORS = {'and', ',', ';', '.', '!', '?'}
_FILLERS = {'a', 'an', 'the', 'on', 'to', 'at', 'in', 'of', 'is', 'there', 'side', 'photo', 'picture', 'image'} | {
    w for phrases in ITEM_PHRASES for phrase in phrases for w in phrase.split()[:-1]}
_VOCABULARY = set(_ITEM_WORDS) | set(COLORS) | set(_POSITION_WORDS) | set(_RELATION_WORDS) | _SEPARATORS | _FILLERS
_OPPOSITE = (1, 0, 3, 2)


# ------------------------------------------------------------------------------------------- captions

def caption(items, colors, positions, rng: np.random.Generator) -> str:
  """A caption naming the items (ids, in slot order) with their colours and positions, phrasing drawn from rng."""
  def pick(options):
    return options[rng.integers(len(options))]
  names = [f'a {list(COLORS)[c]} {pick(ITEM_PHRASES[i])}' for i, c in zip(items, colors)]
  places = [pick(POSITION_PHRASES[p]) for p in positions]
  prefix = pick(PREFIXES)
  if len(items) == 1:
    return pick((f'{prefix}{names[0]} {places[0]}', f'{places[0]} is {names[0]}', f'{places[0]} there is {names[0]}'))
  return pick((f'{prefix}{names[0]} {places[0]} and {names[1]} {places[1]}',
               f'{prefix}{names[0]} {places[0]}, {names[1]} {places[1]}',
               f'{places[0]} {names[0]} and {places[1]} {names[1]}',
               f'{prefix}{names[0]} {pick(RELATION_PHRASES[positions[0]])} {names[1]}'))


def parse_prompt(text: str) -> dict:
  """The scene a prompt describes: dict(items=[item ids], colors=[colour ids or None], positions=[position ids or
  None], count=n), one entry per item named. Clauses are separated by 'and' , ; . ! ? and each holds one item with at
  most one position ('a red bag on the left'), or two items and a relation ('a red bag above a blue sneaker')."""
  tokens = re.findall(r'[,;.!?]|[^\s,;.!?]+', text.lower())
  unknown = sorted(set(tokens) - _VOCABULARY)
  if unknown:
    raise UserError(f'unknown word(s) {", ".join(map(repr, unknown))} in the prompt {text!r}; the known words are: '
                    + ' '.join(sorted(_VOCABULARY - set(',;.!?'))))
  objects, clause = [], []
  for token in tokens + ['.']:
    if token not in _SEPARATORS:
      clause.append(token)
    elif clause:
      objects += _parse_clause(clause, text)
      clause = []
  if not 1 <= len(objects) <= 2:
    raise UserError(f'the prompt {text!r} names {len(objects)} items; a scene holds one or two of '
                    f'{", ".join(ITEMS)}')
  items, colors, positions = (list(column) for column in zip(*objects))
  return dict(items=items, colors=colors, positions=positions, count=len(objects))


def _parse_clause(tokens: list[str], text: str) -> list[tuple]:
  """[(item, colour or None, position or None)] of one clause."""
  mentions, places, relations, color = [], [], [], None   # places / relations: (mentions before it, position)
  for i, token in enumerate(tokens):
    if token in COLORS:
      if color is not None:
        raise UserError(f'two colours for one item in {" ".join(tokens)!r} (prompt {text!r})')
      color = list(COLORS).index(token)
    elif token in _ITEM_WORDS:
      mentions.append([_ITEM_WORDS[token], color, None])
      color = None
    elif token in _RELATION_WORDS or (token in _POSITION_WORDS and tokens[i + 1:i + 2] == ['of']):
      relations.append((len(mentions), _RELATION_WORDS.get(token, _POSITION_WORDS.get(token))))
    elif token in _POSITION_WORDS:
      places.append((len(mentions), _POSITION_WORDS[token]))
  if color is not None:
    raise UserError(f'a colour with no item after it in {" ".join(tokens)!r} (prompt {text!r})')
  if len(mentions) == 1 and not relations and len(places) <= 1:
    mentions[0][2] = places[0][1] if places else None
  elif len(mentions) == 2 and not places and len(relations) == 1 and relations[0][0] == 1 and relations[0][1] < 4:
    mentions[0][2] = relations[0][1]
    mentions[1][2] = _OPPOSITE[relations[0][1]]
  elif mentions or places or relations:
    raise UserError(f'cannot tell which position goes with which item in {" ".join(tokens)!r} (prompt {text!r}); '
                    'write e.g. "a red bag on the left and a blue sneaker on the right" or "a red bag above a '
                    'blue sneaker"')
  return [tuple(m) for m in mentions]


# ------------------------------------------------------------------------------------------- scenes

def render(item_images, colors, positions) -> np.ndarray:
  """uint8 (32, 32, 3): each grey item image (H, W[, 1]) resized to 16x16, tinted and put in its position's box."""
  canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
  for image, color, position in zip(item_images, colors, positions):
    small = Image.fromarray(np.asarray(image, np.uint8).squeeze()).resize((ITEM_SIZE, ITEM_SIZE),
                                                                          Image.Resampling.BILINEAR)
    tinted = np.round(np.asarray(small, np.float64)[..., None] * np.array(COLORS[list(COLORS)[color]]) / 255)
    row, col = BOXES[position]
    box = canvas[row:row + ITEM_SIZE, col:col + ITEM_SIZE]
    np.maximum(box, tinted.astype(np.uint8), out=box)
  return canvas


class Scene(NamedTuple):
  sources: tuple      # indices of the items' Fashion-MNIST images in their split
  items: tuple
  colors: tuple
  positions: tuple
  caption: str

  @property
  def heldout(self) -> bool:
    return any(pair in HELDOUT for pair in zip(self.items, self.colors))


def scene_table(labels, split: str, seed: int = SEED) -> list[Scene]:
  """The scenes of a split whose Fashion-MNIST labels are `labels`: scene k's first item is image k."""
  rng = np.random.default_rng([seed, ('train', 'test').index(split)])
  allowed = [[c for c in range(len(COLORS)) if split == 'test' or (item, c) not in HELDOUT]
             for item in range(len(ITEMS))]
  scenes = []
  for k in range(len(labels)):
    sources = (k,) if rng.integers(2) else (k, int(rng.integers(len(labels))))
    items = tuple(int(labels[s]) for s in sources)
    colors = tuple(int(allowed[i][rng.integers(len(allowed[i]))]) for i in items)
    positions = (int(rng.integers(len(POSITIONS))),) if len(items) == 1 else LAYOUTS[rng.integers(len(LAYOUTS))]
    scenes.append(Scene(sources, items, colors, positions, caption(items, colors, positions, rng)))
  return scenes


def _read_idx(path: str) -> np.ndarray:
  """An idx-ubyte .gz file: big-endian uint32 magic (0x0800 | number of dims), the dims, then uint8 data."""
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  ndim = raw[3]
  shape = np.frombuffer(raw[4:4 + 4 * ndim], '>u4')
  return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(shape)


def fashion_mnist(split: str, manual_dir: str | None, data_dir) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, 28, 28), labels (N,)) of a Fashion-MNIST split: local idx files, else TFDS's copy."""
  manual_dir = manual_dir or local_fashion_mnist.DEFAULT_MANUAL_DIR
  if local_fashion_mnist.has_files(manual_dir):
    return tuple(_read_idx(os.path.join(manual_dir, f)) for f in local_fashion_mnist.FILES[split])
  from jaxgen.data import images    # its network probe (imported here: images imports this module)
  builder = tfds.builder('fashion_mnist', data_dir=data_dir)
  if not builder.is_prepared() and not images._online(builder):   # TFDS would retry for minutes
    raise UserError(f'fashion_mnist_scenes is made from Fashion-MNIST, which is not in {manual_dir} and cannot be '
                    f'downloaded (no network): `apt-get install dataset-fashion-mnist` or --config.data.manual_dir=DIR '
                    f'holding {", ".join(local_fashion_mnist.FILES["train"] + local_fashion_mnist.FILES["test"])}')
  source = tfds.data_source('fashion_mnist', split=split, data_dir=data_dir)   # downloaded once if needed
  examples = source.__getitems__(range(len(source)))
  return np.stack([e['image'][..., 0] for e in examples]), np.array([e['label'] for e in examples])


class FashionMnistScenes(tfds.core.GeneratorBasedBuilder):
  """Captioned scenes of one or two coloured Fashion-MNIST items, with held-out (item, colour) pairs."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: 60000 train and 10000 test scenes of 32x32.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f'Optional: a directory holding the Fashion-MNIST idx .gz files (default '
                                  f'{local_fashion_mnist.DEFAULT_MANUAL_DIR}); else TFDS downloads fashion_mnist.')

  def _info(self) -> tfds.core.DatasetInfo:
    pair = tfds.features.Tensor(shape=(2,), dtype=np.int64)
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(SIZE, SIZE, 3)), 'caption': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=ITEMS), 'items': pair, 'colors': pair, 'positions': pair,
            'count': tfds.features.Scalar(np.int64), 'heldout': tfds.features.Scalar(np.bool_)}),
        supervised_keys=('image', 'caption'))

  def _split_generators(self, dl_manager):
    try:
      manual_dir = str(dl_manager.manual_dir)
    except AssertionError:             # none given (or empty): the Debian files, else TFDS's fashion_mnist
      manual_dir = None
    return {split: self._generate_examples(*fashion_mnist(split, manual_dir, self.data_dir_root), split)
            for split in ('train', 'test')}

  def _generate_examples(self, pixels: np.ndarray, labels: np.ndarray, split: str):
    for k, scene in enumerate(scene_table(labels, split)):
      pad = (-1,) * (2 - len(scene.items))
      yield k, {'image': render(pixels[list(scene.sources)], scene.colors, scene.positions),
                'caption': scene.caption, 'label': scene.items[0], 'items': np.array(scene.items + pad),
                'colors': np.array(scene.colors + pad), 'positions': np.array(scene.positions + pad),
                'count': len(scene.items), 'heldout': scene.heldout}
