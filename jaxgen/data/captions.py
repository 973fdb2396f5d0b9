"""Captioned images (data.modality=captioned): any TFDS dataset with an image and a text feature — the offline
`fashion_mnist_scenes` (jaxgen.data.scenes) or `coco_captions` online (data.caption_key='captions/text').

Spec: modality='captioned', name, image_shape (after data.center_crop / data.image_size), num_classes (of a
'label' feature, else 0), caption_key, max_tokens (T of the caller's tokenizer; None without one).
Batches: {'image': uint8 (B, H, W, C), 'tokens': int32 (B, T), 'mask': bool (B, T)} from load(config, workdir,
tokenize), or {'image', 'caption': object (B,) of str} with tokenize=None; plus the scene attributes the dataset
has (ATTRIBUTES: items, colors, positions int32 (B, 2), count int32 (B,), heldout bool (B,)).
An example with several captions (coco: 5) shows one per epoch, drawn from (config.seed, example, epoch); eval
and ordered batches show the same draw of epoch 0. Order, repetition, process rows and the checkpointable
position are the image pipeline's (jaxgen.data.images).
"""
import functools
from typing import Callable

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data import base, images
from jaxgen.errors import UserError

ATTRIBUTES = {'items': np.int32, 'colors': np.int32, 'positions': np.int32, 'count': np.int32, 'heldout': np.bool_}
Tokenize = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]   # texts -> (tokens int32 (B, T), mask bool (B, T))


def _caption_key(config) -> str:
  return config.data.get('caption_key', 'caption')


def _texts(example, key: str) -> list[str]:
  """Every caption of an example under a '/'-separated key ('captions/text': coco's list of captions)."""
  value = example
  for part in key.split('/'):
    value = value[part]
  return [v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(np.asarray(value, object))]


class ReadCaptions(grain.transforms.Map):
  """Indices (B,), or rows [example, epoch] (B, 2) -> a batch (module docstring), images cropped and resized."""

  def __init__(self, config, source, tokenize: Tokenize | None = None):
    self.source, self.tokenize, self.seed = source, tokenize, config.seed
    self.crop, self.size = images._crop_and_size(config)
    self.key = _caption_key(config)
    features = tfds.builder(config.data.name, data_dir=config.data.data_dir).info.features
    self.attributes = {k: dtype for k, dtype in ATTRIBUTES.items() if k in features}

  def map(self, indices):
    keys, epochs = (indices[:, 0], indices[:, 1]) if indices.ndim == 2 else (indices, np.zeros_like(indices))
    examples = images.read_examples(self.source, keys)
    texts = []
    for e, k, epoch in zip(examples, keys.tolist(), epochs.tolist()):
      options = _texts(e, self.key)
      texts.append(options[np.random.default_rng([self.seed, k, epoch]).integers(len(options))]
                   if len(options) > 1 else options[0])
    batch = {'image': np.stack([images.center_crop_resize(e['image'], self.crop, self.size) for e in examples])}
    if self.tokenize is None:
      batch['caption'] = np.array(texts, object)
    else:
      tokens, mask = self.tokenize(texts)
      batch['tokens'], batch['mask'] = np.asarray(tokens, np.int32), np.asarray(mask, bool)
    return batch | {k: np.array([e[k] for e in examples], dtype) for k, dtype in self.attributes.items()}


def _spec(config, features, max_tokens: int | None):
  key = _caption_key(config)
  if key.split('/')[0] not in features:
    raise UserError(f'TFDS dataset {config.data.name} has no {key!r} text feature (it has {sorted(features)}); '
                    'set --config.data.caption_key')
  image = images._spec(config, features)
  return base.make_spec(modality='captioned', name=image.name, image_shape=image.image_shape,
                        num_classes=image.num_classes, caption_key=key, max_tokens=max_tokens)


def load(config, workdir: str, tokenize: Tokenize | None = None) -> base.Dataset:
  """Prepares the dataset as ArrayRecord if needed (fashion_mnist_scenes renders its scenes); spec and iterators."""
  del workdir
  builder = images.prepare(config)
  max_tokens = None if tokenize is None else int(np.shape(tokenize([''])[0])[-1])
  read = functools.partial(ReadCaptions, tokenize=tokenize)
  return base.Dataset(_spec(config, builder.info.features, max_tokens),
                      lambda: images.train_iterator(config, read, epochs=True),
                      lambda: images.eval_batches(config, read))


def synthetic_spec(config):
  images.register(config.data.name)
  return _spec(config, tfds.builder(config.data.name, data_dir=config.data.data_dir).info.features, None)


def ordered_batches(config, split: str, tokenize: Tokenize | None = None) -> grain.IterDataset:
  """All of `split` in order (the last batch smaller)."""
  return images.ordered_batches(config, split, functools.partial(ReadCaptions, tokenize=tokenize))


def captions_text(config, split: str, limit: int | None = None) -> list[str]:
  """Every caption of `split` in order (all of an example's, in its order), at most `limit`; images not decoded.
  The dataset is prepared first where needed."""
  images.prepare(config)
  source = tfds.data_source(config.data.name, split=split, data_dir=config.data.data_dir, download=False,
                            decoders={'image': tfds.decode.SkipDecoding()})
  texts, key = [], _caption_key(config)
  for start in range(0, len(source), 1024):
    for e in images.read_examples(source, range(start, min(start + 1024, len(source)))):
      texts += _texts(e, key)
    if limit is not None and len(texts) >= limit:
      break
  return texts[:limit]
