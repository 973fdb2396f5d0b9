"""VAE family: loss = -ELBO = -E_q[log p(x|z)] + beta KL(q(z|x) || N(0, I)); IWAE NLL for evaluation.

q(z|x) = N(mean, diag(exp(logvar))); p(x|z) is Bernoulli(sigmoid(logits)) on [0, 1] pixels or
N(decoder(z), sigma^2 I) with a learned sigma (config.model.likelihood = 'bernoulli' | 'gaussian').
"""
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import evaluators, images, samples
from jaxgen.errors import UserError
from jaxgen.families.base import Family, Feature
from jaxgen.models.vae import VAE
from jaxgen.train import optim
from jaxgen.train.state import TrainState


def gaussian_kl_per_dim(mean, logvar):
  """KL(N(mean_d, exp(logvar_d)) || N(0, 1)) = 1/2 (mean_d^2 + exp(logvar_d) - 1 - logvar_d), per dimension."""
  return 0.5 * (mean**2 + jnp.exp(logvar) - 1.0 - logvar)


def gaussian_kl(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar), per example."""
  return jnp.sum(gaussian_kl_per_dim(mean, logvar), axis=-1)


def gaussian_log_prob(z, mean, logvar):
  """log N(z; mean, diag(exp(logvar))), summed over the last axis."""
  return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar + (z - mean) ** 2 * jnp.exp(-logvar), axis=-1)


def reparameterize(rng, mean, logvar, num=None):
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I); `num` draws give shape (num, *mean.shape)."""
  shape = mean.shape if num is None else (num, *mean.shape)
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, shape)


def log_likelihood(x, decoded, likelihood: str):
  """log p(x|z) summed over pixels: Bernoulli from logits (stable log-sigmoid) or Gaussian with learned sigma."""
  out, log_scale = decoded
  if likelihood == 'bernoulli':
    return -jnp.sum(optax.sigmoid_binary_cross_entropy(out, x), axis=(-3, -2, -1))
  return jnp.sum(-0.5 * ((x - out) * jnp.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi),
                 axis=(-3, -2, -1))


def decoder_mean(decoded, likelihood: str):
  """E[x|z]: sigmoid(logits) for Bernoulli, the mean for Gaussian."""
  out, _ = decoded
  return jax.nn.sigmoid(out) if likelihood == 'bernoulli' else out


def elbo_terms(model, params, x, rng, likelihood: str):
  """Per-example (reconstruction NLL -log p(x|z), KL) with one reparameterised z ~ q(z|x)."""
  mean, logvar = model.apply({'params': params}, x, method=VAE.encode)
  z = reparameterize(rng, mean, logvar)
  decoded = model.apply({'params': params}, z, method=VAE.decode)
  return -log_likelihood(x, decoded, likelihood), gaussian_kl(mean, logvar)


def iwae_bound(rng, mean, logvar, log_px_z, k: int, chunk: int = 16):
  """log p(x) >= log 1/k sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x) = N(mean, exp(logvar)) (Burda et al.);
  per example. log_px_z(z (chunk, B, D)) -> (chunk, B) is the decoder's log-likelihood of the data.

  k = 1 is the ELBO; the bound tightens as k grows. Samples are decoded `chunk` at a time.
  """
  chunk = min(chunk, k)
  num_chunks = -(-k // chunk)

  def log_weights(key):                                        # (chunk, B)
    z = reparameterize(key, mean, logvar, num=chunk)           # (chunk, B, latent)
    log_pz = gaussian_log_prob(z, jnp.zeros_like(z), jnp.zeros_like(z))
    return log_px_z(z) + log_pz - gaussian_log_prob(z, mean, logvar)

  log_w = jax.lax.map(log_weights, jax.random.split(rng, num_chunks)).reshape(-1, mean.shape[0])[:k]
  return jax.nn.logsumexp(log_w, axis=0) - math.log(k)


def image_iwae_bound(model, params, x, rng, k: int, likelihood: str):
  """iwae_bound of images x (B, H, W, C) under the conv VAE."""
  mean, logvar = model.apply({'params': params}, x, method=VAE.encode)

  def log_px_z(z):
    out, log_scale = model.apply({'params': params}, z.reshape(-1, z.shape[-1]), method=VAE.decode)
    return log_likelihood(x[None], (out.reshape(*z.shape[:2], *x.shape[1:]), log_scale), likelihood)

  return iwae_bound(rng, mean, logvar, log_px_z, k)


def make_model(config, spec) -> VAE:
  m = config.model
  return VAE(features=tuple(m.features), hidden=m.hidden, latent_dim=m.latent_dim,
             image_shape=tuple(spec.image_shape), dtype=m.dtype)


def iwae_nll(ctx: evaluators.Context) -> dict:
  """NLL = -log p(x) <= -L_k, the IWAE bound with k = --iwae_k samples (iwae_bound, through eval_step) over
  --iwae_examples test images: an upper bound on the test NLL that tightens as k grows."""
  k, examples = ctx.options.get('iwae_k') or 1000, ctx.options.get('iwae_examples') or 10_000
  if k < 1 or examples < 1:
    raise UserError(f'--iwae_k={k} and --iwae_examples={examples} must be >= 1')
  config = ctx.config.copy_and_resolve_references()
  config.model.iwae_k, config.data.eval_examples = k, examples
  t0 = time.time()
  result = ctx.test_metrics(config)
  return dict(iwae_k=k, iwae_examples_requested=examples, iwae_nll=result['iwae_nll'],
              iwae_bits_per_dim=result['iwae_bits_per_dim'], neg_elbo=result['neg_elbo'], iwae_seconds=time.time() - t0)


def build(config, spec) -> Family:
  m = config.model
  model = make_model(config, spec)
  updater = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps)
  lo, hi = config.data.pixel_range
  if (lo, hi) != (0.0, 1.0) and m.likelihood == 'bernoulli':
    raise UserError('the Bernoulli likelihood needs data.pixel_range=(0, 1)')

  def init(rng):
    params = model.init(rng, jnp.zeros((1, *spec.image_shape)), jnp.zeros((1, m.latent_dim)))['params']
    return TrainState.create(params, updater)

  def train_step(state, batch, rng):
    def loss_fn(params):
      nll, kl = elbo_terms(model, params, batch['image'], rng, m.likelihood)
      return jnp.mean(nll + m.beta * kl), (nll, kl)

    (loss, (nll, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(loss=loss, recon_nll=nll.mean(), kl=kl.mean(), neg_elbo=(nll + kl).mean(),
                   grad_norm=optax.tree.norm(grads))
    return state.apply_gradients(grads, updater), metrics

  def eval_step(state, batch, rng):
    params = state.sampling_params()
    x = batch['image']
    k1, k2 = jax.random.split(rng)
    nll, kl = elbo_terms(model, params, x, k1, m.likelihood)
    iwae_nll = -image_iwae_bound(model, params, x, k2, m.iwae_k, m.likelihood)
    num_dims = np.prod(x.shape[1:])
    return dict(loss=jnp.mean(nll + m.beta * kl), neg_elbo=jnp.mean(nll + kl), kl=kl.mean(),
                iwae_nll=iwae_nll.mean(), iwae_bits_per_dim=iwae_nll.mean() / (num_dims * math.log(2)))

  @functools.partial(jax.jit, static_argnames='num')
  def sample_prior(params, rng, num):
    z = jax.random.normal(rng, (num, m.latent_dim))
    x = decoder_mean(model.apply({'params': params}, z, method=VAE.decode), m.likelihood)
    return images.to_uint8(x, config.data.pixel_range)

  @jax.jit
  def reconstruct_and_interpolate(params, x):
    """Rows: inputs, their reconstructions (posterior means), then latent interpolations between pairs."""
    mean, _ = model.apply({'params': params}, x, method=VAE.encode)
    recon = decoder_mean(model.apply({'params': params}, mean, method=VAE.decode), m.likelihood)
    n = x.shape[0]
    alphas = jnp.linspace(0.0, 1.0, n)[None, :, None]           # (1, n, 1)
    z = mean[0::2, None] * (1 - alphas) + mean[1::2, None] * alphas   # (n/2, n, latent)
    interp = decoder_mean(model.apply({'params': params}, z.reshape(-1, m.latent_dim), method=VAE.decode),
                          m.likelihood)
    return images.to_uint8(jnp.concatenate([x, recon, interp]), config.data.pixel_range)

  def make_sampler(state):
    params = state.sampling_params()

    def sampler(rng, num: int = 64):
      if num < 1:
        raise UserError(f'--num must be positive, got {num}')
      return sample_prior(params, rng, num)
    return sampler

  def preview(state, batch, rng):
    """Top: prior samples; then 8 inputs, their reconstructions, and 4 rows of latent interpolations."""
    params = state.sampling_params()
    x = jax.device_get(batch['image'])[:8]
    prior = images.make_grid(sample_prior(params, rng, 32), ncols=8)
    rows = images.make_grid(reconstruct_and_interpolate(params, x), ncols=len(x))
    return np.concatenate([prior, rows[2:]], axis=0) if len(x) == 8 else prior

  @jax.jit
  def posterior_mean(params, x):
    return model.apply({'params': params}, x, method=VAE.encode)[0]

  def make_encoder(state):
    """batch -> E[q(z|x)] (B, latent_dim): the latents a latent diffusion run trains on."""
    params = state.sampling_params()
    return lambda batch: posterior_mean(params, batch['image'])

  batch_spec = {'image': Feature(tuple(spec.image_shape), np.float32, lo, hi),
                'label': Feature((), np.int32, 0, spec.num_classes)}
  return Family(init, train_step, eval_step, make_sampler, preview, batch_spec, samples.Images(),
                {'image_quality': evaluators.image_quality, 'iwae_nll': iwae_nll}, make_encoder=make_encoder)
