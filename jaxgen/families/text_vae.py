"""Sentence VAE (Bowman et al. 2016): -ELBO = -E_q[log p(x|z)] + beta_t KL(q(z|x) || N(0, I)) over sentences.

Batches {'tokens': int32 (B, L)}: BOS w_1 .. w_n EOS PAD ..; the decoder reads tokens[:, :-1] and predicts
tokens[:, 1:], with the loss on the non-PAD targets. The two fixes for posterior collapse from the paper:
  KL annealing   beta_t rises from 0 to 1 over model.kl_anneal_steps: linear t / S, or logistic
                 1 / (1 + exp(-10 (t - S/2) / S)) (model.kl_anneal = linear | logistic | none)
  word dropout   each decoder input after BOS is replaced by UNK with probability model.word_dropout
and optionally free bits (Kingma et al. 2016): the KL term is sum_d max(lambda, E_batch KL_d), a floor of
lambda = model.free_bits nats per latent dimension. The analytic KL and the IWAE bound are the image VAE's
(jaxgen.families.vae). Samplers decode with one jitted lax.scan: greedy, temperature, top-k.
"""
import functools
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import evaluators, samples
from jaxgen.data import sentences, tokenizers
from jaxgen.errors import UserError
from jaxgen.families import gpt, vae
from jaxgen.families.base import Family, Feature
from jaxgen.models.text_vae import SentenceVAE
from jaxgen.train import optim
from jaxgen.train.state import TrainState


def kl_weight(step, anneal_steps: int, kind: str):
  """beta_t after `step` updates: 1 ('none'), min(1, t / S) ('linear') or 1 / (1 + exp(-10 (t - S/2) / S))."""
  t = jnp.asarray(step, jnp.float32)
  if kind == 'none' or anneal_steps == 0:
    return jnp.float32(1.0)
  if kind == 'linear':
    return jnp.minimum(1.0, t / anneal_steps)
  return jax.nn.sigmoid(10.0 * (t - anneal_steps / 2) / anneal_steps)


def word_dropout(rng, inputs, rate, unk_id: int, pad_id: int):
  """Decoder inputs (B, T) with each token after BOS (position 0) and before padding replaced by UNK with
  probability `rate` (Bowman et al. Sec. 3.2)."""
  drop = jax.random.bernoulli(rng, rate, inputs.shape) & (inputs != pad_id)
  drop = drop.at[:, 0].set(False)
  return jnp.where(drop, unk_id, inputs)


def sentence_log_likelihood(logits, targets, pad_id: int):
  """log p(x|z) = sum_t log p(x_t | x_<t, z) over the non-PAD targets: logits (..., T, V), targets (..., T)."""
  log_p = -optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(jnp.where(targets != pad_id, log_p, 0.0), axis=-1)


def kl_term(kl_per_dim, free_bits: float):
  """sum_d E_batch KL_d, or with free bits sum_d max(free_bits, E_batch KL_d); kl_per_dim (B, D)."""
  per_dim = jnp.mean(kl_per_dim, axis=0)
  return jnp.sum(jnp.maximum(per_dim, free_bits) if free_bits else per_dim)


def detokenize(text: str) -> str:
  """Post-processing of word-level samples: no space before punctuation or around an apostrophe inside a
  word ("sake , and I ' ll" -> "sake, and I'll")."""
  text = re.sub(r" ([,.;:!?])", r"\1", text)
  return re.sub(r"(\w) ' (\w)", r"\1'\2", text)


def active_units(posterior_means, threshold: float = 0.01) -> int:
  """Dimensions d with Cov_x(E_q[z_d | x]) > threshold over the data (Burda et al. 2016)."""
  return int(np.sum(np.var(np.asarray(posterior_means, np.float64), axis=0) > threshold))


def make_model(config, spec) -> SentenceVAE:
  m = config.model
  return SentenceVAE(vocab_size=spec.vocab_size, embed_dim=m.embed_dim, hidden=m.hidden, latent_dim=m.latent_dim,
                     pad_id=spec.pad_id, dtype=jnp.dtype(m.dtype))


def build(config, spec) -> Family:
  m = config.model
  if spec.modality != 'sentences':
    raise UserError(f'the text_vae family reads sentences; set --config.data.modality=sentences (not {spec.modality})')
  if m.kl_anneal not in ('linear', 'logistic', 'none'):
    raise UserError(f'unknown model.kl_anneal {m.kl_anneal!r}; use linear, logistic or none')
  if not 0 <= m.word_dropout <= 1:
    raise UserError(f'model.word_dropout={m.word_dropout} must be in [0, 1]')
  model = make_model(config, spec)
  updater = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps)
  pad, bos, eos, unk, length = spec.pad_id, spec.bos_id, spec.eos_id, spec.unk_id, spec.max_length
  tokenizer = functools.cache(lambda: tokenizers.from_json(json.loads(spec.tokenizer)))
  apply = lambda params, *args, method: model.apply({'params': params}, *args, method=method)

  def encode(params, tokens):
    return apply(params, tokens, tokens != pad, method=SentenceVAE.encode)

  def terms(params, tokens, rng, dropout_rate):
    """(-log p(x|z) (B,), KL per dimension (B, D)) with one z ~ q(z|x) and word dropout on the inputs."""
    z_rng, drop_rng = jax.random.split(rng)
    mean, logvar = encode(params, tokens)
    z = vae.reparameterize(z_rng, mean, logvar)
    inputs = word_dropout(drop_rng, tokens[:, :-1], dropout_rate, unk, pad)
    logits = apply(params, z, inputs, method=SentenceVAE.decode)
    return -sentence_log_likelihood(logits, tokens[:, 1:], pad), vae.gaussian_kl_per_dim(mean, logvar)

  def init(rng):
    tokens = jnp.full((1, length), bos, jnp.int32)
    params = model.init(rng, tokens, tokens != pad, tokens[:, :-1], jnp.zeros((1, m.latent_dim)))['params']
    return TrainState.create(params, updater)

  def train_step(state, batch, rng):
    beta = kl_weight(state.step, m.kl_anneal_steps, m.kl_anneal)

    def loss_fn(params):
      nll, kl = terms(params, batch['tokens'], rng, m.word_dropout)
      return jnp.mean(nll) + beta * kl_term(kl, m.free_bits), (nll, kl)

    (loss, (nll, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    kl_sum = kl.sum(-1)
    metrics = dict(loss=loss, recon_nll=nll.mean(), kl=kl_sum.mean(), neg_elbo=(nll + kl_sum).mean(), kl_weight=beta,
                   grad_norm=optax.tree.norm(grads))
    return state.apply_gradients(grads, updater), metrics

  def eval_step(state, batch, rng):
    """Per sentence (nats): -ELBO, reconstruction NLL, KL; IWAE NLL with model.iwae_k samples; per token: the
    IWAE NLL over the predicted tokens (EOS included), whose exp is the perplexity."""
    params, tokens = state.sampling_params(), batch['tokens']
    k1, k2 = jax.random.split(rng)
    nll, kl = terms(params, tokens, k1, 0.0)
    kl = kl.sum(-1)
    mean, logvar = encode(params, tokens)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def log_px_z(z):                                          # (chunk, B, D) -> (chunk, B)
      c, b = z.shape[:2]
      logits = apply(params, z.reshape(c * b, -1), jnp.tile(inputs, (c, 1)), method=SentenceVAE.decode)
      return sentence_log_likelihood(logits, jnp.tile(targets, (c, 1)), pad).reshape(c, b)

    iwae_nll = -vae.iwae_bound(k2, mean, logvar, log_px_z, m.iwae_k, chunk=4)
    num_tokens = jnp.sum(targets != pad)
    return dict(loss=jnp.mean(nll + kl), neg_elbo=jnp.mean(nll + kl), recon_nll=nll.mean(), kl=kl.mean(),
                iwae_nll=iwae_nll.mean(), iwae_nll_per_token=iwae_nll.sum() / num_tokens,
                tokens_per_sentence=num_tokens / tokens.shape[0])

  @functools.partial(jax.jit, static_argnames='top_k')
  def decode_z(params, z, rng, temperature, greedy, top_k):
    """Autoregressive decoding from z (N, D), BOS first: int32 (N, L - 1) tokens, one lax.scan."""
    n = z.shape[0]
    u = 1.0 - jax.random.uniform(rng, (length - 1, n))        # in (0, 1], drawn up front

    def step(carry, u_t):
      h, token = carry
      h, logits = apply(params, z, h, token, method=SentenceVAE.decode_step)
      sampled = gpt.sample_categorical(u_t, gpt.filter_logits(logits, temperature, top_k, None))
      token = jnp.where(greedy, jnp.argmax(logits, -1).astype(jnp.int32), sampled)
      return (h, token), token

    h0 = apply(params, z, method=SentenceVAE.init_carry)
    _, tokens = jax.lax.scan(step, (h0, jnp.full((n,), bos, jnp.int32)), u)
    return tokens.T

  posterior_mean = jax.jit(lambda params, tokens: encode(params, tokens)[0])

  def to_text(tokens) -> list[str]:
    """Tokens up to the first EOS (or PAD), decoded."""
    out = []
    for row in np.asarray(tokens):
      stop = np.flatnonzero((row == eos) | (row == pad))
      out.append(detokenize(tokenizer().decode(row[:stop[0]] if len(stop) else row)))
    return out

  def make_sampler(state):
    params = state.sampling_params()

    def sampler(rng, num: int | None = None, text: list[str] | None = None, between: tuple[str, str] | None = None,
                temperature: float = 1.0, top_k: int | None = None, greedy: bool | None = None):
      """Prior samples (num, default num_preview); reconstructions of `text` from their posterior means; or
      `num` sentences decoded along the line between the posterior means of between = (a, b) (homotopy).
      greedy (default: for text/between) takes the most likely token; else temperature and top_k sampling."""
      if text is not None and between is not None:
        raise UserError('give text (reconstruct) or between (interpolate), not both')
      if not temperature > 0 or (top_k is not None and top_k < 1):
        raise UserError(f'temperature={temperature} must be > 0 and top_k={top_k} >= 1')
      if text is not None:
        z = posterior_mean(params, sentences.rows(tokenizer(), list(text), length))
      elif between is not None:
        n = 5 if num is None else num
        if len(between) != 2 or n < 2:
          raise UserError(f'between needs two texts and num >= 2 (got {len(between)} texts, num={n})')
        ends = posterior_mean(params, sentences.rows(tokenizer(), list(between), length))
        alphas = jnp.linspace(0.0, 1.0, n)[:, None]
        z = (1 - alphas) * ends[0] + alphas * ends[1]
      else:
        n = config.num_preview if num is None else num
        if not isinstance(n, (int, np.integer)) or n < 1:
          raise UserError(f'num={num!r} must be a positive integer')
        z = jax.random.normal(jax.random.fold_in(rng, 1), (int(n), m.latent_dim))
      greedy = (text is not None or between is not None) if greedy is None else greedy
      top_k = None if top_k is None or top_k >= spec.vocab_size else int(top_k)
      return to_text(decode_z(params, z, rng, jnp.float32(temperature), jnp.bool_(greedy), top_k))

    return sampler

  def preview(state, batch, rng):
    """Prior samples, then three training sentences with their reconstructions and a 5-step homotopy."""
    sampler = make_sampler(state)
    real = to_text(np.asarray(batch['tokens'])[:3, 1:])
    lines = [f'prior: {s}' for s in sampler(rng, num=config.num_preview, temperature=m.sample_temperature)]
    lines += [f'input: {a}\n recon: {b}' for a, b in zip(real, sampler(rng, text=real))]
    homotopy = sampler(rng, between=(real[0], real[1]), num=5) if len(real) > 1 else []
    return lines + ['homotopy:\n' + '\n'.join(homotopy)]

  def active_units_evaluator(ctx: evaluators.Context) -> dict:
    means = np.concatenate([np.asarray(posterior_mean(ctx.state.sampling_params(), b['tokens']))
                            for b in ctx.test_batches()])
    return dict(active_units=active_units(means), latent_dim=m.latent_dim, active_units_examples=len(means))

  def likelihood_evaluator(ctx: evaluators.Context) -> dict:
    """The eval_step figures over the validation lines with k = --iwae_k (default model.iwae_k) samples."""
    config = ctx.config.copy_and_resolve_references()
    config.model.iwae_k = ctx.options.get('iwae_k') or m.iwae_k
    r = ctx.test_metrics(config)
    return {**r, 'perplexity': math.exp(r['iwae_nll_per_token']), 'iwae_k': config.model.iwae_k}

  return Family(init, train_step, eval_step, make_sampler, preview,
                batch_spec={'tokens': Feature((length,), np.int32, 0, spec.vocab_size)},
                sample_kind=samples.Texts(separator='\n'),   # one sentence a line
                evaluators={'likelihood': likelihood_evaluator, 'active_units': active_units_evaluator,
                            'diversity': functools.partial(evaluators.text_diversity, temperature=m.sample_temperature)})
