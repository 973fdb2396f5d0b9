"""Text sources (data.modality=text): Tiny Shakespeare (TFDS), a user's file (data.name=text_file, or
data.text_file set), tokenised once into token arrays, or token files tokenised elsewhere (data.name=token_file).

Spec: modality='text', source, vocab_size, tokenizer (its JSON, jaxgen.data.tokenizers.from_json).
load() writes into the workdir: tokenizer.json, data/{train,val}.npy (uint16 or int32 token ids) and
data/source.json (what they were made from). Batches are windows of window_length(config) tokens,
{'tokens': int32 (B, window)}: by default block_size + 1 (a GPT reads tokens[:, :-1] and predicts tokens[:, 1:]);
an encoder's config sets data.window_length (BERT: block_size - 2, for [CLS] w [SEP]). data.special_tokens
(optional; BERT's [PAD] [CLS] [SEP] [MASK]) go into the tokenizer with ids 0..n-1; the text itself never
holds them. Without either key the data are what a GPT has always read.

data.name=token_file reads nanoGPT's prepared data (data/openwebtext/prepare.py): data.manual_dir holds
train.bin and val.bin, flat uint16 token ids, made by the tokenizer data.tokenizer names (gpt2, or its file).
They are never copied nor loaded whole: windows are read from the memory-mapped files (seek + read where the
folder is a URL such as gs://, which cannot be mapped); load() checks once that every id is in the vocabulary.

Training windows start at offsets drawn from a per-index seeded RNG over an infinite index range (Grain
MapDataset.random_map), so the iterator is deterministic and checkpointable (get_state / set_state); each
process keeps its rows of every global batch. Evaluation uses a fixed, evenly spaced set of windows.
"""
import functools
import io
import json
import logging
import os
import sys

import grain
import numpy as np
from etils import epath

from jaxgen import files
from jaxgen.data import base
from jaxgen.data import tokenizers
from jaxgen.errors import UserError

TOKEN_FILE_DTYPE = np.uint16    # nanoGPT's train.bin / val.bin


def _read_tiny_shakespeare(data) -> tuple[str, str]:
  """(train, val) text; TFDS splits input.txt 90/5/5 and val = validation + test, as nanoGPT's last 10%."""
  import tensorflow_datasets as tfds
  builder = tfds.builder('tiny_shakespeare', data_dir=data.data_dir, file_format='array_record')
  if not builder.is_prepared():
    download_config = tfds.download.DownloadConfig(manual_dir=data.manual_dir) if data.manual_dir else None
    try:
      builder.download_and_prepare(download_config=download_config)
    except Exception as e:  # noqa: BLE001 -- any failure here is fixed the same way
      where = (f'data.manual_dir={data.manual_dir} must contain input.txt' if data.manual_dir else
               'offline? pass --config.data.manual_dir=DIR with karpathy/char-rnn tinyshakespeare/input.txt')
      raise UserError(f'could not prepare tiny_shakespeare ({type(e).__name__}: {str(e)[:200]}); {where}') from e
  read = lambda split: tfds.data_source('tiny_shakespeare', split=split, data_dir=data.data_dir,
                                        download=False)[0]['text'].decode('utf-8')
  return read('train'), read('validation') + read('test')


def _read_text_file(path: str) -> tuple[str, str]:
  """(train, val) = the first 90% and the last 10% of the file's characters."""
  try:
    text = files.read_text(path)
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f'cannot read data.text_file={path} ({e}); give a UTF-8 text file') from e
  n = int(len(text) * 0.9)
  return text[:n], text[n:]


def source_of(config) -> str:
  """What the tokens are made from: the token files' folder, the text file's absolute path, or the TFDS name."""
  if config.data.name == 'token_file':
    if not config.data.manual_dir:
      raise UserError('data.name=token_file needs --config.data.manual_dir=DIR, the folder holding train.bin and '
                      'val.bin (uint16 token ids, as nanoGPT prepares them)')
    return files.absolute(config.data.manual_dir)
  if config.data.text_file:
    return files.absolute(config.data.text_file)
  if config.data.name == 'text_file':
    raise UserError('data.name=text_file needs --config.data.text_file=PATH')
  if config.data.name != 'tiny_shakespeare':
    raise UserError(f'data.name={config.data.name!r} is not a text source; use tiny_shakespeare, token_file or '
                    '--config.data.text_file=PATH')
  return config.data.name


def special_tokens(config) -> tuple[str, ...]:
  """The tokenizer's special tokens: data.special_tokens, none where the config has no such key (GPT)."""
  return tuple(config.data.get('special_tokens') or ())


def window_length(config) -> int:
  """Tokens per window: data.window_length, or block_size + 1 where the config has none (GPT's inputs and
  shifted targets)."""
  return config.data.get('window_length') or config.model.block_size + 1


def tokens_path(config, workdir: str, split: str) -> str:
  """The token array of a split: workdir/data/<split>.npy, or <data.manual_dir>/<split>.bin for token_file."""
  if config.data.name == 'token_file':
    return os.path.join(source_of(config), f'{split}.bin')
  return os.path.join(workdir, 'data', f'{split}.npy')


def split_tokens(config, workdir: str, split: str):
  """The token ids of a split ('train' or 'val'), memory-mapped (or read on demand): (N,) uint16 or int32."""
  return _load_tokens(tokens_path(config, workdir, split))


def save_atomic(path: str, write, mode: str = 'w') -> None:
  """write(f) into path through jaxgen.files.write_atomic (local or gs://): processes sharing the workdir write
  identical content and the last rename wins cleanly."""
  buffer = io.BytesIO() if 'b' in mode else io.StringIO()
  write(buffer)
  files.write_atomic(path, buffer.getvalue())


def read_splits(config, source: str) -> tuple[str, str]:
  """(train, val) text of the source (source_of(config))."""
  if source == 'tiny_shakespeare':
    return _read_tiny_shakespeare(config.data)
  return _read_text_file(config.data.text_file)


def is_prepared(workdir: str, meta_path: str, meta: dict) -> bool:
  """Whether workdir holds data prepared as `meta` says (recorded in meta_path); other data is refused."""
  if not files.exists(meta_path):
    return False
  prepared = json.loads(files.read_text(meta_path))
  if prepared != meta:
    raise UserError(f'{workdir} holds data prepared from {prepared}, not {meta}; use a new --workdir')
  return True


def _spec(source: str, tokenizer: tokenizers.Tokenizer):
  return base.make_spec(modality='text', source=source, vocab_size=tokenizer.vocab_size,
                        tokenizer=json.dumps(tokenizer.to_json()))


def synthetic_spec(config):
  """Without the corpus: byte tokens (256), BPE's data.bpe_vocab_size, GPT-2's 50257, or for char Tiny
  Shakespeare's 65 characters (stand-in characters of the same count), with the special tokens; a tokenizer
  file (data.tokenizer=PATH) is read."""
  kind, specials = config.data.tokenizer, special_tokens(config)
  sizes = {'byte': 256, 'bpe': config.data.bpe_vocab_size - len(specials), 'char': 65, 'gpt2': 50257}
  if kind not in sizes:
    return _spec('synthetic', tokenizers.pretrained(tokenizers.pretrained_source(config)))
  tokenizer = (tokenizers.ByteTokenizer(specials) if kind == 'byte' else
               tokenizers.CharTokenizer(''.join(chr(32 + i) for i in range(sizes[kind])), specials))
  return _spec('synthetic', tokenizer)


def _pretrained_tokenizer(config, source: str):
  tokenizer = tokenizers.pretrained(source)
  if special_tokens(config):
    raise UserError(f'data.special_tokens cannot be added to the pretrained tokenizer {source}; use a trained one '
                    '(data.tokenizer=char, byte or bpe)')
  return tokenizer


def _check_token_ids(path: str, vocab_size: int, chunk: int = 2**26) -> None:
  """Every id of a token file is < vocab_size (chunk by chunk: the file is never in memory whole)."""
  tokens = _load_tokens(path)
  top = max((int(np.max(tokens[i:i + chunk])) for i in range(0, len(tokens), chunk)), default=-1)
  if top >= vocab_size:
    raise UserError(f'{path} holds token id {top}, outside the vocabulary of {vocab_size} ids of data.tokenizer: '
                    'give the tokenizer that made the file (data.tokenizer=gpt2, or its tokenizer.json)')


def _token_file_tokenizer(config):
  source = tokenizers.pretrained_source(config)
  if source is not None:
    return _pretrained_tokenizer(config, source)
  if config.data.tokenizer == 'byte':
    return tokenizers.ByteTokenizer(special_tokens(config))
  raise UserError(f'data.name=token_file holds token ids: data.tokenizer={config.data.tokenizer!r} has to be '
                  'trained on text; give the tokenizer that made them (gpt2, byte, or its tokenizer.json)')


def load(config, workdir: str) -> base.Dataset:
  """Tokenise the corpus once into workdir/data/*.npy (token_file: check the token files once) and save the
  tokenizer there; the spec and iterators."""
  source = source_of(config)
  meta_path = os.path.join(workdir, 'data', 'source.json')
  specials = special_tokens(config)
  meta = {'source': source, 'tokenizer': config.data.tokenizer}
  if specials:                       # GPT workdirs keep the meta they were prepared with
    meta['special_tokens'] = list(specials)
  pretrained = config.data.tokenizer not in tokenizers.TRAINED
  if is_prepared(workdir, meta_path, meta):
    tokenizer = tokenizers.load(workdir, 'pretrained' if pretrained else None)
  elif config.data.name == 'token_file':
    tokenizer = _token_file_tokenizer(config)
    for split in ('train', 'val'):
      if not files.exists(tokens_path(config, workdir, split)):
        raise UserError(f'{tokens_path(config, workdir, split)} not found: data.manual_dir of data.name=token_file '
                        'must hold train.bin and val.bin')
      _check_token_ids(tokens_path(config, workdir, split), tokenizer.vocab_size)
  else:
    train_text, val_text = read_splits(config, source)
    if pretrained:
      tokenizer = _pretrained_tokenizer(config, tokenizers.pretrained_source(config))
    else:
      tokenizer = tokenizers.train(config.data.tokenizer, train_text, config.data.bpe_vocab_size, specials)
    if isinstance(tokenizer, tokenizers.CharTokenizer):
      unseen = set(val_text) - set(tokenizer.chars)
      if unseen:
        logging.warning('dropping characters %r of the validation text that the training text lacks', unseen)
        val_text = ''.join(c for c in val_text if c not in unseen)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    for split, text in (('train', train_text), ('val', val_text)):
      ids = tokenizer.encode(text).astype(dtype)
      save_atomic(tokens_path(config, workdir, split), lambda f: np.save(f, ids), 'wb')
  if not files.exists(meta_path):
    tokenizer.save(os.path.join(workdir, tokenizers.FILENAME))
    files.write_atomic(meta_path, json.dumps(meta))
  window = window_length(config)
  for split in ('train', 'val'):
    n = len(split_tokens(config, workdir, split))
    if n < window:
      raise UserError(f'the {split} split has {n} tokens, fewer than a window of {window} '
                      f'(block_size={config.model.block_size}); give more text or lower --config.model.block_size')
  return base.Dataset(_spec(source, tokenizer), lambda: train_iterator(config, workdir),
                      lambda: eval_batches(config, workdir))


class StreamedTokens:
  """A token array in a file that cannot be memory-mapped (a URL such as gs://...): len() and slices [a:b],
  read with seek + read (an .npy file after its header, or a flat uint16 .bin file)."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    with self.path.open('rb') as f:
      if path.endswith('.npy'):
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        (self.length,), _, self.dtype = read_header(f)
        self.offset = f.tell()
      else:
        self.offset, self.dtype = 0, np.dtype(TOKEN_FILE_DTYPE)
        f.seek(0, os.SEEK_END)
        self.length = f.tell() // self.dtype.itemsize

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: slice) -> np.ndarray:
    start, stop, step = index.indices(self.length)
    if step != 1:
      raise ValueError('StreamedTokens reads contiguous slices only')
    with self.path.open('rb') as f:            # one handle per read: Grain's reader threads share nothing
      f.seek(self.offset + start * self.dtype.itemsize)
      return np.frombuffer(f.read(max(stop - start, 0) * self.dtype.itemsize), self.dtype)


@functools.cache
def _load_tokens(path: str):
  """The token array in `path` (.npy, or a flat uint16 .bin), memory-mapped where local."""
  if not files.is_local(path):
    return StreamedTokens(path)
  if path.endswith('.bin'):
    return np.memmap(path, TOKEN_FILE_DTYPE, mode='r')
  return np.load(path, mmap_mode='r')


def _window(path: str, length: int, offset: int) -> dict[str, np.ndarray]:
  return {'tokens': np.asarray(_load_tokens(path)[offset:offset + length], np.int32)}


def _random_window(index: int, rng: np.random.Generator, *, path: str, length: int):
  return _window(path, length, rng.integers(0, len(_load_tokens(path)) - length + 1))


def train_iterator(config, workdir: str):
  """Infinite checkpointable iterator of {'tokens': int32 (batch_size / process_count, window_length)}: this
  process's rows of each global batch (every process draws the whole batch's windows: a few memory copies)."""
  path = tokens_path(config, workdir, 'train')
  windows = (grain.MapDataset.range(sys.maxsize)
             .random_map(functools.partial(_random_window, path=path, length=window_length(config)),
                         seed=config.seed)
             .batch(config.batch_size, drop_remainder=True)
             .map(base.ProcessRows(config)))
  ds = windows.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=config.data.prefetch))
  if config.data.num_workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return iter(ds)


def eval_batches(config, workdir: str):
  """This process's rows of the global batches of data.eval_examples evenly spaced validation windows."""
  path, length = tokens_path(config, workdir, 'val'), window_length(config)
  num_windows = min(config.data.eval_examples, len(_load_tokens(path)) - length + 1)
  num_windows -= num_windows % config.batch_size
  offsets = np.linspace(0, len(_load_tokens(path)) - length, num_windows).astype(np.int64)
  return (grain.MapDataset.source(offsets)
          .map(functools.partial(_window, path, length))
          .batch(config.batch_size, drop_remainder=True)
          .map(base.ProcessRows(config)))
