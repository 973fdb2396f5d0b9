"""Tokenizers stored as JSON (workdir/tokenizer.json, no pickle): char, byte (256), BPE and word trained offline,
or a pretrained one such as GPT-2's.

config.data.tokenizer picks one: 'char' (the sorted characters of the training split), 'byte' (UTF-8
bytes), 'bpe' (byte-level BPE with config.data.bpe_vocab_size merges' worth of vocabulary, trained
with HF `tokenizers` on the training split), 'word' (HF WordLevel: the most frequent words and
punctuation runs of the training split, the rest '[UNK]'; data.modality=sentences), 'gpt2' (GPT-2's byte-level
BPE, 50257 ids, from the files of config.init_from when it has them, else from the Hugging Face Hub), or the
path of a tokenizer: an HF tokenizer.json, or a folder holding tokenizer.json or GPT-2's vocab.json + merges.txt.

Special tokens (e.g. BERT's [PAD] [CLS] [SEP] [MASK]), given at training, take ids 0..n-1 in every kind, in
order; the text's tokens follow (char and byte ids shift by n; with none, ids are as before). encode() reads
a special token's name in a text as plain text and decode() leaves special ids out. A pretrained tokenizer
keeps its own special tokens and their meaning: GPT-2's '<|endoftext|>' (id 50256) in a text is that id, and
decode() writes it out, so document boundaries stay visible.

The HF kinds (bpe, word, pretrained) are saved as HF `tokenizers` JSON, so tokenizers.Tokenizer.from_file (and
transformers' PreTrainedTokenizerFast(tokenizer_file=...)) open a workdir's tokenizer.json; char and byte,
which HF has no equivalent of, as jaxgen's JSON ({"type": "char", ...}).
"""
import json
import os

import numpy as np
import tokenizers as hf

from jaxgen import files
from jaxgen.errors import UserError

FILENAME = 'tokenizer.json'
TRAINED = ('char', 'byte', 'bpe', 'word')
GPT2_HUB = 'openai-community/gpt2'      # where data.tokenizer=gpt2 comes from without config.init_from
GPT2_FILES = ['tokenizer.json', 'vocab.json', 'merges.txt']
END_OF_TEXT = '<|endoftext|>'


def _special_id(special_tokens: tuple[str, ...], token: str, kind: str) -> int:
  if token not in special_tokens:
    raise UserError(f'token {token!r} is not in the {kind} vocabulary; train the tokenizer with it '
                    '(data.special_tokens)')
  return special_tokens.index(token)


class CharTokenizer:
  """Ids 0..n-1 for the special tokens (none by default), then one per character of `chars` (sorted, unique)."""

  def __init__(self, chars: str, special_tokens=()):
    self.chars, self.special_tokens = chars, tuple(special_tokens)
    self.vocab_size = len(self.special_tokens) + len(chars)
    self._codepoints = np.frombuffer(chars.encode('utf-32-le'), np.uint32)  # sorted

  def encode(self, text: str) -> np.ndarray:
    codepoints = np.frombuffer(text.encode('utf-32-le'), np.uint32)
    ids = np.searchsorted(self._codepoints, codepoints).clip(max=len(self.chars) - 1)
    unknown = self._codepoints[ids] != codepoints
    if unknown.any():
      missing = ''.join(sorted(set(np.asarray(list(text))[unknown])))
      raise UserError(f'characters {missing!r} are not in the character vocabulary of the training text; '
                      'remove them from the prompt')
    return (ids + len(self.special_tokens)).astype(np.int32)

  def decode(self, ids) -> str:
    n = len(self.special_tokens)
    return ''.join(self.chars[i - n] for i in np.asarray(ids).tolist() if i >= n)

  def token_id(self, token: str) -> int:
    return _special_id(self.special_tokens, token, 'char')

  def to_json(self) -> dict:
    return {'type': 'char', 'chars': self.chars, **_specials_json(self.special_tokens)}

  def save(self, path: str) -> None:
    files.write_atomic(path, json.dumps(self.to_json()))


class ByteTokenizer:
  """Ids 0..n-1 for the special tokens (none by default), then the 256 UTF-8 byte values; decoding replaces
  invalid byte sequences with U+FFFD."""

  def __init__(self, special_tokens=()):
    self.special_tokens = tuple(special_tokens)
    self.vocab_size = len(self.special_tokens) + 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32) + len(self.special_tokens)

  def decode(self, ids) -> str:
    ids = np.asarray(ids) - len(self.special_tokens)
    return ids[ids >= 0].astype(np.uint8).tobytes().decode('utf-8', errors='replace')

  def token_id(self, token: str) -> int:
    return _special_id(self.special_tokens, token, 'byte')

  def to_json(self) -> dict:
    return {'type': 'byte', **_specials_json(self.special_tokens)}

  def save(self, path: str) -> None:
    files.write_atomic(path, json.dumps(self.to_json()))


def _specials_json(special_tokens) -> dict:
  """The JSON of a tokenizer without special tokens is what it was before they existed."""
  return {'special_tokens': list(special_tokens)} if special_tokens else {}


class HFTokenizer:
  """An HF `tokenizers` Tokenizer of kind 'bpe' (byte-level BPE, GPT-2 style pre-tokenisation), 'word'
  (one id per word or punctuation run, unknown words -> '[UNK]', decoded joined by spaces) or 'pretrained'
  (made by others, e.g. GPT-2's). bpe and word: special tokens (given at training) have the first ids; decode
  skips them, and encode reads them in text as plain text. pretrained: special tokens in a text are their ids
  and decode writes them."""

  def __init__(self, tokenizer: hf.Tokenizer, kind: str = 'bpe'):
    self.tokenizer, self.kind = tokenizer, kind
    # bpe/word: '[EOS]' in a text is not the EOS id (not kept in JSON)
    self.tokenizer.encode_special_tokens = kind != 'pretrained'
    self.vocab_size = tokenizer.get_vocab_size()

  @classmethod
  def train(cls, kind: str, text: str, vocab_size: int, special_tokens=()) -> 'HFTokenizer':
    if kind == 'bpe':
      tokenizer = hf.Tokenizer(hf.models.BPE())
      tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
      tokenizer.decoder = hf.decoders.ByteLevel()
      trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                       special_tokens=list(special_tokens),
                                       initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    else:
      unk = '[UNK]'
      tokenizer = hf.Tokenizer(hf.models.WordLevel(unk_token=unk))
      tokenizer.pre_tokenizer = hf.pre_tokenizers.Whitespace()   # no decoder: decode joins tokens with ' '
      specials = list(special_tokens) + ([unk] if unk not in special_tokens else [])
      trainer = hf.trainers.WordLevelTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=specials)
    lines = text.splitlines(keepends=True)
    tokenizer.train_from_iterator((''.join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)), trainer)
    return cls(tokenizer, kind)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tokenizer.encode(text).ids, np.int32)

  def encode_batch(self, texts) -> list[np.ndarray]:
    """encode() of each text (in parallel)."""
    return [np.asarray(e.ids, np.int32) for e in self.tokenizer.encode_batch(list(texts))]

  def decode(self, ids) -> str:
    return self.tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=self.kind != 'pretrained')

  @property
  def special_tokens(self) -> tuple[str, ...]:
    """The special tokens, by id."""
    added = self.tokenizer.get_added_tokens_decoder()
    return tuple(added[i].content for i in sorted(added) if added[i].special)

  def token_id(self, token: str) -> int:
    i = self.tokenizer.token_to_id(token)
    if i is None:
      raise UserError(f'token {token!r} is not in the {self.kind} vocabulary; train the tokenizer with it')
    return i

  def to_json(self) -> dict:
    return {'type': self.kind, 'tokenizer': json.loads(self.tokenizer.to_str())}

  def save(self, path: str) -> None:
    """HF tokenizers' own JSON: hf.Tokenizer.from_file(path) opens it."""
    files.write_atomic(path, self.tokenizer.to_str())


BPETokenizer = HFTokenizer   # its former name
Tokenizer = CharTokenizer | ByteTokenizer | HFTokenizer


def train(kind: str, text: str, vocab_size: int = 0, special_tokens=(), *,
          bpe_vocab_size: int | None = None) -> Tokenizer:
  """A tokenizer of `kind` fitted to the training text: bpe and word with at most vocab_size ids, special
  tokens included (char and byte ignore it), special_tokens taking ids 0..n-1 in order. bpe_vocab_size: the
  former name of vocab_size."""
  vocab_size = vocab_size if bpe_vocab_size is None else bpe_vocab_size
  if kind == 'char':
    return CharTokenizer(''.join(sorted(set(text))), special_tokens)
  if kind == 'byte':
    return ByteTokenizer(special_tokens)
  if kind in ('bpe', 'word'):
    return HFTokenizer.train(kind, text, vocab_size, special_tokens)
  raise UserError(f'unknown data.tokenizer {kind!r}; use char, byte, bpe or word')


def pretrained(source: str) -> HFTokenizer:
  """A pretrained tokenizer from `source`: a tokenizer.json file (HF's, or jaxgen's of another run, which keeps
  its kind), a folder holding tokenizer.json or GPT-2's vocab.json + merges.txt (byte-level BPE;
  '<|endoftext|>' its special token), or a Hugging Face Hub name whose files those are (downloaded once,
  jaxgen.files.hub_snapshot)."""
  is_file = files.is_file(source)
  folder = os.path.dirname(source) if is_file else files.hub_snapshot(source, GPT2_FILES)
  path = source if is_file else os.path.join(folder, 'tokenizer.json')
  try:
    if files.exists(path):
      plain = json.loads(files.read_text(path))
      return _from_file_json(plain, 'pretrained') if 'model' in plain else from_json(plain)
    vocab, merges = (os.path.join(folder, f) for f in GPT2_FILES[1:])
    if not (files.exists(vocab) and files.exists(merges)):
      raise UserError(f'{source} holds no tokenizer.json, nor vocab.json + merges.txt: give the folder of a '
                      'Hugging Face checkpoint with its tokenizer files, or a tokenizer.json file')
    vocab_ids = json.loads(files.read_text(vocab))
    merge_lines = [line for line in files.read_text(merges).splitlines() if line and not line.startswith('#v')]
    tokenizer = hf.Tokenizer(hf.models.BPE(vocab_ids, [tuple(line.split(' ')) for line in merge_lines]))
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 -- json and HF tokenizers each raise their own
    message = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f'the tokenizer files of {source} cannot be read ({message}); give a tokenizer.json, or '
                    'vocab.json + merges.txt of a byte-level BPE') from e
  tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = hf.decoders.ByteLevel()
  if END_OF_TEXT in vocab_ids:
    tokenizer.add_special_tokens([END_OF_TEXT])    # already in the vocabulary: keeps its id
  return HFTokenizer(tokenizer, 'pretrained')


def pretrained_source(config) -> str | None:
  """Where a run's pretrained tokenizer comes from (None for the trained kinds): data.tokenizer's path, or for
  'gpt2' the pretrained checkpoint config.init_from when there is one, else GPT-2's files on the Hub."""
  kind = config.data.tokenizer
  if kind in TRAINED:
    return None
  if kind == 'gpt2':
    return config.get('init_from') or GPT2_HUB
  if not files.exists(kind):
    raise UserError(f'data.tokenizer={kind!r} is neither a kind (char, byte, bpe, word, gpt2) nor an existing '
                    'tokenizer file or folder')
  return kind


def from_json(spec: dict) -> Tokenizer:
  if spec['type'] == 'char':
    return CharTokenizer(spec['chars'], spec.get('special_tokens', ()))
  if spec['type'] == 'byte':
    return ByteTokenizer(spec.get('special_tokens', ()))
  if spec['type'] in ('bpe', 'word', 'pretrained'):
    return HFTokenizer(hf.Tokenizer.from_str(json.dumps(spec['tokenizer'])), spec['type'])
  raise UserError(f'unknown tokenizer type {spec["type"]!r} in the tokenizer JSON; prepare the data again')


def _from_file_json(plain: dict, kind: str | None) -> Tokenizer:
  """A tokenizer.json: jaxgen's JSON ({"type": ...}) or HF's (kind: given, else word or bpe by its model)."""
  if 'model' not in plain:
    return from_json(plain)
  kind = kind or ('word' if plain['model'].get('type') == 'WordLevel' else 'bpe')
  return HFTokenizer(hf.Tokenizer.from_str(json.dumps(plain)), kind)


def load(workdir: str, kind: str | None = None) -> Tokenizer:
  """The tokenizer saved in workdir/tokenizer.json; `kind` tells an HF file's kind (default: by its model)."""
  path = os.path.join(workdir, FILENAME)
  if not files.exists(path):
    raise UserError(f'{path} not found: prepare the data first (python train.py --workdir {workdir} ...)')
  try:
    return _from_file_json(json.loads(files.read_text(path)), kind)
  except Exception as e:  # noqa: BLE001 -- json, our keys and HF tokenizers each raise their own
    if isinstance(e, UserError):
      raise
    message = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f'{path} cannot be read as a tokenizer ({message}): it is damaged; restore it, or use a '
                    'new --workdir') from e
