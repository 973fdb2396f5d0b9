"""Sentence data: word/BPE tokenizers with special tokens, one padded BOS..EOS row per line, checkpointable epochs."""
import json

import numpy as np
import pytest

from jaxgen.config import base_config
from jaxgen.data import sentences, text, tokenizers
from jaxgen.data.sentences import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID
from jaxgen.errors import UserError

MAX_LENGTH = 12
LONG_LINE = 'and thus the native hue of resolution is sicklied over with the pale cast of thought'
PHRASES = ('to be , or not', 'that is the question', 'to die', 'to sleep ; no more', 'ay , there is the rub')
LINES = [f'  {PHRASES[i % 5]} {i}  ' + ('\n' if i % 7 == 0 else '') for i in range(150)]
CORPUS = '\n'.join(LINES[:20] + [LONG_LINE] + LINES[20:] + [LONG_LINE, 'the end']) + '\n'   # blank lines too


def _config(path, tokenizer='word', vocab_size=200):
  config = base_config()
  config.batch_size = 4
  config.data.modality = 'sentences'
  config.data.name = 'text_file'
  config.data.text_file = str(path)
  config.data.tokenizer = tokenizer
  config.data.vocab_size = vocab_size
  config.data.max_length = MAX_LENGTH
  config.data.eval_examples = 10
  return config


@pytest.fixture
def corpus(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_text(CORPUS, encoding='utf-8')
  return path


@pytest.fixture
def prepared(corpus, tmp_path):
  """(config, workdir, dataset) of a word-tokenised corpus."""
  config, workdir = _config(corpus), str(tmp_path / 'run')
  return config, workdir, sentences.load(config, workdir)


def _splits(config):
  """The (train, val) sentences of the corpus."""
  return tuple(sentences.sentences(t) for t in text._read_text_file(config.data.text_file))


def _check_row(row, allowed=()):
  assert row[0] == BOS_ID
  eos = list(row).index(EOS_ID)
  assert not np.isin(row[1:eos], [PAD_ID, BOS_ID, EOS_ID, *allowed]).any()
  assert (row[eos + 1:] == PAD_ID).all()


def test_word_tokenizer_round_trips_known_words_and_maps_unknown_ones_to_unk():
  tokenizer = tokenizers.train('word', CORPUS, 200, SPECIALS)
  line = 'ay , there is the rub 7 ; to be , or not 12'
  ids = tokenizer.encode(line)
  assert ids.dtype == np.int32 and UNK_ID not in ids and ids.min() >= len(SPECIALS)
  assert tokenizer.decode(ids) == line
  assert tokenizer.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == line        # specials are not shown
  assert list(tokenizer.encode('to be zyzzyva,')) == [*tokenizer.encode('to be'), UNK_ID, tokenizer.token_id(',')]
  assert EOS_ID not in tokenizer.encode('to be [EOS]')                           # text cannot forge specials
  with pytest.raises(UserError, match='zyzzyva'):
    tokenizer.token_id('zyzzyva')


@pytest.mark.parametrize('kind,vocab_size', [('word', 200), ('bpe', 300)])
def test_special_tokens_get_ids_0_to_3_in_order(kind, vocab_size):
  tokenizer = tokenizers.train(kind, CORPUS, vocab_size, SPECIALS)
  assert [tokenizer.token_id(t) for t in SPECIALS] == [0, 1, 2, 3]
  assert len(SPECIALS) < tokenizer.vocab_size <= vocab_size
  restored = tokenizers.from_json(json.loads(json.dumps(tokenizer.to_json())))
  assert restored.to_json()['type'] == kind and [restored.token_id(t) for t in SPECIALS] == [0, 1, 2, 3]


def test_rows_are_bos_words_eos_then_padding_and_long_lines_are_truncated(prepared):
  config, workdir, _ = prepared
  stored = np.load(f'{workdir}/data/train_sentences.npy')
  assert stored.dtype == np.uint16 and stored.shape == (len(_splits(config)[0]), MAX_LENGTH)
  it = sentences.train_iterator(config, workdir)
  for _ in range(len(stored) // config.batch_size + 1):
    batch = next(it)['tokens']
    assert batch.shape == (config.batch_size, MAX_LENGTH) and batch.dtype == np.int32
    for row in batch:
      _check_row(row)
  tokenizer = tokenizers.load(workdir)
  long_rows = stored[(stored != PAD_ID).all(axis=1)]                            # the long line trains once
  np.testing.assert_array_equal(long_rows, [[BOS_ID, *tokenizer.encode(LONG_LINE)[:MAX_LENGTH - 2], EOS_ID]])


def test_one_epoch_of_training_rows_is_the_training_sentences(prepared):
  config, workdir, _ = prepared
  train_lines = _splits(config)[0]
  n = len(train_lines)
  want = sentences.rows(tokenizers.load(workdir), train_lines, MAX_LENGTH)
  it = sentences.train_iterator(config, workdir)
  stream = np.concatenate([next(it)['tokens'] for _ in range(2 * n // config.batch_size)])
  epoch0, epoch1 = stream[:n], stream[n:2 * n]
  assert sorted(map(tuple, epoch0)) == sorted(map(tuple, want))
  assert not np.array_equal(epoch0, want)                                         # shuffled ...
  assert not np.array_equal(epoch0[:len(epoch1)], epoch1)                         # ... afresh each epoch


def test_train_iterator_state_round_trip_restores_the_next_batches(prepared):
  config, workdir, _ = prepared
  it = sentences.train_iterator(config, workdir)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)['tokens'] for _ in range(3)]
  restored = sentences.train_iterator(config, workdir)
  restored.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(restored)['tokens'], want)
  fresh = sentences.train_iterator(config, workdir)                               # a new run repeats the stream
  np.testing.assert_array_equal([next(fresh)['tokens'] for _ in range(4)][3], expected[0])


def test_eval_batches_are_the_first_validation_sentences_in_order(prepared):
  config, workdir, _ = prepared
  val_lines = _splits(config)[1]
  assert len(val_lines) > config.data.eval_examples
  batches = [b['tokens'] for b in sentences.eval_batches(config, workdir)]
  assert len(batches) == config.data.eval_examples // config.batch_size
  want = sentences.rows(tokenizers.load(workdir), val_lines[:len(batches) * config.batch_size], MAX_LENGTH)
  np.testing.assert_array_equal(np.concatenate(batches), want)
  assert all(b.dtype == np.int32 for b in batches)


def test_a_second_load_with_another_tokenizer_needs_a_new_workdir(prepared):
  config, workdir, _ = prepared
  sentences.load(config, workdir)                                                 # the same config reuses it
  config.data.tokenizer = 'bpe'
  with pytest.raises(UserError, match='use a new --workdir'):
    sentences.load(config, workdir)
  config.data.tokenizer, config.data.max_length = 'word', MAX_LENGTH + 1
  with pytest.raises(UserError, match='use a new --workdir'):
    sentences.load(config, workdir)


def test_the_spec_tokenizer_json_rebuilds_a_tokenizer_that_behaves_the_same(prepared):
  config, workdir, dataset = prepared
  spec, saved = dataset.spec, tokenizers.load(workdir)
  assert (spec.modality, spec.max_length, spec.vocab_size) == ('sentences', MAX_LENGTH, saved.vocab_size)
  assert (spec.pad_id, spec.bos_id, spec.eos_id, spec.unk_id) == (0, 1, 2, 3)
  rebuilt = tokenizers.from_json(json.loads(spec.tokenizer))
  lines = _splits(config)[0] + ['unseen words , unseen']
  for a, b in zip(rebuilt.encode_batch(lines), saved.encode_batch(lines)):
    np.testing.assert_array_equal(a, b)
  stored = np.load(f'{workdir}/data/train_sentences.npy')
  assert [rebuilt.decode(r) for r in stored] == [saved.decode(r) for r in stored]


def test_bpe_sentences_decode_back_to_the_lines(corpus, tmp_path):
  config = _config(corpus, tokenizer='bpe', vocab_size=300)
  workdir = str(tmp_path / 'bpe')
  dataset = sentences.load(config, workdir)
  assert json.loads(dataset.spec.tokenizer)['type'] == 'bpe'
  tokenizer, stored = tokenizers.load(workdir), np.load(f'{workdir}/data/val_sentences.npy')
  short = [(r, s) for r, s in zip(stored, _splits(config)[1]) if r[-1] == PAD_ID]
  assert short
  for row, line in short:
    _check_row(row, allowed=[UNK_ID])
    assert tokenizer.decode(row) == line


def test_synthetic_spec_needs_no_data_and_keeps_its_own_vocabulary(tmp_path):
  config = _config(tmp_path / 'absent.txt', tokenizer='bpe', vocab_size=5000)
  spec = sentences.synthetic_spec(config)
  tokenizer = tokenizers.from_json(json.loads(spec.tokenizer))
  assert (spec.modality, spec.source, spec.max_length) == ('sentences', 'synthetic', MAX_LENGTH)
  assert len(SPECIALS) < spec.vocab_size == tokenizer.vocab_size < config.data.vocab_size
  assert [tokenizer.token_id(t) for t in SPECIALS] == [spec.pad_id, spec.bos_id, spec.eos_id, spec.unk_id]


def test_bad_tokenizer_max_length_or_too_few_lines_are_user_errors(corpus, tmp_path):
  for change, match in ((dict(tokenizer='char'), 'word or bpe'), (dict(max_length=2), 'max_length')):
    config = _config(corpus)
    config.data.update(change)
    with pytest.raises(UserError, match=match):
      sentences.load(config, str(tmp_path / 'run'))
  (tmp_path / 'short.txt').write_text('one line\n\n  \nanother\n')
  with pytest.raises(UserError, match='batch_size'):
    sentences.load(_config(tmp_path / 'short.txt'), str(tmp_path / 'run'))
