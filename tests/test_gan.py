"""GAN math and the joint step: closed-form losses, gradient saturation, R1, which update touches what."""
import functools
import math
import os
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import gan_fashion_mnist
from jaxgen.errors import UserError
from jaxgen.families import gan
from jaxgen.models.dcgan import ConvTranspose2x, Discriminator, Generator
from tests.support import specs
from tests.support.runs import straight_and_resumed

def smoke_config(**overrides):
  config = gan_fashion_mnist.get_config('smoke')
  for key, value in overrides.items():
    *path, name = key.split('.')
    node = config
    for p in path:
      node = node[p]
    node[name] = value
  return config


def synthetic_batch(batch_size=8, shape=(28, 28, 1), seed=0):
  rng = np.random.default_rng(seed)
  return {'image': jnp.asarray(rng.uniform(-1, 1, (batch_size, *shape)), jnp.float32),
          'label': jnp.asarray(np.arange(batch_size) % 10, jnp.int32)}


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def adam_count(opt_state) -> int:
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  return int(next(s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)).count)


def assert_kernels_all_changed(a, b):
  """Every weight matrix (kernel, embedding) differs; biases may not (e.g. hinge's bias gradient can be 0)."""
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    if path[-1].key in ('kernel', 'embedding'):
      assert not np.array_equal(x, y), jax.tree_util.keystr(path)


# ------------------------------------------------------------------------------------------------- losses

def test_losses_at_an_undecided_discriminator_equal_their_closed_forms():
  zero = jnp.zeros(4)                                           # D(x) = D(G(z)) = 1/2
  np.testing.assert_allclose(gan.minimax_d_loss(zero, zero), 2 * math.log(2), rtol=1e-6)
  np.testing.assert_allclose(gan.non_saturating_g_loss(zero), math.log(2), rtol=1e-6)
  np.testing.assert_allclose(gan.saturating_g_loss(zero), -math.log(2), rtol=1e-6)
  np.testing.assert_allclose(gan.hinge_d_loss(zero, zero), 2.0)
  np.testing.assert_allclose(gan.hinge_g_loss(zero), 0.0)


def test_losses_match_probability_formulas_for_moderate_logits():
  real, fake = jnp.array([1.5, -0.3, 2.0]), jnp.array([-1.0, 0.7, -2.5])
  d_real, d_fake = 1 / (1 + np.exp(-np.asarray(real))), 1 / (1 + np.exp(-np.asarray(fake)))
  np.testing.assert_allclose(gan.minimax_d_loss(real, fake),
                             -np.mean(np.log(d_real)) - np.mean(np.log(1 - d_fake)), rtol=1e-5)
  np.testing.assert_allclose(gan.non_saturating_g_loss(fake), -np.mean(np.log(d_fake)), rtol=1e-5)
  np.testing.assert_allclose(gan.saturating_g_loss(fake), np.mean(np.log(1 - d_fake)), rtol=1e-5)
  np.testing.assert_allclose(gan.hinge_d_loss(real, fake), np.mean(np.maximum(0, 1 - np.asarray(real)))
                             + np.mean(np.maximum(0, 1 + np.asarray(fake))), rtol=1e-6)
  np.testing.assert_allclose(gan.hinge_g_loss(fake), -np.mean(np.asarray(fake)), rtol=1e-6)


def test_losses_stay_finite_for_confident_logits():
  """log D computed as log of a float32 probability would give -inf at |logit| = 200; log_sigmoid does not."""
  big = jnp.array([200.0])
  np.testing.assert_allclose(gan.minimax_d_loss(-big, big), 400.0, rtol=1e-6)  # D maximally wrong
  np.testing.assert_allclose(gan.non_saturating_g_loss(-big), 200.0, rtol=1e-6)
  np.testing.assert_allclose(gan.saturating_g_loss(big), -200.0, rtol=1e-6)


def test_saturating_gradient_vanishes_when_discriminator_rejects_fakes_non_saturating_does_not():
  fake = jnp.array([-20.0])                                     # D(G(z)) = sigmoid(-20) ~ 2e-9
  d_saturating = jax.grad(gan.saturating_g_loss)(fake)[0]       # = -D(G(z))
  d_non_saturating = jax.grad(gan.non_saturating_g_loss)(fake)[0]  # = D(G(z)) - 1
  np.testing.assert_allclose(d_saturating, -jax.nn.sigmoid(-20.0), rtol=1e-5)
  assert abs(d_saturating) < 1e-8
  np.testing.assert_allclose(d_non_saturating, -1.0, rtol=1e-6)
  # both push l(G(z)) up (negative gradient), and agree on the direction everywhere
  logits = jnp.linspace(-5, 5, 11)
  assert np.all(jax.vmap(jax.grad(lambda l: gan.saturating_g_loss(l[None])))(logits) < 0)
  assert np.all(jax.vmap(jax.grad(lambda l: gan.non_saturating_g_loss(l[None])))(logits) < 0)


def test_r1_penalty_of_a_linear_discriminator_is_half_gamma_squared_weight_norm():
  rng = np.random.default_rng(0)
  w, x = jnp.asarray(rng.normal(size=(5, 4, 3))), jnp.asarray(rng.normal(size=(6, 5, 4, 3)))
  linear = lambda x: jnp.sum(x * w, axis=(1, 2, 3)) + 0.7      # grad_x l(x) = w for every x
  np.testing.assert_allclose(gan.r1_penalty(linear, x, gamma=10.0), 5.0 * jnp.sum(w ** 2), rtol=1e-5)


def test_r1_penalty_of_a_quadratic_discriminator_matches_its_gradient():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 2, 1)))
  quadratic = lambda x: jnp.sum(x ** 2, axis=(1, 2, 3))        # grad_x l(x) = 2x
  np.testing.assert_allclose(gan.r1_penalty(quadratic, x, gamma=2.0), jnp.mean(jnp.sum(4 * x ** 2, (1, 2, 3))),
                             rtol=1e-5)


# ------------------------------------------------------------------------------------------------- models

def test_subpixel_transposed_conv_equals_flax_conv_transpose():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 7, 5, 3)), jnp.float32)
  variables = {'params': {'kernel': jnp.asarray(rng.normal(size=(4, 4, 3, 4)), jnp.float32),
                          'bias': jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}
  reference = nn.ConvTranspose(4, (4, 4), (2, 2), padding='SAME')
  np.testing.assert_allclose(jax.jit(ConvTranspose2x(4).apply)(variables, x), jax.jit(reference.apply)(variables, x),
                             atol=1e-5)


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
def test_dcgan_maps_noise_to_image_shape_and_images_to_one_logit(shape):
  generator, discriminator = Generator(shape, features=4), Discriminator(features=4)
  z = jax.ShapeDtypeStruct((3, 8), jnp.float32)
  g_vars = jax.eval_shape(functools.partial(generator.init, train=False), jax.random.key(1), z)
  x = jax.eval_shape(functools.partial(generator.apply, train=False), g_vars, z)
  assert x.shape == (3, *shape)
  d_vars = jax.eval_shape(functools.partial(discriminator.init, train=False), jax.random.key(2), x)
  assert jax.eval_shape(functools.partial(discriminator.apply, train=False), d_vars, x).shape == (3,)


# ------------------------------------------------------------------------------------------------- steps

VARIANTS = {
    'dcgan': {},
    'conditional_spectral_hinge_r1_2critic': {'model.conditional': True, 'model.d_norm': 'spectral',
                                              'gan.loss': 'hinge', 'gan.r1_gamma': 1.0, 'gan.n_critic': 2},
}


class Setup(NamedTuple):
  config: Any
  steps: gan.Steps
  state: gan.GANState               # freshly initialised
  d_step: Callable                  # jitted once per variant, shared by the tests
  g_step: Callable
  train_step: Callable


@functools.cache
def setup(variant: str) -> Setup:
  config = smoke_config(**VARIANTS[variant])
  steps = gan.make_steps(config, specs.FASHION_MNIST)
  return Setup(config, steps, jax.jit(steps.init)(jax.random.key(0)), jax.jit(steps.discriminator_step),
               jax.jit(steps.generator_step), jax.jit(steps.train_step))


@pytest.fixture(params=['dcgan', 'conditional_spectral_hinge_r1_2critic'])
def variant(request):
  return setup(request.param)


def test_discriminator_update_leaves_generator_untouched_and_vice_versa(variant):
  state, batch = variant.state, synthetic_batch()
  after_d, _ = variant.d_step(state, batch, jax.random.key(1))
  assert_trees_equal(after_d.params['generator'], state.params['generator'])
  assert_trees_equal(after_d.batch_stats['generator'], state.batch_stats['generator'])
  assert_trees_equal(after_d.opt_state['generator'], state.opt_state['generator'])
  assert_kernels_all_changed(after_d.params['discriminator'], state.params['discriminator'])

  after_g, _ = variant.g_step(after_d, batch, jax.random.key(2))
  assert_trees_equal(after_g.params['discriminator'], after_d.params['discriminator'])
  assert_trees_equal(after_g.batch_stats['discriminator'], after_d.batch_stats['discriminator'])
  assert_trees_equal(after_g.opt_state['discriminator'], after_d.opt_state['discriminator'])
  assert_kernels_all_changed(after_g.params['generator'], after_d.params['generator'])
  assert_kernels_all_changed(after_g.ema_params, after_d.ema_params)


def test_train_step_is_generator_step_after_discriminator_step(variant):
  state, batch, rng = variant.state, synthetic_batch(), jax.random.key(3)
  d_rng, g_rng = jax.random.split(rng)
  composed, _ = variant.g_step(variant.d_step(state, batch, d_rng)[0], batch, g_rng)
  new_state, metrics = variant.train_step(state, batch, rng)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new_state.replace(step=0), composed)
  assert int(new_state.step) == 1
  np.testing.assert_allclose(metrics['loss'], metrics['d_loss'] + metrics['g_loss'], rtol=1e-6)
  assert 0 < float(metrics['d_real']) < 1 and 0 < float(metrics['d_fake']) < 1
  # n_critic discriminator updates per generator update, each with its own Adam count
  assert adam_count(new_state.opt_state['discriminator']) == variant.config.gan.n_critic
  assert adam_count(new_state.opt_state['generator']) == 1


def test_discriminator_step_is_one_adam_step_on_the_minimax_loss():
  """Rebuild the D update by hand from the modules, the loss and Optax; compare with discriminator_step."""
  dcgan = setup('dcgan')
  config, state = dcgan.config, dcgan.state
  batch, rng = synthetic_batch(), jax.random.key(4)
  generator = Generator((28, 28, 1), config.model.g_features)
  discriminator = Discriminator(config.model.d_features)

  @jax.jit
  def manual_update(state):
    g_vars = {'params': state.params['generator'], 'batch_stats': state.batch_stats['generator']}
    z_rng = jax.random.split(rng, 1)[0]                         # the one critic update's key
    fake = generator.apply(g_vars, jax.random.normal(z_rng, (8, config.model.latent_dim)), train=True,
                           mutable=['batch_stats'])[0]

    def loss(d_params):
      stats = {'batch_stats': state.batch_stats['discriminator']}
      real_logits, stats = discriminator.apply({'params': d_params, **stats}, batch['image'], train=True,
                                               mutable=['batch_stats'])
      fake_logits, stats = discriminator.apply({'params': d_params, **stats}, fake, train=True,
                                               mutable=['batch_stats'])
      return gan.minimax_d_loss(real_logits, fake_logits), stats['batch_stats']

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params['discriminator'])
    tx = optax.adam(2e-4, b1=0.5)
    updates, _ = tx.update(grads, tx.init(grads), state.params['discriminator'])
    return optax.apply_updates(state.params['discriminator'], updates), stats, value

  expected_params, expected_stats, expected_loss = manual_update(state)
  got, metrics = dcgan.d_step(state, batch, rng)
  close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6)
  jax.tree.map(close, got.params['discriminator'], expected_params)
  jax.tree.map(close, got.batch_stats['discriminator'], expected_stats)
  np.testing.assert_allclose(metrics['d_loss'], expected_loss, rtol=1e-5)


def test_generator_batchnorm_stats_are_those_of_its_own_forward_pass():
  """G's running stats after the G update = one BatchNorm update (momentum 0.9) from the step's noise."""
  dcgan = setup('dcgan')
  state, batch = dcgan.state, synthetic_batch()
  after_d, _ = dcgan.d_step(state, batch, jax.random.key(1))
  d_mean = after_d.batch_stats['discriminator']['BatchNorm_0']['mean']
  assert float(jnp.max(jnp.abs(d_mean))) > 0                     # initialised at 0, moved by the D update
  after_g, _ = dcgan.g_step(after_d, batch, jax.random.key(2))
  g_vars = {'params': after_d.params['generator'], 'batch_stats': after_d.batch_stats['generator']}
  z = jax.random.normal(jax.random.key(2), (8, dcgan.config.model.latent_dim))
  generator = Generator((28, 28, 1), dcgan.config.model.g_features)
  _, updated = jax.jit(lambda v, z: generator.apply(v, z, train=True, mutable=['batch_stats']))(g_vars, z)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), after_g.batch_stats['generator'],
               updated['batch_stats'])
  assert_kernels_all_changed({'k': {'kernel': after_g.batch_stats['generator']['BatchNorm_0']['var']}},
                             {'k': {'kernel': after_d.batch_stats['generator']['BatchNorm_0']['var']}})


def test_eval_step_reports_both_losses_and_discriminator_means():
  dcgan = setup('dcgan')
  family = gan.build(dcgan.config, specs.FASHION_MNIST)
  metrics = jax.jit(family.eval_step)(dcgan.state, synthetic_batch(), jax.random.key(1))
  assert set(metrics) == {'loss', 'd_loss', 'g_loss', 'd_real', 'd_fake'}
  np.testing.assert_allclose(metrics['loss'], metrics['d_loss'] + metrics['g_loss'], rtol=1e-6)
  # an untrained D is undecided: D ~ 1/2 on both, so L_D ~ 2 log 2 and L_G ~ log 2
  np.testing.assert_allclose([metrics['d_real'], metrics['d_fake']], 0.5, atol=0.1)
  np.testing.assert_allclose(metrics['d_loss'], 2 * math.log(2), atol=0.3)


def test_unknown_loss_is_a_user_error():
  with pytest.raises(UserError, match='gan.loss'):
    gan.build(smoke_config(**{'gan.loss': 'wasserstein'}), specs.FASHION_MNIST)


# ------------------------------------------------------------------------------------------------ sampling

@pytest.fixture(scope='module')
def conditional():
  """A conditional family and its initial state."""
  family = gan.build(smoke_config(**{'model.conditional': True}), specs.FASHION_MNIST)
  return family, jax.jit(family.init)(jax.random.key(0))


def test_sampler_is_deterministic_for_a_key_and_the_label_changes_the_output(conditional):
  family, state = conditional
  sampler = family.make_sampler(state)
  a = sampler(jax.random.key(7), num=4, label=2)
  assert a.shape == (4, 28, 28, 1) and a.dtype == jnp.uint8
  np.testing.assert_array_equal(a, sampler(jax.random.key(7), num=4, label=2))
  assert not np.array_equal(a, sampler(jax.random.key(7), num=4, label=5))
  assert not np.array_equal(a, sampler(jax.random.key(8), num=4, label=2))


def test_sampler_rejects_bad_options(conditional):
  family, state = conditional
  sampler = family.make_sampler(state)
  for kwargs, message in [({'label': 10}, 'out of range'), ({'label': -1}, 'out of range'),
                          ({'num': 0}, 'positive'), ({'guidance': 2.0}, 'unknown sampler option')]:
    with pytest.raises(UserError, match=message):
      sampler(jax.random.key(0), **kwargs)
  dcgan = setup('dcgan')
  with pytest.raises(UserError, match='conditional'):
    gan.build(dcgan.config, specs.FASHION_MNIST).make_sampler(dcgan.state)(jax.random.key(0), num=2, label=1)


def test_preview_uses_fixed_noise_and_one_row_per_class(conditional):
  family, state = conditional
  batch = synthetic_batch()
  grid = family.preview(state, batch, jax.random.key(1))
  np.testing.assert_array_equal(grid, family.preview(state, batch, jax.random.key(2)))
  cols = math.ceil(16 / 10)                                     # smoke num_preview = 16, 10 classes
  assert grid.shape == (10 * 30 + 2, cols * 30 + 2, 1) and grid.dtype == np.uint8


def test_config_presets():
  default = gan_fashion_mnist.get_config('default')
  assert (default.batch_size, default.learning_rate, default.optim.b1) == (128, 2e-4, 0.5)
  assert tuple(default.data.pixel_range) == (-1.0, 1.0)
  with pytest.raises(ValueError, match='smoke'):
    gan_fashion_mnist.get_config('huge')


def test_conditional_smoke_run_writes_checkpoints_and_grid_and_resumes_bit_exactly(tmp_path):
  straight, resumed = straight_and_resumed(lambda: smoke_config(**{'model.conditional': True}), tmp_path, 6, 3)
  assert sorted(os.listdir(tmp_path / 'resumed' / 'checkpoints')) == ['3', '6']
  assert os.path.exists(tmp_path / 'resumed' / 'samples' / 'step_000006.png')
  assert_trees_equal(straight, resumed)                          # params, BN stats, both Adam states, EMA
