"""Tokenizers trained offline and stored as JSON (workdir/tokenizer.json, no pickle): char, byte (256), BPE.

config.data.tokenizer picks one: 'char' (the sorted characters of the training split), 'byte' (UTF-8
bytes) or 'bpe' (byte-level BPE with config.data.bpe_vocab_size merges' worth of vocabulary, trained
with HF `tokenizers` on the training split).
"""
import json
import os

import numpy as np
import tokenizers as hf

from jaxgen.errors import UserError

FILENAME = 'tokenizer.json'


class CharTokenizer:
  """One id per character of `chars` (sorted, unique)."""

  def __init__(self, chars: str):
    self.chars = chars
    self.vocab_size = len(chars)
    self._codepoints = np.frombuffer(chars.encode('utf-32-le'), np.uint32)  # sorted

  def encode(self, text: str) -> np.ndarray:
    codepoints = np.frombuffer(text.encode('utf-32-le'), np.uint32)
    ids = np.searchsorted(self._codepoints, codepoints).clip(max=self.vocab_size - 1)
    unknown = self._codepoints[ids] != codepoints
    if unknown.any():
      missing = ''.join(sorted(set(np.asarray(list(text))[unknown])))
      raise UserError(f'characters {missing!r} are not in the character vocabulary of the training text; '
                      'remove them from the prompt')
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    return ''.join(self.chars[i] for i in np.asarray(ids).tolist())

  def to_json(self) -> dict:
    return {'type': 'char', 'chars': self.chars}


class ByteTokenizer:
  """UTF-8 bytes; decoding replaces invalid byte sequences with U+FFFD."""
  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    return np.asarray(ids, np.uint8).tobytes().decode('utf-8', errors='replace')

  def to_json(self) -> dict:
    return {'type': 'byte'}


class BPETokenizer:
  """Byte-level BPE (GPT-2 style pre-tokenisation) from HF `tokenizers`."""

  def __init__(self, tokenizer: hf.Tokenizer):
    self.tokenizer = tokenizer
    self.vocab_size = tokenizer.get_vocab_size()

  @classmethod
  def train(cls, text: str, vocab_size: int) -> 'BPETokenizer':
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    lines = text.splitlines(keepends=True)
    tokenizer.train_from_iterator((''.join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)), trainer)
    return cls(tokenizer)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tokenizer.encode(text).ids, np.int32)

  def decode(self, ids) -> str:
    return self.tokenizer.decode(np.asarray(ids).tolist())

  def to_json(self) -> dict:
    return {'type': 'bpe', 'tokenizer': json.loads(self.tokenizer.to_str())}


Tokenizer = CharTokenizer | ByteTokenizer | BPETokenizer


def train(kind: str, text: str, bpe_vocab_size: int) -> Tokenizer:
  """A tokenizer of `kind` fitted to the training text."""
  if kind == 'char':
    return CharTokenizer(''.join(sorted(set(text))))
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    return BPETokenizer.train(text, bpe_vocab_size)
  raise UserError(f'unknown data.tokenizer {kind!r}; use char, byte or bpe')


def from_json(spec: dict) -> Tokenizer:
  if spec['type'] == 'char':
    return CharTokenizer(spec['chars'])
  if spec['type'] == 'byte':
    return ByteTokenizer()
  return BPETokenizer(hf.Tokenizer.from_str(json.dumps(spec['tokenizer'])))


def load(workdir: str) -> Tokenizer:
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    raise UserError(f'{path} not found: prepare the data first (python train.py --workdir {workdir} ...)')
  with open(path) as f:
    return from_json(json.load(f))
