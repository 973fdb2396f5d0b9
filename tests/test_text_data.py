"""Text data: tokenizers round-trip, one-time tokenisation into the workdir, checkpointable random windows."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.gpt_shakespeare_char import get_config
from jaxgen.data import text, tokenizers
from jaxgen.errors import UserError

CORPUS = ''.join(f'Line {i}: to be, or not to be; that is the question {i * i % 97}.\n' for i in range(400))
UNICODE = 'naïve café — ünïcödé ✓ 東京\n'


@pytest.fixture
def prepared(tmp_path):
  """(config, workdir) of the smoke config set up on a synthetic text file."""
  path = tmp_path / 'corpus.txt'
  path.write_text(CORPUS, encoding='utf-8')
  config = get_config('smoke')
  config.data.text_file = str(path)
  workdir = str(tmp_path / 'run')
  return config, workdir, text.load(config, workdir)


@pytest.mark.parametrize('kind', ['char', 'byte', 'bpe'])
def test_tokenizers_round_trip_and_survive_json(kind):
  training_text = CORPUS + (UNICODE if kind != 'char' else '')
  tokenizer = tokenizers.train(kind, training_text, bpe_vocab_size=300)
  sample = CORPUS[:500] + (UNICODE + 'unseen wörds ☃' if kind != 'char' else '')
  ids = tokenizer.encode(sample)
  assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < tokenizer.vocab_size
  assert tokenizer.decode(ids) == sample
  restored = tokenizers.from_json(json.loads(json.dumps(tokenizer.to_json())))   # plain JSON, no pickle
  np.testing.assert_array_equal(restored.encode(sample), ids)


def test_vocab_sizes_and_bpe_compresses():
  assert tokenizers.train('char', 'hello', 0).vocab_size == 4
  assert tokenizers.train('byte', 'hello', 0).vocab_size == 256
  bpe = tokenizers.train('bpe', CORPUS, bpe_vocab_size=400)
  assert 256 < bpe.vocab_size <= 400 and len(bpe.encode(CORPUS)) < len(CORPUS.encode()) / 2


def test_char_tokenizer_rejects_unknown_characters():
  with pytest.raises(UserError, match="'z'"):
    tokenizers.train('char', 'abc', 0).encode('abz')


def test_setup_tokenises_text_file_once_into_workdir(prepared):
  config, workdir, dataset = prepared
  split = int(len(CORPUS) * 0.9)
  tokenizer = tokenizers.load(workdir)
  train = np.load(f'{workdir}/data/train.npy', mmap_mode='r')          # no pickle needed
  val = np.load(f'{workdir}/data/val.npy', mmap_mode='r')
  np.testing.assert_array_equal(train, tokenizer.encode(CORPUS[:split]))
  np.testing.assert_array_equal(val, tokenizer.encode(CORPUS[split:]))
  assert dataset.spec.vocab_size == tokenizer.vocab_size == len(set(CORPUS[:split]))
  assert tokenizers.from_json(json.loads(dataset.spec.tokenizer)).chars == tokenizer.chars
  assert 'vocab_size' not in config.model and config.data.name == 'tiny_shakespeare'   # the config is as given
  text.load(config, workdir)                                          # second call reuses the files
  config.data.tokenizer = 'byte'
  with pytest.raises(UserError, match='new --workdir'):
    text.load(config, workdir)


def test_training_windows_are_contiguous_slices_of_the_train_split(prepared):
  config, workdir, _ = prepared
  train = np.load(f'{workdir}/data/train.npy')
  batch = next(text.train_iterator(config, workdir))['tokens']
  T = config.model.block_size
  assert batch.shape == (config.batch_size, T + 1) and batch.dtype == np.int32
  windows = np.lib.stride_tricks.sliding_window_view(train, T + 1)
  for row in batch:
    assert (windows == row).all(axis=1).any()


def test_train_iterator_restores_from_its_state(prepared):
  config, workdir, _ = prepared
  it = text.train_iterator(config, workdir)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)['tokens'] for _ in range(3)]
  restored = text.train_iterator(config, workdir)
  restored.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(restored)['tokens'], want)
  fresh = text.train_iterator(config, workdir)                         # and a new run repeats the stream
  first = [next(fresh)['tokens'] for _ in range(4)]
  assert not np.array_equal(first[0], first[1])
  np.testing.assert_array_equal(first[3], expected[0])


def test_eval_batches_are_a_fixed_set_of_validation_windows(prepared):
  config, workdir, _ = prepared
  val = np.load(f'{workdir}/data/val.npy')
  batches = [b['tokens'] for b in text.eval_batches(config, workdir)]
  again = [b['tokens'] for b in text.eval_batches(config, workdir)]
  assert len(batches) == config.data.eval_examples // config.batch_size
  np.testing.assert_array_equal(np.stack(batches), np.stack(again))
  np.testing.assert_array_equal(batches[0][0], val[:config.model.block_size + 1])   # first window starts at 0
  np.testing.assert_array_equal(batches[-1][-1], val[-(config.model.block_size + 1):])  # last one ends the split


def test_text_shorter_than_a_window_is_a_user_error(tmp_path):
  (tmp_path / 'short.txt').write_text('too short\n' * 3)
  config = get_config('smoke')
  config.data.text_file = str(tmp_path / 'short.txt')
  with pytest.raises(UserError, match='block_size'):
    text.load(config, str(tmp_path / 'run'))


def test_missing_text_file_is_a_user_error(tmp_path):
  config = get_config('smoke')
  config.data.text_file = str(tmp_path / 'nope.txt')
  with pytest.raises(UserError, match='text_file'):
    text.load(config, str(tmp_path / 'run'))


def test_tiny_shakespeare_download_failure_names_manual_dir(tmp_path, monkeypatch):
  """No network in tests: a failing download must say how to prepare offline."""
  def fail(self, **kwargs):
    raise ConnectionError('no network')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', fail)
  config = get_config('smoke')
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(UserError, match='manual_dir'):
    text.load(config, str(tmp_path / 'run'))


def test_a_damaged_tokenizer_file_is_one_line_error(prepared):
  config, workdir, _ = prepared
  with open(f'{workdir}/tokenizer.json', 'r+') as f:
    f.truncate(10)
  with pytest.raises(UserError, match=r'tokenizer.json cannot be read as a tokenizer \(.*\): it is damaged; '
                                      r'restore it, or use a new --workdir'):
    text.load(config, workdir)


# ----------------------------------------------------------------- token files (nanoGPT's train.bin / val.bin)

def token_file_config(config, tmp_path, workdir):
  """The same data as `prepared` as nanoGPT's uint16 token files, read with data.name=token_file."""
  folder = tmp_path / 'bins'
  folder.mkdir(exist_ok=True)
  for split in ('train', 'val'):
    np.load(f'{workdir}/data/{split}.npy').astype(np.uint16).tofile(folder / f'{split}.bin')
  config = config.copy_and_resolve_references()
  config.data.name, config.data.manual_dir, config.data.text_file = 'token_file', str(folder), None
  config.data.tokenizer = f'{workdir}/tokenizer.json'            # the tokenizer that made the ids
  return config


def test_token_file_data_equal_the_text_path_on_the_same_tokens(prepared, tmp_path):
  config, workdir, dataset = prepared
  token_config = token_file_config(config, tmp_path, workdir)
  token_dataset = text.load(token_config, str(tmp_path / 'token_run'))
  assert token_dataset.spec.vocab_size == dataset.spec.vocab_size
  assert token_dataset.spec.tokenizer == dataset.spec.tokenizer
  assert not (tmp_path / 'token_run' / 'data' / 'train.npy').exists()     # read in place, never copied
  it, token_it = dataset.train_iterator(), token_dataset.train_iterator()
  for _ in range(5):
    np.testing.assert_array_equal(next(token_it)['tokens'], next(it)['tokens'])
  for a, b in zip(dataset.eval_batches(), token_dataset.eval_batches(), strict=True):
    np.testing.assert_array_equal(a['tokens'], b['tokens'])
  assert isinstance(text.split_tokens(token_config, str(tmp_path / 'token_run'), 'train'), np.memmap)


def test_token_file_ids_outside_the_vocabulary_or_missing_files_are_refused(prepared, tmp_path):
  config, workdir, dataset = prepared
  token_config = token_file_config(config, tmp_path, workdir)
  np.array([0, 1, dataset.spec.vocab_size], np.uint16).tofile(tmp_path / 'bins' / 'val.bin')
  with pytest.raises(UserError, match=rf'val.bin holds token id {dataset.spec.vocab_size}, outside the vocabulary'):
    text.load(token_config, str(tmp_path / 'a'))
  (tmp_path / 'bins' / 'val.bin').unlink()
  with pytest.raises(UserError, match=r'val.bin not found: data.manual_dir of data.name=token_file'):
    text.load(token_config, str(tmp_path / 'b'))
  token_config.data.tokenizer = 'char'
  with pytest.raises(UserError, match=r"data.name=token_file holds token ids: data.tokenizer='char' has to be trained"):
    text.load(token_config, str(tmp_path / 'c'))
