"""Text sources (data.modality=text): Tiny Shakespeare (TFDS) or a user's file (data.name=text_file, or
data.text_file set), tokenised once into memory-mapped token arrays.

Spec: modality='text', source, vocab_size, tokenizer (its JSON, jaxgen.data.tokenizers.from_json).
load() writes into the workdir: tokenizer.json, data/{train,val}.npy (uint16 or int32 token ids) and
data/source.json (what they were made from). Batches are windows of window_length(config) tokens,
{'tokens': int32 (B, window)}: by default block_size + 1 (a GPT reads tokens[:, :-1] and predicts tokens[:, 1:]);
an encoder's config sets data.window_length (BERT: block_size - 2, for [CLS] w [SEP]). data.special_tokens
(optional; BERT's [PAD] [CLS] [SEP] [MASK]) go into the tokenizer with ids 0..n-1; the text itself never
holds them. Without either key the data are what a GPT has always read.

Training windows start at offsets drawn from a per-index seeded RNG over an infinite index range (Grain
MapDataset.random_map), so the iterator is deterministic and checkpointable (get_state / set_state); each
process keeps its rows of every global batch. Evaluation uses a fixed, evenly spaced set of windows.
"""
import functools
import json
import logging
import os
import sys

import grain
import numpy as np

from jaxgen.data import base
from jaxgen.data import tokenizers
from jaxgen.errors import UserError


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
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f'cannot read data.text_file={path} ({e}); give a UTF-8 text file') from e
  n = int(len(text) * 0.9)
  return text[:n], text[n:]


def source_of(config) -> str:
  """What the tokens are made from: the text file's absolute path, or the TFDS name."""
  if config.data.text_file:
    return os.path.abspath(config.data.text_file)
  if config.data.name == 'text_file':
    raise UserError('data.name=text_file needs --config.data.text_file=PATH')
  if config.data.name != 'tiny_shakespeare':
    raise UserError(f'data.name={config.data.name!r} is not a text source; use tiny_shakespeare or '
                    '--config.data.text_file=PATH')
  return config.data.name


def special_tokens(config) -> tuple[str, ...]:
  """The tokenizer's special tokens: data.special_tokens, none where the config has no such key (GPT)."""
  return tuple(config.data.get('special_tokens') or ())


def window_length(config) -> int:
  """Tokens per window: data.window_length, or block_size + 1 where the config has none (GPT's inputs and
  shifted targets)."""
  return config.data.get('window_length') or config.model.block_size + 1


def _tokens_path(workdir: str, split: str) -> str:
  return os.path.join(workdir, 'data', f'{split}.npy')


def save_atomic(path: str, write, mode: str = 'w') -> None:
  """Processes sharing the workdir write identical content; os.replace makes the last one win cleanly."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, mode) as f:
    write(f)
  os.replace(tmp, path)


def read_splits(config, source: str) -> tuple[str, str]:
  """(train, val) text of the source (source_of(config))."""
  if source == 'tiny_shakespeare':
    return _read_tiny_shakespeare(config.data)
  return _read_text_file(config.data.text_file)


def is_prepared(workdir: str, meta_path: str, meta: dict) -> bool:
  """Whether workdir holds data prepared as `meta` says (recorded in meta_path); other data is refused."""
  if not os.path.exists(meta_path):
    return False
  with open(meta_path) as f:
    prepared = json.load(f)
  if prepared != meta:
    raise UserError(f'{workdir} holds data prepared from {prepared}, not {meta}; use a new --workdir')
  return True


def _spec(source: str, tokenizer: tokenizers.Tokenizer):
  return base.make_spec(modality='text', source=source, vocab_size=tokenizer.vocab_size,
                        tokenizer=json.dumps(tokenizer.to_json()))


def synthetic_spec(config):
  """Without the corpus: byte tokens (256), BPE's data.bpe_vocab_size, or for char Tiny Shakespeare's 65
  characters (stand-in characters of the same count), with the special tokens."""
  kind, specials = config.data.tokenizer, special_tokens(config)
  sizes = {'byte': 256, 'bpe': config.data.bpe_vocab_size - len(specials), 'char': 65}
  if kind not in sizes:
    raise UserError(f'unknown data.tokenizer {kind!r}; use char, byte or bpe')
  tokenizer = (tokenizers.ByteTokenizer(specials) if kind == 'byte' else
               tokenizers.CharTokenizer(''.join(chr(32 + i) for i in range(sizes[kind])), specials))
  return _spec('synthetic', tokenizer)


def load(config, workdir: str) -> base.Dataset:
  """Tokenise the corpus once into workdir/data/*.npy and save the tokenizer there; the spec and iterators."""
  source = source_of(config)
  meta_path = os.path.join(workdir, 'data', 'source.json')
  specials = special_tokens(config)
  meta = {'source': source, 'tokenizer': config.data.tokenizer}
  if specials:                       # GPT workdirs keep the meta they were prepared with
    meta['special_tokens'] = list(specials)
  if is_prepared(workdir, meta_path, meta):
    tokenizer = tokenizers.load(workdir)
  else:
    train_text, val_text = read_splits(config, source)
    tokenizer = tokenizers.train(config.data.tokenizer, train_text, config.data.bpe_vocab_size, specials)
    if isinstance(tokenizer, tokenizers.CharTokenizer):
      unseen = set(val_text) - set(tokenizer.chars)
      if unseen:
        logging.warning('dropping characters %r of the validation text that the training text lacks', unseen)
        val_text = ''.join(c for c in val_text if c not in unseen)
    os.makedirs(os.path.join(workdir, 'data'), exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    for split, text in (('train', train_text), ('val', val_text)):
      ids = tokenizer.encode(text).astype(dtype)
      save_atomic(_tokens_path(workdir, split), lambda f: np.save(f, ids), 'wb')
    save_atomic(os.path.join(workdir, tokenizers.FILENAME), lambda f: json.dump(tokenizer.to_json(), f))
    save_atomic(meta_path, lambda f: json.dump(meta, f))
  window = window_length(config)
  for split in ('train', 'val'):
    n = len(_load_tokens(_tokens_path(workdir, split)))
    if n < window:
      raise UserError(f'the {split} split has {n} tokens, fewer than a window of {window} '
                      f'(block_size={config.model.block_size}); give more text or lower --config.model.block_size')
  return base.Dataset(_spec(source, tokenizer), lambda: train_iterator(config, workdir),
                      lambda: eval_batches(config, workdir))


@functools.cache
def _load_tokens(path: str) -> np.ndarray:
  return np.load(path, mmap_mode='r')


def _window(path: str, length: int, offset: int) -> dict[str, np.ndarray]:
  return {'tokens': np.asarray(_load_tokens(path)[offset:offset + length], np.int32)}


def _random_window(index: int, rng: np.random.Generator, *, path: str, length: int):
  return _window(path, length, rng.integers(0, len(_load_tokens(path)) - length + 1))


def train_iterator(config, workdir: str):
  """Infinite checkpointable iterator of {'tokens': int32 (batch_size / process_count, window_length)}: this
  process's rows of each global batch (every process draws the whole batch's windows: a few memory copies)."""
  path = _tokens_path(workdir, 'train')
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
  path, length = _tokens_path(workdir, 'val'), window_length(config)
  num_windows = min(config.data.eval_examples, len(_load_tokens(path)) - length + 1)
  num_windows -= num_windows % config.batch_size
  offsets = np.linspace(0, len(_load_tokens(path)) - length, num_windows).astype(np.int64)
  return (grain.MapDataset.source(offsets)
          .map(functools.partial(_window, path, length))
          .batch(config.batch_size, drop_remainder=True)
          .map(base.ProcessRows(config)))
