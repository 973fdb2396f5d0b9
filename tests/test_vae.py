"""VAE math: the analytic KL, the Bernoulli likelihood, and the IWAE bound's ordering."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen.families import vae
from jaxgen.models.vae import VAE


def test_analytic_kl_matches_monte_carlo():
  mean = jnp.array([[0.5, -1.0, 2.0]])
  logvar = jnp.array([[0.3, -0.7, 0.1]])
  z = vae.reparameterize(jax.random.key(0), mean, logvar, num=400_000)            # (S, 1, 3)
  log_q = vae.gaussian_log_prob(z, mean, logvar)
  log_p = vae.gaussian_log_prob(z, jnp.zeros_like(z), jnp.zeros_like(z))
  mc_kl = jnp.mean(log_q - log_p)
  np.testing.assert_allclose(vae.gaussian_kl(mean, logvar)[0], mc_kl, rtol=1e-2)


def test_kl_is_zero_only_at_the_prior():
  assert float(vae.gaussian_kl(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0]) == 0.0
  assert float(vae.gaussian_kl(jnp.full((1, 4), 0.1), jnp.zeros((1, 4)))[0]) > 0.0


def test_bernoulli_log_likelihood_equals_closed_form():
  x = jnp.array([0.0, 1.0, 0.25]).reshape(1, 1, 3, 1)
  logits = jnp.array([-2.0, 3.0, 0.5]).reshape(1, 1, 3, 1)
  p = jax.nn.sigmoid(logits)
  expected = jnp.sum(x * jnp.log(p) + (1 - x) * jnp.log(1 - p))
  got = vae.log_likelihood(x, (logits, 0.0), 'bernoulli')[0]
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_gaussian_log_likelihood_equals_closed_form():
  x = jnp.array([0.1, 0.9]).reshape(1, 1, 2, 1)
  mu = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
  log_sigma = jnp.log(0.5)
  expected = jnp.sum(-0.5 * ((x - mu) / 0.5) ** 2 - jnp.log(0.5) - 0.5 * math.log(2 * math.pi))
  np.testing.assert_allclose(vae.log_likelihood(x, (mu, log_sigma), 'gaussian')[0], expected, rtol=1e-6)


@pytest.fixture(scope='module')
def trained_smoke_vae():
  """A small VAE fitted for 100 steps to structured synthetic images, so q(z|x) is informative (KL ~10 nats)."""
  model = VAE(features=(8, 16), hidden=32, latent_dim=4, image_shape=(28, 28, 1))
  rng = np.random.default_rng(0)
  bars = np.zeros((64, 28, 28, 1), np.float32)
  for i, w in enumerate(rng.integers(2, 26, size=64)):
    bars[i, :, :w] = 1.0
  x = jnp.asarray(bars * 0.9 + 0.05)
  params = jax.jit(model.init)(jax.random.key(0), x[:1], jnp.zeros((1, 4)))['params']
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  # 100 runs of one small program: worth XLA's backend optimisation, which the tests otherwise skip (conftest)
  @functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 2})
  def step(params, opt_state, key):
    loss = lambda p: jnp.mean(sum(vae.elbo_terms(model, p, x, key, 'bernoulli')))
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for i in range(100):
    params, opt_state = step(params, opt_state, jax.random.key(i))
  return model, params, x


def test_iwae_bound_is_above_the_elbo_and_tightens_with_k(trained_smoke_vae):
  model, params, x = trained_smoke_vae
  key = jax.random.key(1)
  nll, kl = jax.jit(vae.elbo_terms, static_argnums=(0, 4))(model, params, x, key, 'bernoulli')
  elbo = float(jnp.mean(-(nll + kl)))
  iwae_bound = jax.jit(vae.image_iwae_bound, static_argnums=(0, 4, 5))
  bounds = [float(jnp.mean(iwae_bound(model, params, x, key, k, 'bernoulli'))) for k in (1, 8, 64)]
  assert abs(bounds[0] - elbo) < 0.05 * abs(elbo)          # k = 1 is the ELBO (up to sampling noise)
  assert bounds[0] < bounds[1] < bounds[2]
  assert bounds[2] > elbo
