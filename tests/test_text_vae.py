"""Sentence VAE family: KL annealing, word dropout, free bits, IWAE >= ELBO, homotopy, smoke run and resume."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from configs import vae_text_shakespeare
from jaxgen import stages
from jaxgen.data import sentences
from jaxgen.families import text_vae
from jaxgen.train import state as train_state
from tests.support.runs import preempted

PHRASES = ('to be or not to be', 'that is the question', 'to die to sleep', 'no more and by a sleep',
           'the heart ache and the thousand', 'natural shocks that flesh is heir to')
CORPUS = '\n'.join(PHRASES[i % len(PHRASES)] for i in range(120)) + '\n'


def smoke_config(tmp_path, **overrides):
  path = tmp_path / 'corpus.txt'
  path.write_text(CORPUS)
  config = vae_text_shakespeare.get_config('smoke')
  config.data.text_file = str(path)
  for key, value in overrides.items():
    config.update_from_flattened_dict({key: value})
  return config


# ------------------------------------------------------------------------------------------ the math

def test_kl_annealing_endpoints():
  for t, want in ((0, 0.0), (50, 0.5), (100, 1.0), (400, 1.0)):
    assert float(text_vae.kl_weight(t, 100, 'linear')) == pytest.approx(want)
  assert float(text_vae.kl_weight(0, 100, 'logistic')) == pytest.approx(1 / (1 + np.exp(5)), rel=1e-5)
  assert float(text_vae.kl_weight(50, 100, 'logistic')) == pytest.approx(0.5)
  assert float(text_vae.kl_weight(100, 100, 'logistic')) == pytest.approx(1 / (1 + np.exp(-5)), rel=1e-5)
  assert float(text_vae.kl_weight(0, 100, 'none')) == 1.0


def test_word_dropout_rate_matches_its_setting_and_spares_bos_and_padding():
  unk, pad, rate = 3, 0, 0.3
  inputs = jnp.concatenate([jnp.full((4000, 1), 1), jnp.full((4000, 15), 7), jnp.full((4000, 4), pad)], 1)
  out = np.asarray(text_vae.word_dropout(jax.random.key(0), inputs, rate, unk, pad))
  dropped = out[:, 1:16] == unk
  n = dropped.size
  assert abs(dropped.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)        # binomial: 4 sigma
  assert (out[:, 0] == 1).all() and (out[:, 16:] == pad).all()
  assert (out[:, 1:16][~dropped] == 7).all()


def test_log_likelihood_ignores_padding_targets():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 11))
  targets = jnp.array([[4, 5, 2, 0, 0], [4, 5, 2, 0, 0]])
  other = logits.at[:, 3:].set(100.0)                                    # anything at PAD targets
  np.testing.assert_allclose(text_vae.sentence_log_likelihood(logits, targets, 0),
                             text_vae.sentence_log_likelihood(other, targets, 0), rtol=1e-6)
  log_p = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(text_vae.sentence_log_likelihood(logits, targets, 0)[0],
                             log_p[0, 0, 4] + log_p[0, 1, 5] + log_p[0, 2, 2], rtol=1e-6)


def test_free_bits_floor_each_dimension_of_the_batch_mean_kl():
  kl = jnp.array([[0.0, 2.0, 0.5], [0.2, 4.0, 0.5]])                    # batch means 0.1, 3.0, 0.5
  assert float(text_vae.kl_term(kl, 0.0)) == pytest.approx(3.6)
  assert float(text_vae.kl_term(kl, 1.0)) == pytest.approx(1.0 + 3.0 + 1.0)


def test_detokenize_joins_punctuation_and_contractions():
  assert text_vae.detokenize("Alas , I was a woman ' s sake ; I ' ll go !") == "Alas, I was a woman's sake; I'll go!"


def test_active_units_count_dimensions_whose_posterior_means_vary():
  means = np.stack([np.linspace(-1, 1, 100), np.full(100, 0.3), 0.05 * np.linspace(-1, 1, 100)], 1)
  assert text_vae.active_units(means) == 1                              # var 0.34 > 0.01 > 0 and 8.5e-4


# ------------------------------------------------------------------------------------------ a trained model

@pytest.fixture(scope='module')
def fitted(tmp_path_factory):
  """(family, state, spec) after 150 steps on the six-phrase corpus: q(z|x) tells the phrases apart."""
  tmp_path = tmp_path_factory.mktemp('svae')
  config = smoke_config(tmp_path, **{'model.hidden': 32, 'model.embed_dim': 16, 'model.word_dropout': 0.0,
                                     'model.kl_anneal_steps': 100, 'learning_rate': 1e-2})
  dataset = sentences.load(config, str(tmp_path / 'run'))
  family = text_vae.build(config, dataset.spec)
  state = jax.jit(family.init)(jax.random.key(0))
  # 150 runs of one small program: worth XLA's backend optimisation, which the tests otherwise skip (conftest)
  step = jax.jit(family.train_step, compiler_options={'xla_backend_optimization_level': 2})
  batches = dataset.train_iterator()
  for i in range(150):
    state, metrics = step(state, next(batches), jax.random.key(i))
  return family, state, dataset


def test_training_learns_the_phrases_and_keeps_kl_positive(fitted):
  family, state, dataset = fitted
  metrics = jax.jit(family.eval_step)(state, next(iter(dataset.eval_batches())), jax.random.key(0))
  assert float(metrics['recon_nll']) < 5.0 and float(metrics['kl']) > 0.1


def test_iwae_bound_is_above_the_elbo_and_tightens_with_k(fitted):
  family, state, dataset = fitted
  batch = next(iter(dataset.eval_batches()))
  nll, neg_elbo = {}, []
  for k in (1, 8, 64):
    eval_step = jax.jit(_eval_with_k(family, k, dataset.spec))
    runs = [eval_step(state, batch, jax.random.key(i)) for i in range(4)]
    nll[k] = np.mean([float(r['iwae_nll']) for r in runs])
    neg_elbo += [float(r['neg_elbo']) for r in runs]
  assert abs(nll[1] - np.mean(neg_elbo)) < 0.5                           # k = 1 is the ELBO, up to sampling noise
  assert nll[1] > nll[8] > nll[64] and nll[64] < np.mean(neg_elbo)       # -log p(x) bounds tighten with k


def _eval_with_k(family, k, spec):
  del family
  config = vae_text_shakespeare.get_config('smoke')
  config.model.update(hidden=32, embed_dim=16, iwae_k=k)
  return text_vae.build(config, spec).eval_step


def test_homotopy_endpoints_are_the_reconstructions(fitted):
  family, state, _ = fitted
  sampler = family.make_sampler(state)
  a, b = PHRASES[0], PHRASES[1]
  path = sampler(jax.random.key(0), between=(a, b), num=5)
  assert len(path) == 5
  assert [path[0], path[-1]] == sampler(jax.random.key(1), text=[a, b])
  assert sampler(jax.random.key(1), text=[a, b]) == [a, b]               # the fitted model reconstructs both


def test_prior_samples_are_deterministic_per_key_and_decode_to_strings(fitted):
  family, state, _ = fitted
  sampler = family.make_sampler(state)
  texts = sampler(jax.random.key(0), num=6, temperature=0.8, top_k=5)
  assert texts == sampler(jax.random.key(0), num=6, temperature=0.8, top_k=5) and len(texts) == 6
  assert texts != sampler(jax.random.key(1), num=6, temperature=0.8, top_k=5)
  assert all(isinstance(t, str) for t in texts)


# ------------------------------------------------------------------------------------------ end to end

def test_smoke_run_samples_interpolates_and_resumes_bit_exactly(tmp_path, cli):
  config = smoke_config(tmp_path)
  straight = stages.train_and_evaluate(config, str(tmp_path / 'straight'))
  preempted(config, tmp_path / 'resumed', stop_at=3)
  resumed = stages.train_and_evaluate(config, str(tmp_path / 'resumed'))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  workdir = tmp_path / 'straight'
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6']
  preview = (workdir / 'samples' / 'step_000006.txt').read_text()
  assert preview.count('prior: ') == config.num_preview and 'homotopy:' in preview
  out = cli('sample.py', '--workdir', str(workdir), '--interpolate', PHRASES[0], PHRASES[2], '--num', '4',
            '--out', str(tmp_path / 'h.txt'), mock_data=False).stdout.splitlines()
  assert len(out) == 5 and out[-1] == f'wrote {tmp_path / "h.txt"}'    # four sentences, one a line
  assert jaxgen.load_sampler(str(workdir))(jax.random.key(0), num=3) != []
