"""StyleGAN2: resampling, demodulation, truncation, style mixing, the lazy regularisers, the half-life EMA,
DiffAugment, the sampler's grids, 8 devices == 1, and a resumed smoke run == an uninterrupted one.

The multi-device check runs this file as a script on 8 simulated CPU devices (as tests/test_scale.py does).
"""
import functools
import importlib
import json
import math
import os
import subprocess
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gan_fashion_mnist, stylegan_fashion_mnist
from jaxgen import data
from jaxgen.errors import UserError
from jaxgen.families import gan
from jaxgen.models import stylegan
from tests.support import specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(**overrides):
  config = stylegan_fashion_mnist.get_config('smoke')
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def synthetic_batch(batch_size=8, side=8, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': jnp.asarray(rng.uniform(-1, 1, (batch_size, side, side, 1)), jnp.float32),
          'label': jnp.asarray(np.arange(batch_size) % 10, jnp.int32)}


# ---------------------------------------------------------------------------------------------- resampling

def _upfirdn1d(x, up, down, pad, gain):
  """StyleGAN2's upfirdn2d along one axis, as written in its reference: zero insertion, pad, FIR, subsample."""
  f = np.array([1.0, 3.0, 3.0, 1.0]) / 8
  u = np.zeros(len(x) * up)
  u[::up] = x
  u = np.concatenate([np.zeros(pad[0]), u, np.zeros(pad[1])])
  return (np.array([np.dot(f[::-1], u[m:m + 4]) for m in range(len(u) - 3)]) * gain)[::down]


def _upfirdn2d(x, **kwargs):
  x = np.apply_along_axis(lambda v: _upfirdn1d(v, **kwargs), 1, x)
  return np.apply_along_axis(lambda v: _upfirdn1d(v, **kwargs), 2, x)


def test_resampling_is_stylegan2s_upfirdn2d_with_the_1331_filter():
  x = np.random.default_rng(0).normal(size=(2, 6, 8, 3))
  np.testing.assert_allclose(stylegan.upsample(jnp.asarray(x)), _upfirdn2d(x, up=2, down=1, pad=(2, 1), gain=2),
                             atol=1e-5)
  np.testing.assert_allclose(stylegan.downsample(jnp.asarray(x)), _upfirdn2d(x, up=1, down=2, pad=(1, 1), gain=1),
                             atol=1e-5)
  # a constant image stays constant away from the zero padding (the filter sums to 1 per output phase)
  np.testing.assert_allclose(stylegan.upsample(jnp.ones((1, 6, 6, 1)))[0, 2:-2, 2:-2, 0], 1.0, atol=1e-6)


def test_strided_and_transposed_convs_equal_resampling_around_a_stride_1_conv():
  """conv_up = conv(upsample(x)) and conv_down = downsample(conv(x)) away from the borders (the filter commutes
  with the conv), at a quarter of the multiply-adds."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 12, 12, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
  up, reference = stylegan.conv_up(x, k), stylegan._conv(stylegan.upsample(x), k)
  assert up.shape == reference.shape == (2, 24, 24, 5)
  np.testing.assert_allclose(up[:, 3:-3, 3:-3], reference[:, 3:-3, 3:-3], atol=1e-4)
  down, reference = stylegan.conv_down(x, k), stylegan.downsample(stylegan._conv(x, k))
  assert down.shape == reference.shape == (2, 6, 6, 5)
  np.testing.assert_allclose(down[:, 2:-2, 2:-2], reference[:, 2:-2, 2:-2], atol=1e-4)


# ------------------------------------------------------------------------------------------------ layers

def test_demodulation_keeps_unit_variance_for_unit_variance_input():
  """y_o = d_o sum W s x with d_o = 1 / ||s W_o||: Var(y) = 1 for x ~ N(0, 1) whatever the styles s (here
  ~ N(1, 9)); without demodulation the variance follows the styles."""
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 16))
  w = 3.0 * jax.random.normal(jax.random.key(1), (4, 8))          # s = A(w) ~ N(1, 9)
  variances = {}
  for demodulate in (True, False):
    layer = stylegan.ModulatedConv(8, 3, demodulate=demodulate)
    params = layer.init(jax.random.key(2), x, w)
    y = layer.apply(params, x, w)[:, 1:-1, 1:-1]                  # (4, 30, 30, 8) away from the zero padding
    variances[demodulate] = np.asarray(jnp.var(y, axis=(1, 2)))   # per (example, output channel)
  np.testing.assert_allclose(variances[True], 1.0, atol=0.2)
  assert abs(variances[True].mean() - 1.0) < 0.05
  assert variances[False].mean() > 3.0                          # E s^2 = 10 without the d_o


def test_equalised_learning_rate_stores_unit_weights_and_scales_at_run_time():
  """Dense(lr_mul): W stored ~ N(0, 1/lr_mul^2), used as W lr_mul / sqrt(fan_in): outputs have unit scale, and
  a unit change of the stored weight moves the output lr_mul / sqrt(fan_in) as much."""
  layer = stylegan.Dense(256, lr_mul=0.01)
  x = jax.random.normal(jax.random.key(0), (64, 512))
  params = layer.init(jax.random.key(1), x)
  np.testing.assert_allclose(np.std(params['params']['kernel']), 100.0, rtol=0.02)
  np.testing.assert_allclose(np.std(layer.apply(params, x)), 1.0, rtol=0.05)
  bumped = {'params': {**params['params'], 'kernel': params['params']['kernel'].at[0, 0].add(1.0)}}
  delta = layer.apply(bumped, x) - layer.apply(params, x)
  np.testing.assert_allclose(delta[:, 0], x[:, 0] * 0.01 / math.sqrt(512), rtol=1e-3, atol=1e-6)


def test_minibatch_stddev_appends_the_std_of_each_group():
  x = jax.random.normal(jax.random.key(0), (8, 3, 3, 2))
  y = stylegan.minibatch_stddev(x, group_size=4)
  assert y.shape == (8, 3, 3, 3)
  np.testing.assert_array_equal(y[..., :2], x)
  groups = np.asarray(x).reshape(4, 2, 3, 3, 2)                  # example i in group i % 2
  expected = np.sqrt(groups.var(0) + 1e-8).mean((1, 2, 3))       # (2,)
  np.testing.assert_allclose(y[:, 0, 0, 2], np.tile(expected, 4), rtol=1e-5)
  np.testing.assert_allclose(y[..., 2], y[:, :1, :1, 2] * np.ones((1, 3, 3)), rtol=1e-6)


@pytest.mark.parametrize('shape, const, num_ws', [((28, 28, 1), 7, 6), ((64, 64, 3), 4, 10)])
def test_generator_starts_from_a_learned_constant_and_doubles_to_the_image(shape, const, num_ws):
  generator = stylegan.Generator(shape, w_dim=8, mapping_layers=2, features=4, max_features=8, num_classes=10)
  z, labels = jax.ShapeDtypeStruct((2, 8), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32)
  init = functools.partial(generator.init, train=False)
  variables = jax.eval_shape(init, {'params': jax.random.key(0), 'noise': jax.random.key(1)}, z, labels)
  synthesis = variables['params']['synthesis_net']
  assert synthesis['const'].shape == (const, const, 8) and generator.num_ws == num_ws
  assert sum(name.endswith('_torgb') for name in synthesis) == num_ws // 2        # skip outputs at every side
  x = jax.eval_shape(functools.partial(generator.apply, train=False, rngs={'noise': jax.random.key(1)}),
                     variables, z, labels)
  assert x.shape == (2, *shape)
  discriminator = stylegan.Discriminator(4, 8, num_classes=10)
  d_vars = jax.eval_shape(discriminator.init, jax.random.key(2), x, labels)
  assert jax.eval_shape(discriminator.apply, d_vars, x, labels).shape == (2,)


# ------------------------------------------------------------------------------------------ style algebra

@pytest.fixture(scope='module')
def tiny():
  """A tiny conditional generator, its variables with a non-zero w_avg, and a batch of z."""
  generator = stylegan.Generator((28, 28, 1), w_dim=8, mapping_layers=2, features=4, max_features=8,
                                 num_classes=10)
  z, labels = jax.random.normal(jax.random.key(0), (5, 8)), jnp.arange(5)
  init = jax.jit(functools.partial(generator.init, train=False))
  variables = init({'params': jax.random.key(1), 'noise': jax.random.key(2)}, z, labels)
  stats = variables['batch_stats']
  w_avg = jax.random.normal(jax.random.key(3), stats['mapping_net']['w_avg'].shape)
  variables = {**variables, 'batch_stats': {**stats, 'mapping_net': {'w_avg': w_avg}}}
  return generator, variables, z, labels, w_avg


def test_truncation_psi_zero_maps_every_z_to_w_avg_and_psi_one_is_the_identity(tiny):
  generator, variables, z, labels, w_avg = tiny
  mapping = jax.jit(lambda z, psi: generator.apply(variables, z, labels, truncation=psi, method='mapping'))
  ws = mapping(z, 0.0)
  untruncated = jax.jit(lambda z: generator.apply(variables, z, labels, method='mapping'))(z)
  assert ws.shape == (5, generator.num_ws, 8)
  np.testing.assert_array_equal(ws, jnp.broadcast_to(w_avg, ws.shape))
  np.testing.assert_allclose(mapping(z, 1.0), untruncated, rtol=1e-6, atol=1e-6)   # two programs: same to rounding
  np.testing.assert_allclose(mapping(z, 0.5), (untruncated + w_avg) / 2, rtol=1e-5, atol=1e-6)
  truncate = jax.jit(stylegan.truncate)                         # psi traced: exact at both ends
  np.testing.assert_array_equal(truncate(untruncated, w_avg, 1.0), untruncated)
  np.testing.assert_array_equal(truncate(untruncated, w_avg, 0.0), jnp.broadcast_to(w_avg, ws.shape))


def test_w_avg_moves_towards_the_batch_mean_of_w_in_training_mode_only(tiny):
  generator, variables, z, labels, w_avg = tiny
  w = jax.jit(lambda z: generator.apply(variables, z, labels, method='mapping'))(z)[:, 0]
  _, new = jax.jit(lambda z: generator.apply(variables, z, labels, train=True, method='mapping',
                                             mutable=['batch_stats']))(z)
  mean = jnp.mean(w, 0)
  np.testing.assert_allclose(new['batch_stats']['mapping_net']['w_avg'], mean + 0.995 * (w_avg - mean), rtol=1e-5)
  _, same = jax.jit(lambda z: generator.apply(variables, z, labels, method='mapping', mutable=['batch_stats']))(z)
  np.testing.assert_array_equal(same['batch_stats']['mapping_net']['w_avg'], w_avg)


def test_style_mixing_switches_from_the_first_ws_to_the_second_at_the_cutoff():
  ws1, ws2 = jnp.zeros((2, 6, 3)), jnp.ones((2, 6, 3))
  for cutoff in range(7):
    mixed = stylegan.mix_styles(ws1, ws2, cutoff)
    np.testing.assert_array_equal(mixed[:, :cutoff], ws1[:, :cutoff])
    np.testing.assert_array_equal(mixed[:, cutoff:], ws2[:, cutoff:])
  cutoffs = {int(stylegan.mixing_cutoff(jax.random.key(i), 6, 1.0)) for i in range(200)}
  assert cutoffs == {1, 2, 3, 4, 5}                             # every crossover inside the network
  assert {int(stylegan.mixing_cutoff(jax.random.key(i), 6, 0.0)) for i in range(20)} == {6}   # never mixed


def test_every_style_reaches_the_image_and_style_mixing_takes_a_second_z_from_the_cutoff(tiny):
  """Each of the num_ws styles has a gradient on the image, so switching w at any layer changes it; the
  regulariser's ws are the first z's before the cutoff and a second z's from it on."""
  generator, variables, z, labels, _ = tiny
  mapping = jax.jit(lambda z: generator.apply(variables, z, labels, method='mapping'))
  ws = mapping(z)
  synthesis = lambda ws: generator.apply(variables, ws, method='synthesis', rngs={'noise': jax.random.key(0)})
  grads = jax.jit(jax.grad(lambda ws: jnp.sum(synthesis(ws) ** 2)))(ws)
  assert np.all(np.abs(np.asarray(grads)).sum((0, 2)) > 0)      # (num_ws,)
  for seed in range(3):
    rng = jax.random.key(seed)
    mixed = gan.style_mixing(mapping, ws, z.shape, rng, prob=1.0)
    z_rng, cut_rng = jax.random.split(rng)
    cutoff = int(stylegan.mixing_cutoff(cut_rng, generator.num_ws, 1.0))
    assert 1 <= cutoff < generator.num_ws
    np.testing.assert_array_equal(mixed[:, :cutoff], ws[:, :cutoff])
    np.testing.assert_array_equal(mixed[:, cutoff:], mapping(jax.random.normal(z_rng, z.shape))[:, cutoff:])
  np.testing.assert_array_equal(gan.style_mixing(mapping, ws, z.shape, rng, prob=0.0), ws)


# ------------------------------------------------------------------------------------------- regularisers

def test_path_length_penalty_of_a_linear_synthesis_matches_its_closed_form():
  """g(w) = c reshape(w): J^T y = c y, so each length is c sqrt(mean_l sum_d y^2), a moves by decay."""
  ws = jax.random.normal(jax.random.key(0), (4, 6, 8))
  c, rng, pl_mean = 3.0, jax.random.key(1), 0.5
  penalty, new_mean = gan.path_length_penalty(lambda w: c * w.reshape(4, 6, 8, 1), ws, rng, pl_mean, decay=0.01)
  y = np.asarray(jax.random.normal(rng, (4, 6, 8, 1))) / math.sqrt(6 * 8)
  lengths = c * np.sqrt(np.mean(np.sum(y[..., 0] ** 2, -1), -1))
  expected_mean = pl_mean + 0.01 * (lengths.mean() - pl_mean)
  np.testing.assert_allclose(new_mean, expected_mean, rtol=1e-5)
  np.testing.assert_allclose(penalty, np.mean((lengths - expected_mean) ** 2), rtol=1e-4)


def test_half_life_ema_forgets_half_its_weight_every_ema_kimg_thousand_images():
  step, batch = 10_000, 32
  beta = float(gan.half_life_ema_decay(step, batch, ema_kimg=10.0, rampup=0.0))
  np.testing.assert_allclose(beta ** (10_000 / batch), 0.5, rtol=1e-5)
  # ramp-up: the half-life is at most rampup * images seen, so the EMA starts as G (beta = 0 at step 0)
  assert float(gan.half_life_ema_decay(0, batch, 10.0, 0.05)) == 0.0
  ramped = float(gan.half_life_ema_decay(100, batch, 10.0, 0.05))                 # half-life 0.05 * 3200 images
  np.testing.assert_allclose(ramped ** (0.05 * 100 * batch / batch), 0.5, rtol=1e-5)
  assert float(gan.half_life_ema_decay(10 ** 6, batch, 10.0, 0.05)) == pytest.approx(beta)


# ------------------------------------------------------------------------------------------- DiffAugment

def test_translation_shifts_each_image_by_integers_and_shifts_in_zeros():
  x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.0, (6, 16, 16, 1)), jnp.float32)
  y = np.asarray(gan._translation(jax.random.key(3), x))
  s = int(16 * 0.125 + 0.5)
  for image, out in zip(np.asarray(x), y):
    found = []
    for ti in range(-s, s + 1):
      for tj in range(-s, s + 1):
        padded = np.pad(image, ((s, s), (s, s), (0, 0)))
        if np.array_equal(padded[s + ti:s + ti + 16, s + tj:s + tj + 16], out):
          found.append((ti, tj))
    assert len(found) == 1, found                               # out[i, j] = x[i + ti, j + tj], zeros outside


def test_cutout_zeroes_one_clipped_square_per_image():
  y = np.asarray(gan._cutout(jax.random.key(5), jnp.ones((16, 28, 28, 1))))[..., 0]
  for image in y:
    rows, cols = np.where(image == 0)
    assert set(np.unique(image)) == {0.0, 1.0}
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert len(rows) == h * w and 7 <= h <= 14 and 7 <= w <= 14   # one rectangle: a 14-square cut at the edges


def test_diffaugment_is_random_per_example_differentiable_and_the_empty_policy_is_the_identity():
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1), minval=-1.0, maxval=1.0)
  np.testing.assert_array_equal(gan.diff_augment(jax.random.key(1), x, ''), x)
  policy = 'color,translation,cutout'
  y = gan.diff_augment(jax.random.key(1), jnp.tile(x[:1], (4, 1, 1, 1)), policy)
  assert not np.allclose(y[0], y[1])                            # the same image, augmented differently
  grads = jax.grad(lambda x: jnp.sum(gan.diff_augment(jax.random.key(1), x, policy) ** 2))(x)
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)


# ------------------------------------------------------------------------------------------- the GAN steps

class Setup(NamedTuple):
  config: Any
  steps: gan.Steps
  state: gan.GANState
  d_step: Callable
  g_step: Callable


SMALL = data.make_spec(modality='image', name='small', image_shape=(8, 8, 1), num_classes=10)   # 4x4 -> 8x8


@functools.cache
def setup(**overrides) -> Setup:
  """The steps on 8x8 images (one doubling: a quarter of the 28x28 compile time)."""
  config = smoke_config(**overrides)
  steps = gan.make_steps(config, SMALL)
  return Setup(config, steps, jax.jit(steps.init)(jax.random.key(0)), jax.jit(steps.discriminator_step),
               jax.jit(steps.generator_step))


LAZY = {'gan.r1_every': 2, 'gan.r1_gamma': 1.0, 'gan.pl_every': 2, 'gan.style_mixing_prob': 0.5}


def test_lazy_r1_is_k_times_the_penalty_by_hand_on_steps_divisible_by_k_and_absent_otherwise():
  s = setup(**LAZY)
  batch, rng = synthetic_batch(), jax.random.key(1)
  _, discriminator, _ = gan._models(s.config, SMALL)
  d_params = s.state.params['discriminator']
  grads = jax.jit(jax.grad(lambda x: jnp.sum(discriminator.apply({'params': d_params}, x))))(batch['image'])
  by_hand = 2 * 1.0 / 2 * np.mean(np.sum(np.asarray(grads).reshape(8, -1) ** 2, -1))   # k gamma/2 E||grad||^2
  _, metrics = s.d_step(s.state, batch, rng)                    # step 0: 0 % 2 == 0
  np.testing.assert_allclose(metrics['r1'], by_hand, rtol=1e-4)
  assert by_hand > 0
  # step 1: no penalty, and the update is the one without R1: to float rounding (two separately compiled programs),
  # far below the learning rate that an R1 term would move each weight by
  at_1 = s.state.replace(step=jnp.ones((), jnp.int32))
  after, metrics = s.d_step(at_1, batch, rng)
  assert float(metrics['r1']) == 0.0
  no_r1 = setup(**{**LAZY, 'gan.r1_gamma': 0.0})
  reference, _ = no_r1.d_step(at_1, batch, rng)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), after.params['discriminator'],
               reference.params['discriminator'])


def test_generator_step_updates_w_avg_and_the_lazy_path_length_mean_only_on_its_steps():
  s = setup(**LAZY)
  batch = synthetic_batch()
  after_d, _ = s.d_step(s.state, batch, jax.random.key(1))
  g_stats = lambda state: state.batch_stats['generator']
  jax.tree.map(np.testing.assert_array_equal, g_stats(after_d), g_stats(s.state))      # D's update: G untouched
  after_g, metrics = s.g_step(after_d, batch, jax.random.key(2))                       # step 0: path length runs
  assert float(metrics['pl']) > 0 and float(g_stats(after_g)['pl_mean']) > 0
  assert not np.allclose(g_stats(after_g)['mapping_net']['w_avg'], 0.0)
  at_1 = after_g.replace(step=jnp.ones((), jnp.int32))
  after_1, metrics = s.g_step(at_1, batch, jax.random.key(3))
  assert float(metrics['pl']) == 0.0
  assert float(g_stats(after_1)['pl_mean']) == float(g_stats(after_g)['pl_mean'])
  assert not np.array_equal(g_stats(after_1)['mapping_net']['w_avg'], g_stats(after_g)['mapping_net']['w_avg'])
  # the half-life EMA ramps from G: after the first update (beta = 0) it equals the updated G
  jax.tree.map(np.testing.assert_array_equal, after_g.ema_params, after_g.params['generator'])


def test_config_errors_are_one_line_user_errors():
  cases = [({'model.arch': 'stylegan3'}, 'model.arch'), ({'gan.diffaugment': 'color,blur'}, "'blur'"),
           ({'gan.r1_every': 0}, 'gan.r1_every'), ({'optim.ema_decay': 0.999}, 'two EMAs')]
  for overrides, message in cases:
    with pytest.raises(UserError, match=message) as error:
      gan.make_steps(smoke_config(**overrides), specs.FASHION_MNIST)
    assert '\n' not in str(error.value)
  dcgan = gan_fashion_mnist.get_config('smoke')
  dcgan.gan.pl_weight = 2.0
  with pytest.raises(UserError, match='arch=stylegan2'):
    gan.make_steps(dcgan, specs.FASHION_MNIST)


# ------------------------------------------------------------------------------------------------ sampling

@pytest.fixture(scope='module')
def family():
  family = gan.build(smoke_config(), specs.FASHION_MNIST)
  return family, jax.jit(family.init)(jax.random.key(0))


def test_sampler_truncation_zero_gives_one_image_and_the_key_decides_otherwise(family):
  family, state = family
  sampler = family.make_sampler(state)
  images = sampler(jax.random.key(0), num=4)
  assert images.shape == (4, 28, 28, 1) and images.dtype == jnp.uint8
  np.testing.assert_array_equal(images, sampler(jax.random.key(0), num=4, truncation=1.0))
  assert not np.array_equal(images[0], images[1])
  at_w_avg = sampler(jax.random.key(0), num=4, truncation=0.0)  # noise strengths are 0 at init
  assert all(np.array_equal(at_w_avg[0], x) for x in at_w_avg[1:])
  with pytest.raises(UserError, match='truncation'):
    sampler(jax.random.key(0), num=2, truncation=float('nan'))


def test_mixing_grid_takes_coarse_styles_from_rows_and_fine_styles_from_columns(family):
  family, state = family
  generator, _, _ = gan._models(smoke_config(), specs.FASHION_MNIST)
  n, rng = 3, jax.random.key(5)
  grid = family.make_sampler(state)(rng, num=n, mix=True)
  assert grid.shape == ((n + 1) * 30 + 2, (n + 1) * 30 + 2, 1) and grid.dtype == np.uint8
  cell = lambda r, c: grid[2 + 30 * r:30 * r + 30, 2 + 30 * c:30 * c + 30]
  assert np.all(cell(0, 0) == 255)                              # the blank corner
  # by hand: columns are z[:n], rows z[n:], cell (r, c) = coarse ws of row r + fine ws of column c
  g_vars = {'params': state.ema_params, 'batch_stats': state.batch_stats['generator']}
  z_rng, _, noise_rng = jax.random.split(rng, 3)
  ws = jax.jit(lambda z: generator.apply(g_vars, z, method='mapping'))(jax.random.normal(z_rng, (2 * n, 8)))
  synthesis = jax.jit(lambda ws: generator.apply(g_vars, ws, shared_noise=True, method='synthesis',
                                                 rngs={'noise': noise_rng}))
  image = lambda w: np.asarray(jnp.clip(jnp.round((synthesis(w[None])[0] + 1) / 2 * 255), 0, 255))
  cutoff = generator.num_ws // 2
  for r, c in [(0, 1), (1, 0), (2, 3), (3, 1)]:
    if r == 0:
      expected = image(ws[c - 1])
    elif c == 0:
      expected = image(ws[n + r - 1])
    else:
      expected = image(jnp.concatenate([ws[n + r - 1, :cutoff], ws[c - 1, cutoff:]]))
    np.testing.assert_allclose(cell(r, c), expected, atol=1)   # rounding of values that sit on .5


def test_dcgan_sampler_rejects_truncation_and_mix():
  config = gan_fashion_mnist.get_config('smoke')
  family = gan.build(config, specs.FASHION_MNIST)
  sampler = family.make_sampler(jax.jit(family.init)(jax.random.key(0)))
  for option in ({'truncation': 0.7}, {'mix': True}):
    with pytest.raises(UserError, match='need a StyleGAN2 model') as error:
      sampler(jax.random.key(0), num=2, **option)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('name', ['dcgan_celeba64', 'stylegan_celeba64'])
def test_celeba64_configs_train_on_unlabelled_64x64_faces(name, tmp_path):
  """The TFDS celeb_a spec (no download: 178x218 faces, no labels) after the 148 crop and 64 resize, and one
  train step of each face config traced through its networks."""
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  config.data.data_dir = str(tmp_path)
  spec = data.synthetic_spec(config)
  assert spec.image_shape == (64, 64, 3) and spec.num_classes == 0
  family = gan.build(config, spec)
  assert set(family.batch_spec) == {'image'}
  state = jax.eval_shape(family.init, jax.random.key(0))
  batch = {'image': jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.float32)}
  new_state, metrics = jax.eval_shape(family.train_step, state, batch, jax.random.key(1))
  assert jax.tree.structure(new_state) == jax.tree.structure(state) and metrics['loss'].shape == ()
  config.model.conditional = True
  with pytest.raises(UserError, match='celeb_a has none'):
    gan.build(config, spec)


# ------------------------------------------------------------------------------------- runs and devices

@pytest.mark.slow  # ~1-2 min on 2 CPU cores: three smoke runs and two sample.py processes
def test_smoke_run_writes_checkpoints_and_grid_resumes_bit_exactly_and_samples(tmp_path, cli):
  from tests.support.runs import straight_and_resumed
  straight, resumed = straight_and_resumed(smoke_config, tmp_path, 6, 3)
  assert sorted(os.listdir(tmp_path / 'resumed' / 'checkpoints')) == ['3', '6']
  assert os.path.exists(tmp_path / 'resumed' / 'samples' / 'step_000006.png')
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)   # params, w_avg, pl_mean, Adam states, EMA

  workdir = tmp_path / 'resumed'
  out = tmp_path / 'mix.png'
  cli('sample.py', '--workdir', str(workdir), '--mix', '--num', '2', '--truncation', '0.5', '--out', str(out))
  from PIL import Image
  assert np.asarray(Image.open(out)).shape == (3 * 30 + 2, 3 * 30 + 2)
  cli('sample.py', '--workdir', str(workdir), '--truncation', '0', '--num', '4', '--out', str(tmp_path / 'x.npz'))
  samples = np.load(tmp_path / 'x.npz')
  samples = samples[samples.files[0]]
  assert samples.shape == (4, 28, 28, 1)


@pytest.mark.slow  # ~1 min: a subprocess on 8 simulated devices compiles the step twice
def test_data_parallel_steps_equal_one_device_steps():
  """3 steps on a data=8 mesh (batch split 8 ways, the minibatch-stddev groups across devices) == 1 device."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0')
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-5000:]
  run = json.loads(proc.stdout.strip().splitlines()[-1])
  assert run['devices'] == 8 and run['batch_shard_rows'] == 1
  assert run['error'] <= 1, run                                  # assert_allclose(rtol=1e-4, atol=1e-5) on the state
  np.testing.assert_allclose(run['losses'], run['reference_losses'], rtol=1e-5)


def _eight_devices() -> dict:
  """The worker: the trainer's jitted step on 1 device and on data=8, with the smoke config's R1 and path
  length steps in the 3 (steps 0 and 2)."""
  from jaxgen import families
  from tests import test_scale
  config = smoke_config()
  family = families.build(config, specs.FASHION_MNIST)
  reference, reference_losses, _ = test_scale._train_steps(family, config, test_scale._mesh(1, 1))
  state, losses, batch = test_scale._train_steps(family, config, test_scale._mesh(8, 1))
  return dict(devices=jax.device_count(), error=test_scale._error(state, reference), losses=losses,
              reference_losses=reference_losses, batch_shard_rows=test_scale._rows_per_device(batch))


if __name__ == '__main__':
  print(json.dumps(_eight_devices()))
