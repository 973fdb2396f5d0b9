"""Sentence VAE model: causal decoder, stepwise = teacher-forced decoding, padding-invariant posterior, shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models.text_vae import SentenceVAE

V, T, Z, H = 11, 7, 4, 16   # vocab size, sequence length, latent size, GRU width
PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(scope='module')
def tiny():
  model = SentenceVAE(vocab_size=V, embed_dim=8, hidden=H, latent_dim=Z, pad_id=PAD)
  tokens, mask = batch()
  init = jax.jit(lambda rng: model.init(rng, tokens, mask, tokens, jnp.zeros((len(tokens), Z)))['params'])
  return model, init(jax.random.key(0))


def batch(pad_to=T):
  """Three sentences BOS w.. EOS of 7, 5 and 3 real tokens, PAD after: tokens (3, pad_to) int32, mask (3, pad_to)."""
  sentences = [[BOS, 3, 4, 5, 6, 7, EOS], [BOS, 8, 9, 10, EOS], [BOS, 5, EOS]]
  tokens = np.full((len(sentences), pad_to), PAD, np.int32)
  for i, s in enumerate(sentences):
    tokens[i, :len(s)] = s
  return jnp.asarray(tokens), jnp.asarray(tokens != PAD)


def method(tiny, name):
  model, params = tiny
  return jax.jit(lambda *args: model.apply({'params': params}, *args, method=getattr(SentenceVAE, name)))


def random_z(seed=1, n=3):
  return jax.random.normal(jax.random.key(seed), (n, Z))


def test_every_method_has_the_documented_shapes(tiny):
  model, params = tiny
  tokens, mask = batch()
  logits, mean, logvar = jax.jit(model.apply)({'params': params}, tokens, mask, tokens, random_z())
  assert logits.shape == (3, T, V) and mean.shape == logvar.shape == (3, Z)
  assert {logits.dtype, mean.dtype, logvar.dtype} == {jnp.dtype(jnp.float32)}
  mean, logvar = method(tiny, 'encode')(tokens, mask)
  assert mean.shape == logvar.shape == (3, Z)
  assert method(tiny, 'decode')(random_z(), tokens).shape == (3, T, V)
  carry = method(tiny, 'init_carry')(random_z())
  assert carry.shape == (3, H)
  carry, step_logits = method(tiny, 'decode_step')(random_z(), carry, tokens[:, 0])
  assert carry.shape == (3, H) and step_logits.shape == (3, V)


def test_decoder_is_causal(tiny):
  decode = method(tiny, 'decode')
  tokens, _ = batch()
  z = random_z()
  logits = decode(z, tokens)
  for t in (1, 3, T - 1):
    changed = decode(z, tokens.at[:, t].set((tokens[:, t] + 1) % V))
    np.testing.assert_allclose(changed[:, :t], logits[:, :t], atol=1e-6)
    assert np.abs(changed[:, t] - logits[:, t]).max() > 1e-4     # the position itself does see it


def test_stepwise_decoding_equals_teacher_forced_decoding(tiny):
  step = method(tiny, 'decode_step')
  tokens, _ = batch()
  z = random_z()
  carry, logits = method(tiny, 'init_carry')(z), []
  for t in range(T):
    carry, step_logits = step(z, carry, tokens[:, t])
    logits.append(step_logits)
  np.testing.assert_allclose(jnp.stack(logits, 1), method(tiny, 'decode')(z, tokens), atol=1e-5)


def test_padding_does_not_change_the_posterior(tiny):
  encode = method(tiny, 'encode')
  tokens, mask = batch()
  mean, logvar = encode(tokens, mask)
  longer, longer_mask = batch(pad_to=T + 4)                       # more PAD positions
  garbage = jnp.where(mask, tokens, jax.random.randint(jax.random.key(2), tokens.shape, 0, V))  # ids at PAD
  for other in (encode(longer, longer_mask), encode(garbage, mask)):
    np.testing.assert_allclose(other[0], mean, atol=1e-5)
    np.testing.assert_allclose(other[1], logvar, atol=1e-5)


def test_posterior_depends_on_the_sentence(tiny):
  tokens, mask = batch()
  mean, _ = method(tiny, 'encode')(tokens, mask)
  assert np.abs(mean[0] - mean[1]).max() > 1e-4 and np.abs(mean[1] - mean[2]).max() > 1e-4
  changed, _ = method(tiny, 'encode')(tokens.at[2, 1].set(6), mask)   # one word of the last sentence
  np.testing.assert_allclose(changed[:2], mean[:2], atol=1e-6)
  assert np.abs(changed[2] - mean[2]).max() > 1e-4


def test_z_changes_the_decoder_output(tiny):
  decode = method(tiny, 'decode')
  tokens, _ = batch()
  diff = np.abs(decode(random_z(1), tokens) - decode(random_z(2), tokens)).max(-1)   # (B, T)
  assert diff.min() > 1e-4                                        # at every position of every sentence
  carry = method(tiny, 'init_carry')(random_z(1))
  step = method(tiny, 'decode_step')
  step_diff = np.abs(step(random_z(1), carry, tokens[:, 0])[1] - step(random_z(2), carry, tokens[:, 0])[1])
  assert step_diff.max(-1).min() > 1e-4                           # z also enters every step, not only h_0
