"""DDPM family: forward-process closed forms, posterior, parameterisations, samplers, guidance, sampler API."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpm_cifar10, ddpm_fashion_mnist
from jaxgen.errors import UserError
from jaxgen.families import ddpm
from jaxgen.models.unet import GroupNorm, UNet
import jaxgen
from jaxgen import data
from tests.support import specs
from tests.support.runs import train

CONFIGS = {'ddpm_fashion_mnist': ddpm_fashion_mnist, 'ddpm_cifar10': ddpm_cifar10}


def load_config(preset, name='ddpm_fashion_mnist'):
  return CONFIGS[name].get_config(preset)


def random_state(family, seed=0):
  """A state with random parameters, drawn with numpy (compiling the real init costs more than these tests)."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(family.init, jax.random.key(0))
  params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), abstract.params)
  return abstract.replace(step=jnp.int32(0), params=params, opt_state=None, ema_params=None)


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_iterated_forward_process_matches_closed_form(schedule):
  sched = ddpm.make_schedule(schedule, 1000)
  betas = ddpm.linear_betas(1000) if schedule == 'linear' else ddpm.cosine_betas(1000)   # float64
  # Moments of x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z, iterated from x_0: mean = m_t x_0, var = v_t.
  m, v = np.cumprod(np.sqrt(1 - betas)), np.zeros(1000)
  for t in range(1000):
    v[t] = (1 - betas[t]) * (v[t - 1] if t else 0.0) + betas[t]
  abar = np.asarray(sched.alphas_cumprod, np.float64)
  np.testing.assert_allclose(m, np.sqrt(abar), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(v, 1 - abar, rtol=1e-4, atol=1e-6)
  # The same by simulation: 300 chain steps on 20k samples vs q_sample at t = 299.
  x0 = jnp.full((20_000,), 0.7)

  def chain_step(x, inp):
    beta, key = inp
    return jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * jax.random.normal(key, x.shape), None

  x_chain, _ = jax.lax.scan(chain_step, x0, (sched.betas[:300], jax.random.split(jax.random.key(0), 300)))
  x_closed = ddpm.q_sample(sched, x0, jnp.full((20_000,), 299), jax.random.normal(jax.random.key(1), x0.shape))
  for x in (x_chain, x_closed):
    assert abs(float(x.mean()) - np.sqrt(abar[299]) * 0.7) < 0.02
    assert abs(float(x.var()) - (1 - abar[299])) < 0.03


def test_posterior_matches_paper_formulas_and_bayes_rule():
  sched = ddpm.make_schedule('linear', 1000)
  betas = ddpm.linear_betas(1000)                    # float64 reference
  abar = np.cumprod(1 - betas)
  t = np.array([1, 10, 500, 999])
  x0, x_t = np.array([0.5, -1.0, 0.3, 0.9]), np.array([0.2, 0.4, -1.5, 2.0])
  mean, var = ddpm.q_posterior(sched, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
  ab, ab_prev, beta = abar[t], abar[t - 1], betas[t]
  # Ho et al. eq. 7.
  np.testing.assert_allclose(var, (1 - ab_prev) / (1 - ab) * beta, rtol=1e-4)
  np.testing.assert_allclose(
      mean, np.sqrt(ab_prev) * beta / (1 - ab) * x0 + np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x_t, rtol=1e-4)
  # Bayes: q(x_{t-1} | x_0) = N(sqrt(ab_prev) x_0, 1 - ab_prev) times q(x_t | x_{t-1}) = N(sqrt(1-beta) x_{t-1}, beta).
  precision = 1 / (1 - ab_prev) + (1 - beta) / beta
  np.testing.assert_allclose(var, 1 / precision, rtol=1e-4)
  np.testing.assert_allclose(mean, (np.sqrt(ab_prev) * x0 / (1 - ab_prev) + np.sqrt(1 - beta) * x_t / beta) / precision,
                             rtol=1e-4)
  # t = 0: the posterior is the data point itself.
  mean0, var0 = ddpm.q_posterior(sched, jnp.float32([0.5]), jnp.float32([0.2]), jnp.array([0]))
  np.testing.assert_allclose(mean0, [0.5], rtol=1e-6)
  np.testing.assert_allclose(var0, [0.0], atol=1e-12)


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_eps_and_v_parameterisations_invert_each_other(schedule):
  sched = ddpm.make_schedule(schedule, 1000)
  rng = np.random.default_rng(0)
  x0, eps = jnp.float32(rng.uniform(-1, 1, (6, 3, 4))), jnp.float32(rng.standard_normal((6, 3, 4)))
  t = jnp.array([0, 1, 100, 500, 900, 990])

  @jax.jit
  def check():
    x_t = ddpm.q_sample(sched, x0, t, eps)
    v = ddpm.v_target(sched, x0, t, eps)
    # L_simple vanishes for the oracle that knows x_0: eps(x_t) = (x_t - sqrt(abar) x_0) / sqrt(1 - abar), or v.
    oracle_eps = lambda x, t, _: ddpm.predict_eps_from_x0(sched, x, t, x0)
    oracle_v = lambda x, t, _: ddpm.v_target(sched, x0, t, oracle_eps(x, t, _))
    return (ddpm.predict_x0_from_v(sched, x_t, t, v), ddpm.eps_from_v(sched, x_t, t, v),
            ddpm.predict_x0_from_eps(sched, x_t, t, eps), ddpm.l_simple(oracle_eps, sched, jax.random.key(2), x0),
            ddpm.l_simple(oracle_v, sched, jax.random.key(2), x0, prediction='v'))

  x0_from_v, eps_from_v, x0_from_eps, loss_eps, loss_v = check()
  np.testing.assert_allclose(x0_from_v, x0, atol=1e-5)
  np.testing.assert_allclose(eps_from_v, eps, atol=1e-5)
  np.testing.assert_allclose(x0_from_eps, x0, atol=1e-4)
  assert float(loss_eps) < 1e-6 and float(loss_v) < 1e-6


def one_point_oracle(sched, x_star):
  """The optimal eps-model for a dataset of one point x*: eps(x_t, t) = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)."""
  return lambda x_t, t, label: ddpm.predict_eps_from_x0(sched, x_t, t, x_star)


@pytest.mark.parametrize('kind,steps,clip', [('ddim', 1000, None), ('ddim', 1, (-1.0, 1.0)), ('ancestral', 1000, None),
                                             ('ancestral', 20, (-1.0, 1.0))])
def test_samplers_return_the_single_training_point(kind, steps, clip):
  sched = ddpm.make_schedule('linear', 1000)
  x_star = jnp.float32(np.random.default_rng(0).uniform(-1, 1, (5, 3, 2)))
  x = ddpm.sample(one_point_oracle(sched, x_star), sched, jax.random.key(1), (4, 5, 3, 2), steps, kind, clip=clip)
  np.testing.assert_allclose(x, jnp.broadcast_to(x_star, x.shape), atol=2e-4)


def gaussian_data_sample(kind, steps, eta=0.0, sigma='beta_tilde', mu=0.3, s=0.5):
  """Samples with the exact eps-model of data N(mu, s^2): x_t ~ N(sqrt(abar) mu, abar s^2 + 1 - abar), so
  E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)."""
  sched = ddpm.make_schedule('linear', 1000)

  def eps_fn(x_t, t, label):
    abar = sched.alphas_cumprod[t][:, None]
    return jnp.sqrt(1 - abar) * (x_t - jnp.sqrt(abar) * mu) / (abar * s**2 + 1 - abar)

  # 16384 x `steps` draws: compiled with backend optimisation (the tests' default is none): 12.4 -> 4.3 s, three tests
  sample = jax.jit(lambda key: ddpm.sample(eps_fn, sched, key, (16_384, 1), steps, kind, eta=eta, sigma=sigma),
                   compiler_options={'xla_backend_optimization_level': 2})
  return sample(jax.random.key(0))


@pytest.mark.parametrize('sigma', ['beta', 'beta_tilde'])
def test_ancestral_sampler_with_exact_eps_reproduces_gaussian_data(sigma):
  x = gaussian_data_sample('ancestral', 1000, sigma=sigma)
  assert abs(float(x.mean()) - 0.3) < 0.01
  assert abs(float(x.std()) - 0.5) < 0.01


def test_ddim_with_exact_eps_reproduces_gaussian_data_as_steps_grow():
  samples = [gaussian_data_sample('ddim', steps) for steps in (10, 100, 1000)]
  errors = [abs(float(x.std()) - 0.5) for x in samples]
  assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01
  assert abs(float(samples[2].mean()) - 0.3) < 0.01


def test_ddim_with_eta_one_is_ancestral_with_beta_tilde():
  sched = ddpm.make_schedule('cosine', 1000)
  x_t, eps, noise = jnp.float32(np.random.default_rng(0).standard_normal((3, 4, 8)))
  pairs = [(999, 979), (500, 499), (10, 0), (0, -1)]
  steps = jax.jit(lambda: [(ddpm.ddim_step(sched, x_t, jnp.full((4,), t), t_prev, eps, noise, eta=1.0),
                            ddpm.ancestral_step(sched, x_t, jnp.full((4,), t), t_prev, eps, noise, 'beta_tilde'))
                           for t, t_prev in pairs])()
  for ddim, ancestral in steps:
    np.testing.assert_allclose(ddim, ancestral, rtol=1e-5, atol=1e-5)


def test_timesteps_are_evenly_spaced_and_start_at_pure_noise():
  np.testing.assert_array_equal(ddpm.timesteps(1000, 1000), np.arange(1000))
  np.testing.assert_array_equal(ddpm.timesteps(1000, 4), [249, 499, 749, 999])
  np.testing.assert_array_equal(ddpm.timesteps(1000, 1), [999])


def test_guidance_zero_equals_the_conditional_model():
  model = UNet(out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), norm_groups=4,
               num_classes=3)
  rng = np.random.default_rng(0)
  x = jnp.float32(rng.standard_normal((4, 8, 8, 1)))
  t, label, null = jnp.array([0, 10, 500, 999]), jnp.array([0, 1, 2, 1]), jnp.full((4,), 3)
  params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype),
                        jax.eval_shape(model.init, jax.random.key(0), x, t, label))
  eps_fn = jax.jit(lambda x, t, c: model.apply(params, x, t, c))
  # One compiled call of batch 2B, the shape guided_eps_fn uses: conditional and null-label halves.
  both = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([label, null]))
  cond, uncond = both[:4], both[4:]
  guided0, guided2 = (ddpm.guided_eps_fn(eps_fn, w, 3)(x, t, label) for w in (0.0, 2.0))
  assert float(jnp.max(jnp.abs(cond - uncond))) > 1e-3                         # the label matters
  np.testing.assert_allclose(guided0, cond, atol=1e-5)
  np.testing.assert_allclose(guided2, 3 * cond - 2 * uncond, atol=1e-4)


def test_group_norm_matches_flax_group_norm():
  import flax.linen as nn
  rng = np.random.default_rng(0)
  x = jnp.float32(3.0 + 2.0 * rng.standard_normal((2, 5, 7, 12)))
  params = {'params': {'scale': jnp.float32(rng.standard_normal(12)), 'bias': jnp.float32(rng.standard_normal(12))}}
  ours = GroupNorm(4, jnp.float32).apply(params, x)
  np.testing.assert_allclose(ours, nn.GroupNorm(4, epsilon=1e-6).apply(params, x), atol=2e-5)


@pytest.fixture(scope='module')
def smoke_family():
  config = load_config('smoke')
  family = ddpm.build(config, specs.FASHION_MNIST)
  return config, family, random_state(family)


def jit_cache_size(sampler):
  """Compiled entries of the jitted function behind a sampler (a free variable of its closure)."""
  return sum(c.cell_contents._cache_size() for c in sampler.__closure__ if hasattr(c.cell_contents, '_cache_size'))


def test_sampler_is_deterministic_per_key_and_compiled_once(smoke_family):
  config, family, state = smoke_family
  sampler = family.make_sampler(state)
  a = sampler(jax.random.key(0), 4, steps=3, guidance=1.0)
  assert a.shape == (4, 28, 28, 1) and a.dtype == jnp.uint8
  compiled = jit_cache_size(sampler)
  b = family.make_sampler(state)(jax.random.key(0), 4, steps=3, guidance=1.0)   # a new sampler reuses it
  c = sampler(jax.random.key(1), 4, steps=3, guidance=0.5, label=7)             # so do new key, w and label
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))
  assert compiled >= 1 and jit_cache_size(sampler) == compiled


@pytest.mark.parametrize('options,match', [
    (dict(steps=1001), 'steps must be'), (dict(steps=0), 'steps must be'), (dict(sampler='euler'), 'unknown sampler'),
    (dict(label=10), 'label must be'), (dict(label=-1), 'label must be'), (dict(eta=0.5, sampler='ancestral'), 'eta'),
    (dict(temperature=1.0), 'unknown DDPM sampler option'), (dict(num=0), 'num must be')])
def test_sampler_rejects_bad_options(smoke_family, options, match):
  _, family, state = smoke_family
  num = options.pop('num', 4)
  with pytest.raises(UserError, match=match):
    family.make_sampler(state)(jax.random.key(0), num, **options)


def test_unconditional_sampler_rejects_guidance_and_labels():
  config = load_config('smoke')
  config.model.num_classes = 0
  family = ddpm.build(config, specs.FASHION_MNIST)
  sampler = family.make_sampler(random_state(family))
  with pytest.raises(UserError, match='guidance'):
    sampler(jax.random.key(0), 4, guidance=1.0)
  with pytest.raises(UserError, match='label'):
    sampler(jax.random.key(0), 4, guidance=0.0, label=1)


@pytest.mark.parametrize('name', ['ddpm_fashion_mnist', 'ddpm_cifar10'])
def test_configs_build_and_reject_unknown_presets(name):
  config = load_config('default', name)
  assert config.family == 'ddpm' and config.model.timesteps == 1000
  ddpm.build(config, data.synthetic_spec(config))             # the shape from TFDS's declaration, no download
  with pytest.raises(ValueError, match='smoke'):
    load_config('nope', name)


def test_smoke_run_then_sample_py_writes_a_grid(cli, tmp_path):
  workdir = tmp_path / 'run'                      # train.py's own path: test_trainer's CLI smoke run
  train(lambda: load_config('smoke'), tmp_path, workdir, 4)
  assert (workdir / 'samples' / 'step_000004.png').exists() and (workdir / 'checkpoints' / '4').exists()
  out = tmp_path / 'grid.png'
  cli('sample.py', '--workdir', str(workdir), '--steps', '10', '--label', '3', '--guidance', '2', '--num', '6',
      '--out', str(out), mock_data=False)
  from PIL import Image
  assert Image.open(out).size == (3 * 30 + 2, 2 * 30 + 2)     # 6 images of 28x28 in a 3-column grid, 2px padding
  with pytest.raises(UserError, match=r'^steps must be an integer in \[1, 1000\]'):   # sample.py's one line: test_reliability
    jaxgen.load_sampler(str(workdir))(jax.random.key(0), steps=1001)
