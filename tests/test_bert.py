"""BERT family: MLM masking (15% / 80-10-10), loss on the selected positions only, bidirectional and
padding-invariant encoder, fill-mask of a memorised corpus, pseudo-perplexity, encoder API, smoke run + resume."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from configs import bert_shakespeare_char
from jaxgen import data, evaluators, stages
from jaxgen.data import text, tokenizers
from jaxgen.errors import UserError
from jaxgen.families import bert
from jaxgen.models.gpt import BERT, GPT
from tests.support.runs import preempted

SPECIALS = bert.SPECIALS                         # [PAD] [CLS] [SEP] [MASK]: ids 0..3
PAD, CLS, SEP, MASK = range(4)
ALPHABET = 'abcdefghijklmnopqrstuvwxyz\n' * 40     # every character follows from either neighbour


def four_sigma(p: float, n: int) -> float:
  return 4 * np.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------------------ tokenizers

@pytest.mark.parametrize('kind', ['char', 'byte', 'bpe'])
def test_every_tokenizer_gives_the_special_tokens_ids_0_to_3(kind):
  corpus = 'to be, or not to be: [MASK] is the question.\n' * 20     # the name is plain text
  tokenizer = tokenizers.train(kind, corpus, 300, SPECIALS)
  restored = tokenizers.from_json(json.loads(json.dumps(tokenizer.to_json())))
  for t in (tokenizer, restored):
    assert t.special_tokens == SPECIALS and [t.token_id(s) for s in SPECIALS] == [0, 1, 2, 3]
    ids = t.encode('not to [MASK] be')
    assert ids.min() >= 4 and t.decode(ids) == 'not to [MASK] be'        # a text cannot forge [MASK]
    assert t.decode([CLS, *ids, SEP, PAD, PAD]) == 'not to [MASK] be'     # specials are not shown
  with pytest.raises(UserError, match='not in the'):
    tokenizer.token_id('[UNK]')


def test_tokenizers_without_special_tokens_are_unchanged():
  """GPT's vocabulary, ids and tokenizer JSON stay what they were."""
  char = tokenizers.train('char', 'hello', 0)
  assert char.to_json() == {'type': 'char', 'chars': 'ehlo'} and char.encode('hole').tolist() == [1, 3, 2, 0]
  byte = tokenizers.train('byte', 'hello', 0)
  assert byte.to_json() == {'type': 'byte'} and byte.vocab_size == 256 and byte.encode('A').tolist() == [65]


def test_text_source_gives_windows_for_cls_text_sep(tmp_path):
  (tmp_path / 'corpus.txt').write_text(ALPHABET)
  config = smoke_config(tmp_path)
  dataset = text.load(config, str(tmp_path / 'run'))
  tokenizer = tokenizers.from_json(json.loads(dataset.spec.tokenizer))
  assert tokenizer.special_tokens == SPECIALS and dataset.spec.vocab_size == 4 + 27
  batch = next(dataset.train_iterator())['tokens']
  assert batch.shape == (config.batch_size, config.model.block_size - 2) and batch.min() >= 4
  assert next(iter(dataset.eval_batches()))['tokens'].shape == batch.shape


# ------------------------------------------------------------------------------------------ MLM math

def test_masking_selects_15_percent_of_text_tokens_and_replaces_80_10_10():
  rng = np.random.default_rng(0)
  B, T, V = 4000, 40, 104
  lengths = rng.integers(1, T - 1, B)                                 # text tokens per row, then [SEP], [PAD]s
  position = np.arange(T)[None]
  tokens = np.where(position <= lengths[:, None], rng.integers(4, V, (B, T)), PAD)
  tokens[:, 0], tokens[np.arange(B), lengths + 1] = CLS, SEP
  maskable = tokens >= 4
  inputs, selected = map(np.asarray, jax.jit(bert.mlm_mask, static_argnums=(3, 4, 5))(
      jax.random.key(0), jnp.asarray(tokens, jnp.int32), jnp.asarray(maskable), MASK, 4, V))
  assert not (selected & ~maskable).any() and (inputs[~selected] == tokens[~selected]).all()   # specials untouched
  n = maskable.sum()
  assert abs(selected.sum() / n - 0.15) < four_sigma(0.15, n)
  counts = selected.sum(1)                                            # floor(0.15 n + u) per row
  assert ((counts == np.floor(0.15 * lengths)) | (counts == np.floor(0.15 * lengths) + 1)).all()
  k = selected.sum()
  chosen, original = inputs[selected], tokens[selected]
  masked, kept = chosen == MASK, chosen == original
  assert abs(masked.mean() - 0.8) < four_sigma(0.8, k)
  p_kept = 0.1 + 0.1 / (V - 4)                                        # a random token may be the original one
  assert abs(kept.mean() - p_kept) < four_sigma(p_kept, k)
  assert abs((~masked & ~kept).mean() - (0.1 - 0.1 / (V - 4))) < four_sigma(0.1, k)
  assert chosen[~masked].min() >= 4                                   # random tokens are never special


def test_loss_and_accuracy_count_only_the_selected_positions():
  logits = jax.random.normal(jax.random.key(0), (3, 7, 11))
  targets = jax.random.randint(jax.random.key(1), (3, 7), 0, 11)
  selected = jax.random.bernoulli(jax.random.key(2), 0.3, (3, 7))
  loss, accuracy = bert.mlm_loss(logits, targets, selected)
  other = jnp.where(selected[..., None], logits, 50.0 * jax.random.normal(jax.random.key(3), logits.shape))
  np.testing.assert_allclose(bert.mlm_loss(other, targets, selected), (loss, accuracy), rtol=1e-6)
  log_p = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1)[..., 0]
  s = np.asarray(selected)
  assert float(loss) == pytest.approx(-log_p[s].mean(), rel=1e-5)
  assert float(accuracy) == pytest.approx((np.argmax(logits, -1) == targets)[s].mean())


def test_short_sequences_end_in_sep_then_padding():
  tokens = bert.with_specials(jnp.arange(4, 14)[None].repeat(500, 0), CLS, SEP)       # (500, 12)
  short, real = map(np.asarray, bert.shorten(jax.random.key(0), tokens, 0.5, SEP, PAD))
  n = real.sum(1) - 2                                                 # text tokens kept
  assert 0.4 < (n < 10).mean() < 0.6 and n.min() >= 1
  for row, k in zip(short, n):
    assert row.tolist() == [CLS, *range(4, 4 + k), SEP] + [PAD] * (10 - k)


def test_sentence_pairs_are_cls_a_sep_b_sep_with_segments():
  windows = jnp.arange(200 * 9).reshape(200, 9) + 4                   # A: 4 tokens, B: the next 4
  tokens, segments, is_next = map(np.asarray, bert.sentence_pairs(jax.random.key(0), windows, CLS, SEP))
  assert tokens.shape == segments.shape == (200, 11) and 0.35 < is_next.mean() < 0.65
  w = np.asarray(windows)
  for b in range(200):
    second = w[b, 4:8] if is_next[b] else w[b - 1, 4:8]
    assert tokens[b].tolist() == [CLS, *w[b, :4], SEP, *second, SEP]
  assert segments[0].tolist() == [0] * 6 + [1] * 5


# ------------------------------------------------------------------------------------------ the model

V, W = 20, 16


@pytest.fixture(scope='module')
def encoder():
  """(features(tokens, mask), params) of a tiny BERT."""
  model = BERT(GPT(vocab_size=V, block_size=W, num_layers=2, num_heads=2, embed_dim=32, causal=False))
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, W), jnp.int32))['params'])
  return jax.jit(lambda tokens, mask: model.apply({'params': params}, tokens, mask)[1]), params


def test_changing_a_later_token_changes_earlier_features(encoder):
  features, _ = encoder
  tokens = jax.random.randint(jax.random.key(1), (2, W), 4, V)
  mask = jnp.ones((2, W), bool)
  before = features(tokens, mask)
  for j in (5, W - 1):
    after = features(tokens.at[:, j].set(tokens[:, j] % (V - 4) + 4), mask)
    assert np.abs(after[:, :j] - before[:, :j]).max(axis=-1).min() > 1e-4     # every earlier position sees it


def test_padding_does_not_change_the_features_of_real_tokens(encoder):
  features, _ = encoder
  real = np.asarray(jax.random.randint(jax.random.key(2), (1, 9), 4, V))
  alone = features(jnp.asarray(real), jnp.ones((1, 9), bool))                 # T = 9, no padding
  padded = np.concatenate([real.repeat(2, 0), np.array([[PAD] * 7, [5, 9, 3, 17, 11, 0, 2]])], 1)  # T = 16
  mask = np.arange(W)[None] < np.array([[9], [9]])
  out = features(jnp.asarray(padded), jnp.asarray(mask))
  np.testing.assert_allclose(out[:, :9], np.repeat(alone, 2, 0), atol=1e-5)


def test_gpt_parameters_are_unchanged_and_the_encoder_adds_only_the_mlm_head():
  gpt = GPT(vocab_size=V, block_size=W, num_layers=2, num_heads=2, embed_dim=32)
  shapes = lambda model: jax.tree.map(lambda x: x.shape, nn.meta.unbox(
      jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, W), jnp.int32))['params']))
  causal = shapes(gpt)
  assert sorted(causal) == ['h_0', 'h_1', 'ln_f', 'wpe', 'wte']
  assert sorted(causal['h_0']) == ['attn', 'c_fc', 'c_proj', 'ln_1', 'ln_2']
  encoder = shapes(gpt.clone(causal=False))
  assert {k: v for k, v in encoder.items() if k in causal} == causal
  assert sorted(set(encoder) - set(causal)) == ['mlm_bias', 'mlm_dense', 'mlm_ln']
  with_segments = shapes(BERT(gpt.clone(causal=False, num_segments=2), nsp=True))
  assert with_segments['encoder']['wtt']['embedding'] == (2, 32) and with_segments['nsp_head']['kernel'] == (32, 2)


# ------------------------------------------------------------------------------------------ a trained model

def smoke_config(tmp_path, **overrides):
  path = tmp_path / 'corpus.txt'
  path.write_text(ALPHABET)
  config = bert_shakespeare_char.get_config('smoke')
  config.data.text_file = str(path)
  for key, value in overrides.items():
    config.update_from_flattened_dict({key: value})
  return config


@pytest.fixture(scope='module')
def fitted(tmp_path_factory):
  """(config, family, state, dataset) after 400 steps on the alphabet: it has memorised the corpus (half the
  sequences cut short, so that it knows short texts as well; seeds 0-7 all restore every test text)."""
  tmp_path = tmp_path_factory.mktemp('bert')
  config = smoke_config(tmp_path, **{'model.block_size': 16, 'model.embed_dim': 64, 'model.num_heads': 4,
                                     'model.dropout': 0.0, 'batch_size': 32, 'learning_rate': 3e-3,
                                     'optim.warmup_steps': 10, 'num_train_steps': 400, 'data.eval_examples': 64,
                                     'mlm.short_seq_prob': 0.5})
  dataset = text.load(config, str(tmp_path / 'run'))
  family = bert.build(config, dataset.spec)
  state = nn.meta.unbox(jax.jit(family.init)(jax.random.key(0)))
  # 400 steps: XLA's backend optimisation (off in the tests, see conftest) pays for itself here
  step = jax.jit(family.train_step, compiler_options={'xla_backend_optimization_level': 2})
  batches = dataset.train_iterator()
  for i in range(config.num_train_steps):
    state, _ = step(state, next(batches), jax.random.key(i))
  return config, family, state, dataset


@pytest.mark.parametrize('iterative', [False, True])
def test_fill_restores_the_masked_characters_of_a_memorised_corpus(fitted, iterative):
  _, family, state, _ = fitted
  fill = family.make_sampler(state)
  for masked, original in (('ghij[MASK]lmn[MASK]pqrst', 'ghijklmnopqrst'),
                           ('[MASK]z\nab[MASK][MASK]efghijk', 'yz\nabcdefghijk'),
                           ('pq[MASK]stu', 'pqrstu')):                # shorter than a window: padded
    assert fill(jax.random.key(0), masked, top_k=1, iterative=iterative) == [original]
  texts = fill(jax.random.key(1), 'abc[MASK][MASK]f', num=20, temperature=3.0)
  assert len(texts) == 20 and all(t[:3] == 'abc' and t[-1] == 'f' and len(t) == 6 for t in texts)
  assert len(set(texts)) > 1                                          # sampled, not argmax


@pytest.mark.parametrize('options', [dict(), dict(text='[MASK]', top_k=0), dict(text='[MASK]', num=0),
                                     dict(text='[MASK]', temperature=0.0), dict(text='a' * 15),
                                     dict(text='[MASK]', prompt='a'), dict(text='ABC[MASK]')])
def test_fill_rejects_bad_options(fitted, options):
  _, family, state, _ = fitted
  with pytest.raises(UserError):
    family.make_sampler(state)(jax.random.key(0), **options)


def test_pseudo_perplexity_masks_each_position_in_turn(fitted):
  """PPPL = exp(-mean_t log p(x_t | x_\\t)) equals masking the positions one forward pass at a time; the
  memorised corpus scores far below a uniform guess."""
  config, family, state, dataset = fitted
  ctx = evaluators.Context(config, dataset.spec, None, state, None, None, dataset.eval_batches, 2, 0, 0, {})
  record = family.evaluators['pseudo_perplexity'](ctx)
  assert record['pppl_windows'] == 2 and record['pppl_tokens'] == 2 * 14
  model = bert.make_model(config, dataset.spec.vocab_size)
  forward = jax.jit(lambda x: model.apply({'params': state.params}, x)[0])
  lls = []
  for window in np.concatenate([b['tokens'] for b in dataset.eval_batches()])[:2]:
    tokens = np.array([CLS, *window, SEP])
    for t in range(1, 15):
      log_p = jax.nn.log_softmax(forward(jnp.asarray(tokens).at[t].set(MASK)[None])[0, t])
      lls.append(float(log_p[tokens[t]]))
  assert record['pseudo_perplexity'] == pytest.approx(np.exp(-np.mean(lls)), rel=1e-4)
  assert record['pseudo_perplexity'] < 3                               # 27 characters: 27 for a uniform guess


def test_encoder_features_mask_and_gradients(fitted):
  config, family, state, _ = fitted
  encode = family.make_encoder(state)
  features, mask = encode(['abc', 'xyz\nabcdefghijklmnopq'])          # the second is cut to 14 characters
  assert features.shape == (2, 16, 64) and features.dtype == jnp.float32
  assert mask.dtype == jnp.bool_ and np.asarray(mask).sum(1).tolist() == [5, 16]
  other, _ = encode(['abc', 'x'])
  np.testing.assert_allclose(features[0, :5], other[0, :5], atol=1e-5)       # padding is unseen
  tokens, mask = encode.tokenize(['abc'])
  grads = jax.jit(jax.grad(lambda p: encode.apply(p, tokens, mask)[0, 0].sum()))(encode.params)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and max(norms) > 0


def test_next_sentence_prediction_adds_its_loss():
  config = bert_shakespeare_char.get_config('smoke')
  config.model.nsp = True
  tokenizer = tokenizers.CharTokenizer('abcdefghijklmnop', SPECIALS)
  spec = data.make_spec(modality='text', source='synthetic', vocab_size=tokenizer.vocab_size,
                       tokenizer=json.dumps(tokenizer.to_json()))
  family = bert.build(config, spec)
  state = jax.eval_shape(family.init, jax.random.key(0))
  batch = {'tokens': jax.ShapeDtypeStruct((8, config.model.block_size - 2), jnp.int32)}
  _, metrics = jax.eval_shape(family.train_step, nn.meta.unbox(state), batch, jax.random.key(0))
  assert {'loss', 'mlm_loss', 'nsp_loss', 'nsp_accuracy', 'accuracy'} <= set(metrics)


# ------------------------------------------------------------------------------------------ end to end

def test_smoke_run_checkpoints_previews_resumes_bit_exactly_and_loads(tmp_path):
  config = smoke_config(tmp_path)
  straight = stages.train_and_evaluate(config, str(tmp_path / 'straight'))
  preempted(config, tmp_path / 'resumed', stop_at=3)
  resumed = stages.train_and_evaluate(config, str(tmp_path / 'resumed'))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  workdir = str(tmp_path / 'straight')
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  preview = open(os.path.join(workdir, 'samples', 'step_000006.txt')).read()
  assert preview.count('masked:   ') == preview.count('filled:   ') == config.num_preview and '[MASK]' in preview
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert {'eval/mlm_loss', 'eval/accuracy'} <= set(rows[-1]) and {'mlm_loss', 'accuracy'} <= set(rows[0])

  fill = jaxgen.load_sampler(workdir)
  out = fill(jax.random.key(0), 'abc[MASK]e', num=2)
  assert len(out) == 2 and all(len(t) == 5 and t.startswith('abc') for t in out)
  encode, tokenizer = jaxgen.load_encoder(workdir)
  features, mask = encode(['abc', 'abcdefgh'])
  assert features.shape == (2, config.model.block_size, config.model.embed_dim)
  assert np.asarray(mask).sum(1).tolist() == [5, 10] and tokenizer.decode(tokenizer.encode('ab')) == 'ab'
