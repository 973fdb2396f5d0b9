"""Sentence sources (data.modality=sentences): one example per line of Tiny Shakespeare (TFDS) or of a user's
file (data.text_file; first 90% of its characters train, last 10% validate), tokenised once into padded rows.

Every non-empty line, stripped, is one sentence, tokenised with data.tokenizer ('word' or 'bpe', at most
data.vocab_size ids) whose special tokens SPECIALS have ids 0..3 (PAD, BOS, EOS, UNK). A row is
BOS w_1 .. w_n EOS PAD .. PAD of data.max_length ids; a longer sentence keeps its first max_length - 2 tokens.
Spec: modality='sentences', source, vocab_size, tokenizer (its JSON, jaxgen.data.tokenizers.from_json),
max_length, pad_id, bos_id, eos_id, unk_id.
load() writes into the workdir: tokenizer.json, data/{train,val}_sentences.npy (uint16 or int32 (N,
max_length)) and data/sentences_source.json (what they were made from). Batches: {'tokens': int32 (B,
max_length)}.

Training draws a fresh seeded permutation of the training sentences per epoch (data.base.shuffled_epochs),
deterministic and checkpointable (get_state / set_state); each process keeps its rows of every
global batch. Evaluation reads the first data.eval_examples validation sentences in order.
"""
import json
import os

import grain
import numpy as np

from jaxgen.data import base
from jaxgen.data import text
from jaxgen.data import tokenizers
from jaxgen.errors import UserError

SPECIALS = ('[PAD]', '[BOS]', '[EOS]', '[UNK]')
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIALS))
KINDS = ('word', 'bpe')

# synthetic_spec's stand-in corpus (Hamlet III.1): its word tokenizer has the specials and a few dozen words.
STAND_IN = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
"""


def _check(config) -> None:
  if config.data.tokenizer not in KINDS:
    raise UserError(f'data.tokenizer={config.data.tokenizer!r} cannot make sentences; use word or bpe')
  if config.data.max_length < 3:
    raise UserError(f'data.max_length={config.data.max_length} leaves no room for a word between BOS and '
                    'EOS; use 3 or more')


def _spec(source: str, tokenizer: tokenizers.HFTokenizer, max_length: int):
  return base.make_spec(modality='sentences', source=source, vocab_size=tokenizer.vocab_size,
                        tokenizer=json.dumps(tokenizer.to_json()), max_length=max_length,
                        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID)


def synthetic_spec(config):
  """Without the corpus: a word tokenizer of STAND_IN (whatever data.tokenizer names; its vocab_size is its
  own few dozen ids, not data.vocab_size) and data.max_length."""
  _check(config)
  return _spec('synthetic', tokenizers.train('word', STAND_IN, config.data.vocab_size, SPECIALS),
               config.data.max_length)


def sentences(corpus: str) -> list[str]:
  """The non-empty lines of `corpus`, stripped."""
  return [line.strip() for line in corpus.splitlines() if line.strip()]


def rows(tokenizer: tokenizers.HFTokenizer, lines: list[str], max_length: int, dtype=np.int32) -> np.ndarray:
  """(len(lines), max_length): BOS, the first max_length - 2 tokens of each line, EOS, then PAD."""
  out = np.full((len(lines), max_length), PAD_ID, dtype)
  for row, ids in zip(out, tokenizer.encode_batch(lines)):
    ids = ids[:max_length - 2]
    row[0], row[1:len(ids) + 1], row[len(ids) + 1] = BOS_ID, ids, EOS_ID
  return out


def _rows_path(workdir: str, split: str) -> str:
  return os.path.join(workdir, 'data', f'{split}_sentences.npy')


def _check_sizes(config, n_train: int, n_val: int) -> None:
  for split, n in (('train', n_train), ('val', n_val)):
    if n < config.batch_size:
      raise UserError(f'the {split} split has {n} sentences (non-empty lines), fewer than batch_size '
                      f'{config.batch_size}; give more text or lower --config.batch_size')


def load(config, workdir: str) -> base.Dataset:
  """Tokenise the corpus's lines once into workdir/data/*_sentences.npy and save the tokenizer there; the
  spec and iterators."""
  source = text.source_of(config)
  _check(config)
  meta_path = os.path.join(workdir, 'data', 'sentences_source.json')
  meta = {'source': source, 'tokenizer': config.data.tokenizer, 'vocab_size': config.data.vocab_size,
          'max_length': config.data.max_length}
  if text.is_prepared(workdir, meta_path, meta):
    tokenizer = tokenizers.load(workdir)
    _check_sizes(config, *(len(np.load(_rows_path(workdir, s), mmap_mode='r')) for s in ('train', 'val')))
  else:
    if os.path.exists(os.path.join(workdir, 'data', 'source.json')):
      raise UserError(f'{workdir} holds data.modality=text data (data/source.json); use a new --workdir')
    train_text, val_text = text.read_splits(config, source)
    train_lines, val_lines = sentences(train_text), sentences(val_text)
    _check_sizes(config, len(train_lines), len(val_lines))
    tokenizer = tokenizers.train(config.data.tokenizer, '\n'.join(train_lines), config.data.vocab_size, SPECIALS)
    os.makedirs(os.path.join(workdir, 'data'), exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    for split, lines in (('train', train_lines), ('val', val_lines)):
      ids = rows(tokenizer, lines, config.data.max_length, dtype)
      text.save_atomic(_rows_path(workdir, split), lambda f: np.save(f, ids), 'wb')
    text.save_atomic(os.path.join(workdir, tokenizers.FILENAME), lambda f: json.dump(tokenizer.to_json(), f))
    text.save_atomic(meta_path, lambda f: json.dump(meta, f))
  return base.Dataset(_spec(source, tokenizer, config.data.max_length), lambda: train_iterator(config, workdir),
                      lambda: eval_batches(config, workdir))


class _Gather(grain.transforms.Map):
  """Row indices (B,) -> {'tokens': int32 rows[indices]}."""

  def __init__(self, rows: np.ndarray):
    self.rows = rows

  def map(self, indices):
    return {'tokens': np.asarray(self.rows[np.asarray(indices)], np.int32)}


def train_iterator(config, workdir: str):
  """Infinite checkpointable iterator of {'tokens': int32 (batch_size / process_count, max_length)}: this
  process's rows of each global batch of a per-epoch seeded permutation of the training sentences."""
  train = np.load(_rows_path(workdir, 'train'), mmap_mode='r')
  ds = (base.shuffled_epochs(len(train), config.seed)
        .batch(config.batch_size, drop_remainder=True)
        .map(base.ProcessRows(config))
        .map(_Gather(train)))
  return iter(ds.to_iter_dataset(base.read_options(config)))


def eval_batches(config, workdir: str):
  """This process's rows of the global batches of the first data.eval_examples validation sentences, in
  order (a last partial batch dropped)."""
  val = np.load(_rows_path(workdir, 'val'), mmap_mode='r')
  n = min(config.data.eval_examples, len(val))
  return (grain.MapDataset.range(n - n % config.batch_size)
          .batch(config.batch_size, drop_remainder=True)
          .map(base.ProcessRows(config))
          .map(_Gather(val)))
