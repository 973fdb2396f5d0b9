"""GAN family (Goodfellow et al. 2014; DCGAN, Radford et al. 2015): losses, the joint D/G step, sampler.

With D(x) = sigmoid(l(x)) for the discriminator's logit l, the minimax game is
  min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))].
Every loss below is written with softplus / log_sigmoid of logits (-log sigmoid(l) = softplus(-l),
-log(1 - sigmoid(l)) = softplus(l)), never as the log of a probability.

One train_step = n_critic discriminator updates (G fixed) then one generator update against the updated
D, each network with its own Optax state, all in one jitted call. BatchNorm running statistics (and the
spectral-norm power-iteration vectors, which Flax keeps in the same 'batch_stats' collection) of a network
change only in that network's own update: D's in the D update (from its separate real and fake
forward passes, as in the reference DCGAN), G's in the G update. The other network still runs in
training mode there (batch statistics), but its statistics updates are dropped, so the G update leaves
every D variable unchanged and vice versa.

Config: model.{latent_dim, g_features, d_features, d_norm, conditional} (shapes), gan.{loss, n_critic,
r1_gamma} (training math), data.pixel_range; the spec gives image_shape and num_classes.
"""
import functools
import math
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import evaluators, images, samples
from jaxgen.errors import UserError
from jaxgen.families.base import Family, Feature
from jaxgen.models.dcgan import Discriminator, Generator
from jaxgen.train import optim

G, D = 'generator', 'discriminator'


# ----------------------------------------------------------------------------------------------- losses

def minimax_d_loss(real_logits, fake_logits):
  """L_D = -E[log D(x)] - E[log(1 - D(G(z)))] = E[softplus(-l(x))] + E[softplus(l(G(z)))]."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def saturating_g_loss(fake_logits):
  """L_G = E[log(1 - D(G(z)))] = E[log_sigmoid(-l(G(z)))]: G's side of the minimax game.

  d L_G / d l = -D(G(z)) -> 0 when D confidently rejects fakes, so G learns slowly early on.
  """
  return jnp.mean(jax.nn.log_sigmoid(-fake_logits))


def non_saturating_g_loss(fake_logits):
  """L_G = -E[log D(G(z))] = E[softplus(-l(G(z)))]; d L_G / d l = D(G(z)) - 1 -> -1 when D rejects fakes."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def hinge_d_loss(real_logits, fake_logits):
  """L_D = E[max(0, 1 - l(x))] + E[max(0, 1 + l(G(z)))] (Lim & Ye 2017; Miyato et al. 2018)."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits):
  """L_G = -E[l(G(z))]."""
  return -jnp.mean(fake_logits)


# gan.loss -> (L_D, L_G)
LOSSES = {
    'non_saturating': (minimax_d_loss, non_saturating_g_loss),
    'saturating': (minimax_d_loss, saturating_g_loss),
    'hinge': (hinge_d_loss, hinge_g_loss),
}


def r1_penalty(logits_fn, real, gamma: float):
  """R1 (Mescheder et al. 2018) = gamma/2 E_x ||grad_x l(x)||^2 on real data; logits_fn: (B, ...) -> (B,).

  The gradient of sum_i l(x_i) is per-example only without batch coupling: with d_norm='batch' it also
  flows through the batch statistics, so R1 is meant for d_norm='spectral' or 'none'.
  """
  grads = jax.grad(lambda x: jnp.sum(logits_fn(x)))(real)        # (B, H, W, C)
  return 0.5 * gamma * jnp.mean(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), -1))


# ------------------------------------------------------------------------------------------------ state

@flax.struct.dataclass
class GANState:
  step: jax.Array                   # int32 (): completed train steps
  params: dict[str, Any]            # {'generator': ..., 'discriminator': ...}
  batch_stats: dict[str, Any]       # same keys: BatchNorm running stats, spectral-norm vectors
  opt_state: dict[str, Any]         # same keys: one Optax state per network
  ema_params: Any                   # EMA of generator params (None when optim.ema_decay == 0)


def _models(config, spec) -> tuple[Generator, Discriminator, int]:
  """(generator, discriminator, num_classes) from the config; num_classes is 0 for unconditional."""
  num_classes = spec.num_classes if config.model.conditional else 0
  dtype = jnp.dtype(config.model.dtype)
  generator = Generator(tuple(spec.image_shape), config.model.g_features, num_classes, dtype)
  discriminator = Discriminator(config.model.d_features, config.model.d_norm, num_classes, dtype)
  return generator, discriminator, num_classes


def _updaters(config) -> tuple[optim.Updater, optim.Updater]:
  """Separate updaters from the shared config.optim: G's with the EMA, D's without; D's schedule counts its
  n_critic updates a step."""
  g = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps)
  d = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps * config.gan.n_critic, ema=False)
  return g, d


def _check_config(config) -> None:
  if config.gan.loss not in LOSSES:
    raise UserError(f'unknown gan.loss {config.gan.loss!r}; choose one of {sorted(LOSSES)}')
  if config.gan.n_critic < 1:
    raise UserError(f'gan.n_critic={config.gan.n_critic} must be >= 1')
  if config.model.d_norm not in ('batch', 'spectral', 'none'):
    raise UserError(f'unknown model.d_norm {config.model.d_norm!r}; use batch, spectral or none')
  if config.gan.r1_gamma < 0:
    raise UserError(f'gan.r1_gamma={config.gan.r1_gamma} must be >= 0 (0 disables R1)')


# ------------------------------------------------------------------------------------------------ steps

class Steps(NamedTuple):
  """The pure functions of a GAN; train_step is generator_step after discriminator_step."""
  init: Callable                    # rng -> GANState
  discriminator_step: Callable      # (state, batch, rng) -> (state, metrics): n_critic D updates, G untouched
  generator_step: Callable          # (state, batch, rng) -> (state, metrics): one G update (+ EMA), D untouched
  train_step: Callable              # (state, batch, rng) -> (state, metrics)
  eval_step: Callable               # (state, batch, rng) -> metrics


def make_steps(config, spec) -> Steps:
  _check_config(config)
  generator, discriminator, num_classes = _models(config, spec)
  g_up, d_up = _updaters(config)
  d_loss_fn, g_loss_fn = LOSSES[config.gan.loss]
  latent_dim, r1_gamma = config.model.latent_dim, config.gan.r1_gamma
  lo, hi = config.data.pixel_range

  def generate(g_vars, z, labels):
    """G in training mode: returns (images in data.pixel_range (B, H, W, C), updated G batch_stats)."""
    x, new = generator.apply(g_vars, z, labels, train=True, mutable=['batch_stats'])
    return lo + (hi - lo) * (x + 1.0) / 2.0, new['batch_stats']

  def discriminate(d_vars, x, labels):
    """D in training mode: returns (logits (B,), updated D batch_stats)."""
    logits, new = discriminator.apply(d_vars, x, labels, train=True, mutable=['batch_stats'])
    return logits, new.get('batch_stats', {})

  def variables(state, net, params=None):
    return {'params': state.params[net] if params is None else params, 'batch_stats': state.batch_stats[net]}

  def init(rng):
    g_rng, d_rng = jax.random.split(rng)
    labels = jnp.zeros((1,), jnp.int32) if num_classes else None
    g_vars = generator.init(g_rng, jnp.zeros((1, latent_dim)), labels, train=False)
    d_vars = discriminator.init(d_rng, jnp.zeros((1, *spec.image_shape)), labels, train=False)
    params = {G: g_vars['params'], D: d_vars['params']}
    (g_opt, ema), (d_opt, _) = g_up.init(params[G]), d_up.init(params[D])
    return GANState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats={G: g_vars['batch_stats'], D: d_vars.get('batch_stats', {})},
                    opt_state={G: g_opt, D: d_opt}, ema_params=ema)

  def d_losses(d_params, state, real, labels, rng):
    """L_D (+ R1) for one critic update; returns (loss, (metrics, new D batch_stats))."""
    fake, _ = generate(variables(state, G), jax.random.normal(rng, (real.shape[0], latent_dim)), labels)
    fake = jax.lax.stop_gradient(fake)
    real_logits, stats = discriminate(variables(state, D, d_params), real, labels)
    fake_logits, stats = discriminate({'params': d_params, 'batch_stats': stats}, fake, labels)
    d_loss = d_loss_fn(real_logits, fake_logits)
    metrics = dict(d_loss=d_loss, d_real=jnp.mean(jax.nn.sigmoid(real_logits)),
                   d_fake=jnp.mean(jax.nn.sigmoid(fake_logits)))
    if r1_gamma:
      metrics['r1'] = r1_penalty(
          lambda x: discriminate(variables(state, D, d_params), x, labels)[0], real, r1_gamma)
      d_loss += metrics['r1']
    return d_loss, (metrics, stats)

  def discriminator_step(state, batch, rng):
    real, labels = batch['image'], batch['label'] if num_classes else None

    def critic_update(state, key):
      grads, (metrics, stats) = jax.grad(d_losses, has_aux=True)(state.params[D], state, real, labels, key)
      d_params, opt_state, _ = d_up.apply(grads, state.params[D], state.opt_state[D], None, state.step)
      return state.replace(params={**state.params, D: d_params},
                           batch_stats={**state.batch_stats, D: stats},
                           opt_state={**state.opt_state, D: opt_state}), metrics

    # Unrolled: XLA:CPU runs convolutions inside a while loop (lax.scan) ~20x slower; n_critic is small.
    metrics = []
    for key in jax.random.split(rng, config.gan.n_critic):
      state, m = critic_update(state, key)
      metrics.append(m)
    return state, jax.tree.map(lambda *ms: jnp.mean(jnp.stack(ms)), *metrics)  # means over the critic updates

  def g_losses(g_params, state, batch_size, labels, rng):
    fake, g_stats = generate(variables(state, G, g_params), jax.random.normal(rng, (batch_size, latent_dim)),
                             labels)
    fake_logits, _ = discriminate(variables(state, D), fake, labels)
    return g_loss_fn(fake_logits), g_stats

  def generator_step(state, batch, rng):
    labels = batch['label'] if num_classes else None
    (g_loss, g_stats), grads = jax.value_and_grad(g_losses, has_aux=True)(
        state.params[G], state, batch['image'].shape[0], labels, rng)
    g_params, opt_state, ema = g_up.apply(grads, state.params[G], state.opt_state[G], state.ema_params, state.step)
    return state.replace(params={**state.params, G: g_params}, batch_stats={**state.batch_stats, G: g_stats},
                         opt_state={**state.opt_state, G: opt_state}, ema_params=ema), {'g_loss': g_loss}

  def train_step(state, batch, rng):
    """n_critic D updates, then one G update against the new D; loss = L_D + L_G (R1 excluded)."""
    d_rng, g_rng = jax.random.split(rng)
    state, d_metrics = discriminator_step(state, batch, d_rng)
    state, g_metrics = generator_step(state, batch, g_rng)
    metrics = {**d_metrics, **g_metrics}
    return state.replace(step=state.step + 1), {'loss': metrics['d_loss'] + metrics['g_loss'], **metrics}

  def eval_step(state, batch, rng):
    """L_D, L_G, mean D(x), mean D(G(z)) on held-out images, both networks run as in train_step."""
    labels = batch['label'] if num_classes else None
    fake, _ = generate(variables(state, G), jax.random.normal(rng, (batch['image'].shape[0], latent_dim)), labels)
    real_logits, _ = discriminate(variables(state, D), batch['image'], labels)
    fake_logits, _ = discriminate(variables(state, D), fake, labels)
    d_loss, g_loss = d_loss_fn(real_logits, fake_logits), g_loss_fn(fake_logits)
    return dict(loss=d_loss + g_loss, d_loss=d_loss, g_loss=g_loss,
                d_real=jnp.mean(jax.nn.sigmoid(real_logits)), d_fake=jnp.mean(jax.nn.sigmoid(fake_logits)))

  return Steps(init, discriminator_step, generator_step, train_step, eval_step)


# ------------------------------------------------------------------------------------------------ build

def build(config, spec) -> Family:
  """The GAN Family on the images of `spec`."""
  steps = make_steps(config, spec)
  generator, _, num_classes = _models(config, spec)
  latent_dim = config.model.latent_dim

  @jax.jit
  def decode(g_vars, z, labels):
    """z (N, latent_dim) -> uint8 (N, H, W, C) with G in inference mode (running BatchNorm statistics)."""
    x = generator.apply(g_vars, z, labels, train=False)         # [-1, 1]
    return images.to_uint8(x)

  @functools.partial(jax.jit, static_argnames='num')
  def sample(g_vars, rng, labels, num):
    z_rng, y_rng = jax.random.split(rng)
    if num_classes and labels is None:                          # conditional, no label asked: random classes
      labels = jax.random.randint(y_rng, (num,), 0, num_classes)
    return decode(g_vars, jax.random.normal(z_rng, (num, latent_dim)), labels)

  def sampling_variables(state):
    params = state.params[G] if state.ema_params is None else state.ema_params
    return {'params': params, 'batch_stats': state.batch_stats[G]}

  def make_sampler(state):
    g_vars = sampling_variables(state)

    def sampler(rng, num: int = 64, label: int | None = None, **options):
      """rng -> uint8 (num, H, W, C); `label` picks the class of a conditional model (default: random)."""
      if options:
        raise UserError(f'unknown sampler option(s) {sorted(options)} for the gan family; it takes num, label')
      if not isinstance(num, (int, np.integer)) or num < 1:
        raise UserError(f'num={num!r} must be a positive integer')
      labels = None
      if label is not None:
        if not num_classes:
          raise UserError('--label needs a class-conditional model (train with --config.model.conditional=True)')
        if not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
          raise UserError(f'label={label!r} is out of range; use 0..{num_classes - 1}')
        labels = jnp.full((num,), label, jnp.int32)
      return sample(g_vars, rng, labels, num=int(num))

    return sampler

  # Preview noise: fixed (from config.seed, not the step) so grids are comparable across steps.
  # Conditional: one row per class, the same noise down each column.
  z_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
  if num_classes:
    preview_cols = math.ceil(config.num_preview / num_classes)
    preview_z = jnp.tile(jax.random.normal(z_rng, (preview_cols, latent_dim)), (num_classes, 1))  # (K*cols, Z)
    preview_labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), preview_cols)
  else:
    preview_cols, preview_labels = None, None
    preview_z = jax.random.normal(z_rng, (config.num_preview, latent_dim))

  def preview(state, batch, rng):
    """uint8 grid of the sampler's generator on the fixed preview noise; `batch` and `rng` are unused."""
    del batch, rng
    return images.make_grid(jax.device_get(decode(sampling_variables(state), preview_z, preview_labels)),
                            preview_cols)

  lo, hi = config.data.pixel_range
  batch_spec = {'image': Feature(tuple(spec.image_shape), np.float32, lo, hi),
                'label': Feature((), np.int32, 0, spec.num_classes)}
  return Family(init=steps.init, train_step=steps.train_step, eval_step=steps.eval_step,
                make_sampler=make_sampler, preview=preview, batch_spec=batch_spec, sample_kind=samples.Images(),
                evaluators={'image_quality': evaluators.image_quality})
