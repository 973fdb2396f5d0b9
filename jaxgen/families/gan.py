"""GAN family (Goodfellow et al. 2014; DCGAN, Radford et al. 2015; StyleGAN2, Karras et al. 2020): losses,
regularisers, the joint D/G step, samplers.

With D(x) = sigmoid(l(x)) for the discriminator's logit l, the minimax game is
  min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))].
Every loss below is written with softplus / log_sigmoid of logits (-log sigmoid(l) = softplus(-l),
-log(1 - sigmoid(l)) = softplus(l)), never as the log of a probability.

One train_step = n_critic discriminator updates (G fixed) then one generator update against the updated
D, each network with its own Optax state, all in one jitted call. BatchNorm running statistics (and the
spectral-norm power-iteration vectors, which Flax keeps in the same 'batch_stats' collection; StyleGAN2's
w_avg and path-length mean live there too) of a network change only in that network's own update: D's in
the D update (from its separate real and fake forward passes, as in the reference DCGAN), G's in the G
update. The other network still runs in training mode there (batch statistics), but its statistics
updates are dropped, so the G update leaves every D variable unchanged and vice versa.

model.arch picks the networks: 'dcgan' (jaxgen.models.dcgan) or 'stylegan2' (jaxgen.models.stylegan). The
StyleGAN2 training math, each optional and usable with either arch unless noted:
  lazy R1        on steps with step % gan.r1_every == 0 only, r1_every * R1 (its mean over steps is R1)
  path length    (stylegan2) every gan.pl_every steps, pl_every * pl_weight * E(||J_w^T y|| - a)^2
  style mixing   (stylegan2) gan.style_mixing_prob: a second z's styles from a random layer on
  half-life EMA  gan.ema_kimg > 0: G_ema <- beta G_ema + (1 - beta) G with beta = 0.5 ** (B / max(n_half, 1e-8)),
                 n_half = ema_kimg * 1000 images, at most ema_rampup * (images seen) when ema_rampup > 0
                 (StyleGAN2-ADA; replaces optim.ema_decay)
  DiffAugment    gan.diffaugment = 'color,translation,cutout' (any subset): the same random, differentiable
                 augmentation family T applied to real and fake images before D (Zhao et al. 2020), D(T(x))
The truncation trick (sampler truncation=psi) moves every w towards w_avg, the running mean of mapped w.

Config: model.{arch, latent_dim, g_features, d_features, d_norm (dcgan), conditional; stylegan2: w_dim,
mapping_layers, max_features}, gan.{loss, n_critic, r1_gamma, r1_every, pl_weight, pl_every,
style_mixing_prob, ema_kimg, ema_rampup, diffaugment} (keys absent from a config take the defaults in
GAN_DEFAULTS), data.pixel_range; the spec gives image_shape and num_classes (0: a dataset without labels).
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
from jaxgen.models import dcgan, stylegan
from jaxgen.train import optim

G, D = 'generator', 'discriminator'
ARCHS = ('dcgan', 'stylegan2')
# gan.* keys a config may leave out (DCGAN configs written before StyleGAN2), and their values then
GAN_DEFAULTS = dict(r1_every=1, pl_weight=0.0, pl_every=4, pl_batch_shrink=2, pl_decay=0.01, style_mixing_prob=0.0,
                    ema_kimg=0.0, ema_rampup=0.0, diffaugment='')


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
  flows through the batch statistics, so R1 is meant for d_norm='spectral' or 'none' (StyleGAN2's D couples
  examples through its minibatch stddev only, as in StyleGAN2).
  """
  grads = jax.grad(lambda x: jnp.sum(logits_fn(x)))(real)        # (B, H, W, C)
  return 0.5 * gamma * jnp.mean(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), -1))


def lazy_r1_penalty(logits_fn, real, gamma: float, every: int, step):
  """Lazy R1 (Karras et al. 2020, sec. 4.1): every * R1 on steps with step % every == 0, 0 on the others, so
  the penalty's mean over steps stays R1 while it is computed once every `every` steps (lax.cond: the
  other steps do not run it)."""
  if every == 1:
    return r1_penalty(logits_fn, real, gamma)
  return jax.lax.cond(step % every == 0, lambda: every * r1_penalty(logits_fn, real, gamma), lambda: jnp.zeros(()))


def path_length_penalty(synthesize, ws, rng, pl_mean, decay: float):
  """Path-length regulariser (Karras et al. 2020 eq. 4): E_{w,y} (||J_w^T y||_2 - a)^2, y ~ N(0, I) / sqrt(H W).

  synthesize: ws (B, num_ws, w_dim) -> images (B, H, W, C); J_w^T y = grad_w sum(g(w) y) (one VJP), its
  length sqrt(mean_layers sum_dims (J_w^T y)^2) as StyleGAN2-ADA; a <- a + decay (mean_B length - a), the
  running mean (pl_mean). Returns (penalty, new a).
  """
  images, vjp = jax.vjp(synthesize, ws)
  y = jax.random.normal(rng, images.shape) / math.sqrt(images.shape[1] * images.shape[2])
  (grads,) = vjp(y)                                              # (B, num_ws, w_dim)
  lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), -1), -1))   # (B,)
  new_mean = pl_mean + decay * (jnp.mean(lengths) - pl_mean)
  return jnp.mean(jnp.square(lengths - new_mean)), jax.lax.stop_gradient(new_mean)


def style_mixing(mapping, ws, z_shape, rng, prob: float):
  """Style-mixing regularisation (Karras et al. 2019 sec. 3.1): with probability `prob` the batch's styles from
  layer c ~ U{1, ..., num_ws - 1} on are those of a second z2 ~ N(0, I) of z_shape: mix_styles(ws,
  mapping(z2), c); mapping: z (B, Z) -> ws (B, num_ws, w_dim), ws the first z's."""
  z_rng, cut_rng = jax.random.split(rng)
  return stylegan.mix_styles(ws, mapping(jax.random.normal(z_rng, z_shape)),
                             stylegan.mixing_cutoff(cut_rng, ws.shape[1], prob))


def half_life_ema_decay(step, batch_size: int, ema_kimg: float, rampup: float):
  """StyleGAN2's G_ema decay: beta = 0.5 ** (B / max(n_half, 1e-8)), so the EMA forgets half its weight every
  n_half images; n_half = ema_kimg * 1000, limited to rampup * (step * B images seen before this update)
  when rampup > 0 (beta = 0 at step 0: the EMA starts as G)."""
  n_half = jnp.asarray(ema_kimg * 1000.0, jnp.float32)
  if rampup:
    n_half = jnp.minimum(n_half, rampup * jnp.asarray(step, jnp.float32) * batch_size)
  return 0.5 ** (batch_size / jnp.maximum(n_half, 1e-8))


# ------------------------------------------------------------------------------------------- DiffAugment

def _brightness(rng, x):
  """x + U(-0.5, 0.5) per example."""
  return x + jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype) - 0.5


def _saturation(rng, x):
  """Channel-mean + (x - channel-mean) * U(0, 2) per example."""
  mean = jnp.mean(x, -1, keepdims=True)
  return (x - mean) * jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype, 0.0, 2.0) + mean


def _contrast(rng, x):
  """Image-mean + (x - image-mean) * U(0.5, 1.5) per example."""
  mean = jnp.mean(x, (1, 2, 3), keepdims=True)
  return (x - mean) * jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype, 0.5, 1.5) + mean


def _translation(rng, x, ratio: float = 0.125):
  """Shift each example by integers in [-s, s] per axis, s = round(ratio * side), zeros shifted in:
  out[i, j] = x[i + ti, j + tj]."""
  b, h, w, _ = x.shape
  out, valid = x, jnp.ones((b, h, w, 1), bool)
  for axis, (n, key) in enumerate(zip((h, w), jax.random.split(rng))):
    s = int(n * ratio + 0.5)
    index = jnp.arange(n)[None] + jax.random.randint(key, (b, 1), -s, s + 1)          # (B, n)
    shape = (b, n, 1, 1) if axis == 0 else (b, 1, n, 1)
    out = jnp.take_along_axis(out, jnp.clip(index, 0, n - 1).reshape(shape), axis=axis + 1)
    valid &= ((index >= 0) & (index < n)).reshape(shape)
  return jnp.where(valid, out, 0.0)


def _cutout(rng, x, ratio: float = 0.5):
  """Zero one square of side round(ratio * side) per example, centred uniformly at random (clipped at the edges)."""
  b, h, w, _ = x.shape
  keep = jnp.zeros((b, h, w, 1), bool)
  for axis, (n, key) in enumerate(zip((h, w), jax.random.split(rng))):
    size = int(n * ratio + 0.5)
    start = jax.random.randint(key, (b, 1), 0, n + (1 - size % 2)) - size // 2
    i = jnp.arange(n)[None]
    outside = ((i < start) | (i >= start + size)).reshape((b, n, 1, 1) if axis == 0 else (b, 1, n, 1))
    keep |= outside
  return x * keep


# DiffAugment policy names -> their transforms, in the order of Zhao et al.'s reference code
AUGMENTS = {'color': (_brightness, _saturation, _contrast), 'translation': (_translation,), 'cutout': (_cutout,)}


def diff_augment(rng, x, policy: str):
  """DiffAugment (Zhao et al. 2020): x (B, H, W, C) -> T(x) with T random per example, differentiable in x;
  `policy` is a comma-separated subset of AUGMENTS ('' = identity)."""
  ops = [op for name in policy.split(',') if name for op in AUGMENTS[name]]
  for i, op in enumerate(ops):
    x = op(jax.random.fold_in(rng, i), x)
  return x


# ------------------------------------------------------------------------------------------------ state

@flax.struct.dataclass
class GANState:
  step: jax.Array                   # int32 (): completed train steps
  params: dict[str, Any]            # {'generator': ..., 'discriminator': ...}
  batch_stats: dict[str, Any]       # same keys: BatchNorm running stats, spectral-norm vectors, w_avg, pl_mean
  opt_state: dict[str, Any]         # same keys: one Optax state per network
  ema_params: Any                   # EMA of generator params (None without an EMA)


def _options(config) -> dict:
  """config.gan with GAN_DEFAULTS for the keys it leaves out."""
  return {**GAN_DEFAULTS, **config.gan.to_dict()}


def _arch(config) -> str:
  return config.model.get('arch', 'dcgan')


def _models(config, spec):
  """(generator, discriminator, num_classes) from the config; num_classes is 0 for unconditional."""
  num_classes = spec.num_classes if config.model.conditional else 0
  m, dtype = config.model, jnp.dtype(config.model.dtype)
  if _arch(config) == 'stylegan2':
    generator = stylegan.Generator(tuple(spec.image_shape), m.w_dim, m.mapping_layers, m.g_features, m.max_features,
                                   num_classes, dtype=dtype)
    discriminator = stylegan.Discriminator(m.d_features, m.max_features, num_classes, dtype=dtype)
  else:
    generator = dcgan.Generator(tuple(spec.image_shape), m.g_features, num_classes, dtype)
    discriminator = dcgan.Discriminator(m.d_features, m.d_norm, num_classes, dtype)
  return generator, discriminator, num_classes


def _updaters(config) -> tuple[optim.Updater, optim.Updater]:
  """Separate updaters from the shared config.optim: G's with the EMA (unless the half-life EMA replaces it),
  D's without; D's schedule counts its n_critic updates a step."""
  half_life = _options(config)['ema_kimg'] > 0
  g = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps, ema=not half_life)
  d = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps * config.gan.n_critic, ema=False)
  return g, d


def _check_config(config, spec) -> None:
  o, arch = _options(config), _arch(config)
  if arch not in ARCHS:
    raise UserError(f'unknown model.arch {arch!r}; choose one of {list(ARCHS)}')
  if config.gan.loss not in LOSSES:
    raise UserError(f'unknown gan.loss {config.gan.loss!r}; choose one of {sorted(LOSSES)}')
  if config.gan.n_critic < 1:
    raise UserError(f'gan.n_critic={config.gan.n_critic} must be >= 1')
  if arch == 'dcgan' and config.model.d_norm not in ('batch', 'spectral', 'none'):
    raise UserError(f'unknown model.d_norm {config.model.d_norm!r}; use batch, spectral or none')
  if config.gan.r1_gamma < 0:
    raise UserError(f'gan.r1_gamma={config.gan.r1_gamma} must be >= 0 (0 disables R1)')
  for key in ('r1_every', 'pl_every', 'pl_batch_shrink'):
    if o[key] < 1:
      raise UserError(f'gan.{key}={o[key]} must be an integer >= 1 (set --config.gan.{key})')
  for key in ('pl_weight', 'ema_kimg', 'ema_rampup', 'pl_decay'):
    if o[key] < 0:
      raise UserError(f'gan.{key}={o[key]} must be >= 0 (set --config.gan.{key})')
  if arch != 'stylegan2' and (o['pl_weight'] or o['style_mixing_prob']):
    raise UserError('gan.pl_weight and gan.style_mixing_prob need --config.model.arch=stylegan2 (set them to 0)')
  if o['ema_kimg'] and config.optim.ema_decay:
    raise UserError(f'gan.ema_kimg={o["ema_kimg"]} and optim.ema_decay={config.optim.ema_decay} are two EMAs; '
                    'set one of them to 0')
  unknown = [p for p in o['diffaugment'].split(',') if p and p not in AUGMENTS]
  if unknown:
    raise UserError(f'unknown gan.diffaugment policy {unknown[0]!r}; use a comma-separated subset of '
                    f'{",".join(AUGMENTS)} (or "" for none)')
  if config.model.conditional and not spec.num_classes:
    raise UserError(f'model.conditional=True needs labels, and {spec.name} has none: set '
                    '--config.model.conditional=False')
  if arch == 'stylegan2':                                       # minibatch-stddev groups of min(4, batch)
    for b in (config.batch_size, config.batch_size // o['pl_batch_shrink'] if o['pl_weight'] else 4):
      if b < 1 or b % min(4, b):
        raise UserError(f'batch_size={config.batch_size} (and batch_size / gan.pl_batch_shrink with path-length '
                        'regularisation) must be a multiple of 4 for model.arch=stylegan2 (its minibatch-stddev '
                        'group), or below 4')


# ------------------------------------------------------------------------------------------------ steps

class Steps(NamedTuple):
  """The pure functions of a GAN; train_step is generator_step after discriminator_step."""
  init: Callable                    # rng -> GANState
  discriminator_step: Callable      # (state, batch, rng) -> (state, metrics): n_critic D updates, G untouched
  generator_step: Callable          # (state, batch, rng) -> (state, metrics): one G update (+ EMA), D untouched
  train_step: Callable              # (state, batch, rng) -> (state, metrics)
  eval_step: Callable               # (state, batch, rng) -> metrics


def make_steps(config, spec) -> Steps:
  _check_config(config, spec)
  o = _options(config)
  generator, discriminator, num_classes = _models(config, spec)
  g_up, d_up = _updaters(config)
  d_loss_fn, g_loss_fn = LOSSES[config.gan.loss]
  latent_dim, r1_gamma = config.model.latent_dim, config.gan.r1_gamma
  lo, hi = config.data.pixel_range
  augment = functools.partial(diff_augment, policy=o['diffaugment'])
  is_stylegan = _arch(config) == 'stylegan2'

  def generate(g_vars, z, labels, rng):
    """G in training mode: returns (images in data.pixel_range (B, H, W, C), updated G batch_stats). StyleGAN2:
    w_avg follows this z's w, style mixing with a second z, layer noise; keys folded from `rng`."""
    if is_stylegan:
      ws, new = generator.apply(g_vars, z, labels, train=True, method='mapping', mutable=['batch_stats'])
      if o['style_mixing_prob']:
        mapping = lambda z2: generator.apply(g_vars, z2, labels, method='mapping')     # w_avg not updated
        ws = style_mixing(mapping, ws, z.shape, jax.random.fold_in(rng, 2), o['style_mixing_prob'])
      x = generator.apply(g_vars, ws, method='synthesis', rngs={'noise': jax.random.fold_in(rng, 1)})
    else:
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
    g_vars = generator.init({'params': g_rng, 'noise': g_rng}, jnp.zeros((1, latent_dim)), labels, train=False)
    d_vars = discriminator.init(d_rng, jnp.zeros((1, *spec.image_shape)), labels, train=False)
    params = {G: g_vars['params'], D: d_vars['params']}
    (g_opt, ema), (d_opt, _) = g_up.init(params[G]), d_up.init(params[D])
    if o['ema_kimg']:
      ema = jax.tree.map(jnp.copy, params[G])
    return GANState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats={G: g_vars['batch_stats'], D: d_vars.get('batch_stats', {})},
                    opt_state={G: g_opt, D: d_opt}, ema_params=ema)

  def d_losses(d_params, state, real, labels, rng):
    """L_D (+ lazy R1) for one critic update; returns (loss, (metrics, new D batch_stats))."""
    fake, _ = generate(variables(state, G), jax.random.normal(rng, (real.shape[0], latent_dim)), labels, rng)
    fake = jax.lax.stop_gradient(fake)
    real_key, fake_key = jax.random.fold_in(rng, 3), jax.random.fold_in(rng, 4)
    real_logits, stats = discriminate(variables(state, D, d_params), augment(real_key, real), labels)
    fake_logits, stats = discriminate({'params': d_params, 'batch_stats': stats}, augment(fake_key, fake), labels)
    d_loss = d_loss_fn(real_logits, fake_logits)
    metrics = dict(d_loss=d_loss, d_real=jnp.mean(jax.nn.sigmoid(real_logits)),
                   d_fake=jnp.mean(jax.nn.sigmoid(fake_logits)))
    if r1_gamma:                                                 # grad_x l(T(x)), T fixed: R1 of the augmented D
      logits_fn = lambda x: discriminate(variables(state, D, d_params), augment(real_key, x), labels)[0]
      metrics['r1'] = lazy_r1_penalty(logits_fn, real, r1_gamma, o['r1_every'], state.step)
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

  def path_length(g_params, state, labels, rng):
    """(pl_every * pl_weight * path-length penalty, new pl_mean) on batch_size / pl_batch_shrink fresh z."""
    g_vars = variables(state, G, g_params)
    b = config.batch_size // o['pl_batch_shrink']
    ws = generator.apply(g_vars, jax.random.normal(rng, (b, latent_dim)), None if labels is None else labels[:b],
                         method='mapping')
    synthesize = lambda ws: generator.apply(g_vars, ws, method='synthesis', rngs={'noise': jax.random.fold_in(rng, 1)})
    penalty, pl_mean = path_length_penalty(synthesize, ws, jax.random.fold_in(rng, 2),
                                           state.batch_stats[G]['pl_mean'], o['pl_decay'])
    return o['pl_every'] * o['pl_weight'] * penalty, pl_mean

  def g_losses(g_params, state, batch_size, labels, rng):
    """L_G (+ lazy path-length penalty); returns (loss, (metrics, new G batch_stats))."""
    fake, g_stats = generate(variables(state, G, g_params), jax.random.normal(rng, (batch_size, latent_dim)),
                             labels, rng)
    fake_logits, _ = discriminate(variables(state, D), augment(jax.random.fold_in(rng, 4), fake), labels)
    g_loss = g_loss_fn(fake_logits)
    metrics = {'g_loss': g_loss}
    if o['pl_weight']:
      args = (g_params, state, labels, jax.random.fold_in(rng, 5))
      metrics['pl'], pl_mean = jax.lax.cond(state.step % o['pl_every'] == 0, path_length, lambda *_: (
          jnp.zeros(()), state.batch_stats[G]['pl_mean']), *args)
      g_stats = {**g_stats, 'pl_mean': pl_mean}
      g_loss += metrics['pl']
    return g_loss, (metrics, g_stats)

  def generator_step(state, batch, rng):
    labels = batch['label'] if num_classes else None
    grads, (metrics, g_stats) = jax.grad(g_losses, has_aux=True)(
        state.params[G], state, batch['image'].shape[0], labels, rng)
    g_params, opt_state, ema = g_up.apply(grads, state.params[G], state.opt_state[G], state.ema_params, state.step)
    if o['ema_kimg']:
      decay = half_life_ema_decay(state.step, config.batch_size, o['ema_kimg'], o['ema_rampup'])
      ema = optim.ema_update(state.ema_params, g_params, decay)
    return state.replace(params={**state.params, G: g_params}, batch_stats={**state.batch_stats, G: g_stats},
                         opt_state={**state.opt_state, G: opt_state}, ema_params=ema), metrics

  def train_step(state, batch, rng):
    """n_critic D updates, then one G update against the new D; loss = L_D + L_G (regularisers excluded)."""
    d_rng, g_rng = jax.random.split(rng)
    state, d_metrics = discriminator_step(state, batch, d_rng)
    state, g_metrics = generator_step(state, batch, g_rng)
    metrics = {**d_metrics, **g_metrics}
    return state.replace(step=state.step + 1), {'loss': metrics['d_loss'] + metrics['g_loss'], **metrics}

  def eval_step(state, batch, rng):
    """L_D, L_G, mean D(x), mean D(G(z)) on held-out images, both networks run as in train_step (no DiffAugment)."""
    labels = batch['label'] if num_classes else None
    fake, _ = generate(variables(state, G), jax.random.normal(rng, (batch['image'].shape[0], latent_dim)), labels,
                       rng)
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
  latent_dim, is_stylegan = config.model.latent_dim, _arch(config) == 'stylegan2'

  @jax.jit
  def decode(g_vars, z, labels, rng, truncation):
    """z (N, latent_dim) -> uint8 (N, H, W, C) with G in inference mode (running BatchNorm statistics;
    StyleGAN2: noise from rng, w truncated towards w_avg by psi = truncation)."""
    if is_stylegan:
      x = generator.apply(g_vars, z, labels, train=False, truncation=truncation, rngs={'noise': rng})
    else:
      x = generator.apply(g_vars, z, labels, train=False)       # [-1, 1]
    return images.to_uint8(x)

  def random_labels(rng, labels, num):
    """The asked labels, or random classes for a conditional model asked for none (None: unconditional)."""
    if num_classes and labels is None:
      return jax.random.randint(rng, (num,), 0, num_classes)
    return labels

  @functools.partial(jax.jit, static_argnames='num')
  def sample(g_vars, rng, labels, truncation, num):
    z_rng, y_rng, noise_rng = jax.random.split(rng, 3)
    return decode(g_vars, jax.random.normal(z_rng, (num, latent_dim)), random_labels(y_rng, labels, num), noise_rng,
                  truncation)

  @functools.partial(jax.jit, static_argnames='num')
  def mixing_cells(g_vars, rng, labels, truncation, num):
    """Style mixing of num row sources and num column sources: uint8 (num + num + num^2, H, W, C), the column
    sources, the row sources, then cell (r, c) = styles ws[:cutoff] (coarse) of row r and ws[cutoff:] (fine)
    of column c, cutoff = num_ws // 2; one noise image shared by every cell."""
    z_rng, y_rng, noise_rng = jax.random.split(rng, 3)
    labels = random_labels(y_rng, labels, 2 * num)
    ws = generator.apply(g_vars, jax.random.normal(z_rng, (2 * num, latent_dim)), labels, truncation=truncation,
                         method='mapping')                          # (2 num, num_ws, w_dim)
    cols, rows = ws[:num], ws[num:]
    mixed = stylegan.mix_styles(jnp.repeat(rows, num, 0), jnp.tile(cols, (num, 1, 1)), generator.num_ws // 2)
    x = generator.apply(g_vars, jnp.concatenate([cols, rows, mixed]), shared_noise=True, method='synthesis',
                        rngs={'noise': noise_rng})
    return images.to_uint8(x)

  def sampling_variables(state):
    params = state.params[G] if state.ema_params is None else state.ema_params
    return {'params': params, 'batch_stats': state.batch_stats[G]}

  def make_sampler(state):
    g_vars = sampling_variables(state)

    def sampler(rng, num: int | None = None, label: int | None = None, truncation: float | None = None,
                mix: bool = False, **options):
      """rng -> uint8 (num, H, W, C) (num default 64); `label` picks the class of a conditional model (default:
      random). StyleGAN2 only: `truncation` psi (default 1: none); mix=True returns ONE uint8 (H', W', C) grid
      of (num + 1) x (num + 1) cells (num default 6): first row the column sources, first column the row
      sources, cell (r, c) coarse styles from row r and fine ones from column c."""
      if options:
        raise UserError(f'unknown sampler option(s) {sorted(options)} for the gan family; it takes num, label'
                        + (', truncation, mix' if is_stylegan else ''))
      if not is_stylegan and (truncation is not None or mix):
        raise UserError('--truncation and --mix need a StyleGAN2 model (model.arch=stylegan2); this one is a DCGAN')
      num = (6 if mix else 64) if num is None else num
      if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 1:
        raise UserError(f'num={num!r} must be a positive integer')
      psi = 1.0 if truncation is None else truncation
      if isinstance(psi, bool) or not isinstance(psi, (int, float, np.number)) or not math.isfinite(psi):
        raise UserError(f'truncation={truncation!r} must be a finite number (1: none, 0: every sample at w_avg)')
      labels = None
      if label is not None:
        if not num_classes:
          raise UserError('--label needs a class-conditional model (train with --config.model.conditional=True)')
        if not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
          raise UserError(f'label={label!r} is out of range; use 0..{num_classes - 1}')
        labels = jnp.full((2 * num if mix else num,), label, jnp.int32)
      if not mix:
        return sample(g_vars, rng, labels, jnp.float32(psi), num=int(num))
      cells = np.asarray(jax.device_get(mixing_cells(g_vars, rng, labels, jnp.float32(psi), num=int(num))))
      blank = np.full((1, *cells.shape[1:]), 255, np.uint8)
      cols, rows, mixed = cells[:num], cells[num:2 * num], cells[2 * num:].reshape(num, num, *cells.shape[1:])
      grid = [blank, cols] + [np.concatenate([rows[r:r + 1], mixed[r]]) for r in range(num)]
      return images.make_grid(np.concatenate(grid), ncols=num + 1)

    return sampler

  # Preview noise (and StyleGAN2's layer noise): fixed (from config.seed, not the step) so grids are comparable
  # across steps. Conditional: one row per class, the same noise down each column.
  z_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
  noise_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
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
    x = decode(sampling_variables(state), preview_z, preview_labels, noise_rng, jnp.float32(1.0))
    return images.make_grid(jax.device_get(x), preview_cols)

  lo, hi = config.data.pixel_range
  batch_spec = {'image': Feature(tuple(spec.image_shape), np.float32, lo, hi)}
  if spec.num_classes:
    batch_spec['label'] = Feature((), np.int32, 0, spec.num_classes)
  return Family(init=steps.init, train_step=steps.train_step, eval_step=steps.eval_step,
                make_sampler=make_sampler, preview=preview, batch_spec=batch_spec, sample_kind=samples.Images(),
                evaluators={'image_quality': evaluators.image_quality})
