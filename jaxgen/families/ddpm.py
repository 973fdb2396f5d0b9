"""DDPM (Ho et al. 2020) with DDIM sampling (Song et al. 2021) and classifier-free guidance (Ho & Salimans 2022).

Notation: t = 0..T-1 indexes the paper's t = 1..T. alphas_t = 1 - betas_t, abar_t = prod_{s<=t} alphas_s
(`alphas_cumprod`), and abar_{-1} = 1 (the data). Forward process:
  q(x_t | x_{t-1}) = N(sqrt(alphas_t) x_{t-1}, betas_t I),   q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

The diffusion functions below work on any array shape (B, ...) and take the denoiser as a function
eps_fn(x_t, t, label) -> eps (or model_fn -> eps | v for the loss), so another family can reuse them
on latents with another network. `diffusion_family` turns them into a jaxgen Family for any denoiser
and decoder of samples; `build` is that for a UNet on images (jaxgen.families.ldm: an MLP on VAE latents).
"""
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


from jaxgen import evaluators, images, samples, timing
from jaxgen.errors import UserError
from jaxgen.families.base import Family, Feature
from jaxgen.models.unet import UNet
from jaxgen.train import optim
from jaxgen.train.state import TrainState

EpsFn = Callable[[jax.Array, jax.Array, Any], jax.Array]   # (x_t, t, label) -> eps, same shape as x_t


# ----------------------------------------------------------------------------------------- schedules

class Schedule(NamedTuple):
  """float32 tables computed in float64; log abar keeps 1 - abar_t and betas precise where abar_t ~ 1."""
  betas: jax.Array                # (T,)
  alphas_cumprod: jax.Array       # (T,) abar_t
  log_alphas_cumprod: jax.Array   # (T,) log abar_t


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """Ho et al.: betas_t linear from 1e-4 to 0.02 (T = 1000)."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal 2021: abar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2),
  betas_t = min(1 - abar(t+1) / abar(t), max_beta)."""
  f = np.cos((np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
  return np.minimum(1 - f[1:] / f[:-1], max_beta)


def make_schedule(name: str, num_timesteps: int) -> Schedule:
  if name not in ('linear', 'cosine'):
    raise UserError(f'unknown model.beta_schedule {name!r}; use linear or cosine')
  betas = linear_betas(num_timesteps) if name == 'linear' else cosine_betas(num_timesteps)
  log_abar = np.cumsum(np.log1p(-betas))
  return Schedule(*(jnp.asarray(a, jnp.float32) for a in (betas, np.exp(log_abar), log_abar)))


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  """(B,) -> (B, 1, ..., 1), broadcastable against x (B, ...)."""
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _log_abar(sched: Schedule, t: jax.Array, x: jax.Array) -> jax.Array:
  """log abar_t broadcast against x, with log abar_{-1} = 0."""
  t = jnp.broadcast_to(t, x.shape[:1])
  return _bcast(jnp.where(t >= 0, sched.log_alphas_cumprod[jnp.maximum(t, 0)], 0.0), x)


def _coefs(sched: Schedule, t, x):
  """(sqrt(abar_t), sqrt(1 - abar_t)) broadcast against x."""
  log_abar = _log_abar(sched, t, x)
  return jnp.exp(0.5 * log_abar), jnp.sqrt(-jnp.expm1(log_abar))


# ------------------------------------------------------------------------------ forward process, loss

def q_sample(sched: Schedule, x0, t, eps):
  """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, a draw of q(x_t | x_0) for eps ~ N(0, I)."""
  sqrt_abar, sqrt_1m_abar = _coefs(sched, t, x0)
  return sqrt_abar * x0 + sqrt_1m_abar * eps


def _posterior(log_abar_t, log_abar_s, x0, x_t):
  """q(x_s | x_t, x_0) for s < t, with alpha = abar_t / abar_s, beta = 1 - alpha:
  mean = sqrt(abar_s) beta / (1 - abar_t) x_0 + sqrt(alpha) (1 - abar_s) / (1 - abar_t) x_t,
  variance = beta_tilde = (1 - abar_s) / (1 - abar_t) beta. Returns (mean, beta_tilde, beta)."""
  beta = -jnp.expm1(log_abar_t - log_abar_s)
  one_m_abar_t, one_m_abar_s = -jnp.expm1(log_abar_t), -jnp.expm1(log_abar_s)
  mean = (jnp.exp(0.5 * log_abar_s) * beta * x0
          + jnp.exp(0.5 * (log_abar_t - log_abar_s)) * one_m_abar_s * x_t) / one_m_abar_t
  return mean, beta * one_m_abar_s / one_m_abar_t, beta


def q_posterior(sched: Schedule, x0, x_t, t):
  """Ho et al. eq. 6-7: q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde_t I),
  mu_tilde = sqrt(abar_{t-1}) betas_t / (1 - abar_t) x_0 + sqrt(alphas_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
  beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) betas_t. Returns (mean, variance broadcast like x_t)."""
  mean, beta_tilde, _ = _posterior(_log_abar(sched, t, x_t), _log_abar(sched, t - 1, x_t), x0, x_t)
  return mean, beta_tilde


def predict_x0_from_eps(sched: Schedule, x_t, t, eps):
  """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), inverting q_sample."""
  sqrt_abar, sqrt_1m_abar = _coefs(sched, t, x_t)
  return (x_t - sqrt_1m_abar * eps) / sqrt_abar


def predict_eps_from_x0(sched: Schedule, x_t, t, x0):
  """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t), inverting q_sample."""
  sqrt_abar, sqrt_1m_abar = _coefs(sched, t, x_t)
  return (x_t - sqrt_abar * x0) / sqrt_1m_abar


def v_target(sched: Schedule, x0, t, eps):
  """Salimans & Ho 2022: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
  sqrt_abar, sqrt_1m_abar = _coefs(sched, t, x0)
  return sqrt_abar * eps - sqrt_1m_abar * x0


def predict_x0_from_v(sched: Schedule, x_t, t, v):
  """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
  sqrt_abar, sqrt_1m_abar = _coefs(sched, t, x_t)
  return sqrt_abar * x_t - sqrt_1m_abar * v


def eps_from_v(sched: Schedule, x_t, t, v):
  """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v: turns a v-prediction model into an eps_fn."""
  sqrt_abar, sqrt_1m_abar = _coefs(sched, t, x_t)
  return sqrt_1m_abar * x_t + sqrt_abar * v


def l_simple(model_fn: EpsFn, sched: Schedule, rng, x0, label=None, prediction: str = 'eps'):
  """L_simple = E_{t, x_0, eps} ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2, t ~ U{0..T-1},
  as a mean over elements; prediction='v' regresses v_target instead of eps (Salimans & Ho 2022)."""
  t_rng, eps_rng = jax.random.split(rng)
  t = jax.random.randint(t_rng, x0.shape[:1], 0, sched.betas.shape[0])
  eps = jax.random.normal(eps_rng, x0.shape, x0.dtype)
  target = eps if prediction == 'eps' else v_target(sched, x0, t, eps)
  return jnp.mean(jnp.square(model_fn(q_sample(sched, x0, t, eps), t, label) - target))


# -------------------------------------------------------------------------------------------- samplers

def guided_eps_fn(eps_fn: EpsFn, guidance, null_label) -> EpsFn:
  """Classifier-free guidance: eps~ = (1 + w) eps(x_t, c) - w eps(x_t, null), both in one batched call. null_label:
  the null class id, or a label of the label's structure with leading axis 1 or B (t2i: a negative prompt's)."""
  def guided(x_t, t, label):
    n = x_t.shape[0]
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, jnp.broadcast_to(u, c.shape).astype(c.dtype)]),
                        label, null_label)
    out = eps_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), both)
    return (1 + guidance) * out[:n] - guidance * out[n:]
  return guided


def _x0_and_eps(sched, x_t, t, eps, clip):
  """x_0 prediction, clipped to `clip` = (lo, hi) if given, and the eps consistent with it."""
  x0 = predict_x0_from_eps(sched, x_t, t, eps)
  if clip is None:
    return x0, eps
  x0 = jnp.clip(x0, *clip)
  return x0, predict_eps_from_x0(sched, x_t, t, x0)


def ancestral_step(sched: Schedule, x_t, t, t_prev, eps, noise, sigma: str = 'beta_tilde', clip=None):
  """Ho et al. Alg. 2: x_{t_prev} = mu_tilde(x_t, x0_hat) + sigma_t z with sigma_t^2 = beta_t ('beta') or
  beta_tilde_t ('beta_tilde'), where beta_t = 1 - abar_t / abar_{t_prev} (the paper's betas_t when
  t_prev = t - 1; a respaced schedule otherwise). No noise is added at the last step (t_prev = -1)."""
  x0, _ = _x0_and_eps(sched, x_t, t, eps, clip)
  mean, beta_tilde, beta = _posterior(_log_abar(sched, t, x_t), _log_abar(sched, t_prev, x_t), x0, x_t)
  var = beta if sigma == 'beta' else beta_tilde
  return mean + jnp.where(_bcast(jnp.broadcast_to(t_prev, x_t.shape[:1]), x_t) >= 0, jnp.sqrt(var), 0.0) * noise


def ddim_step(sched: Schedule, x_t, t, t_prev, eps, noise, eta=0.0, clip=None):
  """Song et al. eq. 12: x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
  sigma^2 = eta^2 (1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev) = eta^2 beta_tilde; eta = 0 is
  deterministic, eta = 1 is ancestral sampling with beta_tilde on the (respaced) schedule."""
  x0, eps = _x0_and_eps(sched, x_t, t, eps, clip)
  log_abar_t, log_abar_prev = _log_abar(sched, t, x_t), _log_abar(sched, t_prev, x_t)
  sigma2 = eta**2 * _posterior(log_abar_t, log_abar_prev, x0, x_t)[1]
  return (jnp.exp(0.5 * log_abar_prev) * x0 + jnp.sqrt(jnp.maximum(-jnp.expm1(log_abar_prev) - sigma2, 0.0)) * eps
          + jnp.sqrt(sigma2) * noise)


def timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` evenly spaced timesteps ending at T-1 (ascending): floor((i+1) T / steps) - 1; all of 0..T-1 when
  steps = T. Starting at T-1 keeps the first step at the noise level x_T ~ N(0, I) was trained for."""
  return (np.arange(1, steps + 1) * num_timesteps) // steps - 1


def sample(eps_fn: EpsFn, sched: Schedule, rng, shape, steps: int, kind: str = 'ddim', label=None,
           eta=0.0, sigma: str = 'beta_tilde', clip=None):
  """x_T ~ N(0, I), then `steps` ancestral or DDIM steps down `timesteps(T, steps)` to x_0, in one lax.scan."""
  ts = timesteps(sched.betas.shape[0], steps)[::-1]                    # descending t
  t_prevs = np.concatenate([ts[1:], [-1]])
  x_rng, noise_rng = jax.random.split(rng)
  x_T = jax.random.normal(x_rng, shape)

  def body(x_t, step):
    t, t_prev, key = step
    t = jnp.full(shape[:1], t)
    eps = eps_fn(x_t, t, label)
    noise = jax.random.normal(key, shape)
    if kind == 'ddim':
      return ddim_step(sched, x_t, t, t_prev, eps, noise, eta, clip), None
    return ancestral_step(sched, x_t, t, t_prev, eps, noise, sigma, clip), None

  x0, _ = jax.lax.scan(body, x_T, (jnp.asarray(ts), jnp.asarray(t_prevs), jax.random.split(noise_rng, steps)))
  return x0


# ---------------------------------------------------------------------------------------- the family

class Condition(NamedTuple):
  """What the denoiser is conditioned on, for diffusion_family (by default class ids batch['label'], the null
  label model.num_classes).

  raw(batch) -> the batch's condition, a pytree of (B, ...) arrays (class ids; a prompt's tokens and mask); null:
  the same for "no condition" with leading axis 1 (the null class; the empty prompt), put in place of raw with
  probability model.p_uncond in training (classifier-free guidance) and guidance's default negative; encode(params,
  frozen, raw) -> the denoiser's label, once per step or sampler call inside the jit (classes: raw as it is; text:
  an encoder's features, with its parameters in params when trained jointly, or `frozen`, a trained stage's, which
  the train state carries unchanged); example: the label (batch 1) model.init is called with."""
  raw: Callable[[dict], Any]
  null: Any
  example: Any
  encode: Callable[[Any, Any, Any], Any] = lambda params, frozen, raw: raw
  frozen: Any = None


def make_unet(mc, shape, what: str = 'image size', **fields) -> UNet:
  """The UNet of the model config mc on (H, W, C) inputs (`what` they are, for the error), with `fields` beyond
  the sizes every UNet config has (num_classes, the text's transformer blocks, ...)."""
  levels = len(mc.ch_mult) - 1
  if shape[0] % 2**levels or shape[1] % 2**levels:
    raise UserError(f'{what} {tuple(shape[:2])} is not divisible by 2^{levels} for model.ch_mult='
                    f'{tuple(mc.ch_mult)}; use fewer levels')
  return UNet(out_channels=shape[-1], ch=mc.ch, ch_mult=tuple(mc.ch_mult), num_res_blocks=mc.num_res_blocks,
              attn_resolutions=tuple(mc.attn_resolutions), dropout=mc.dropout, num_heads=mc.num_heads,
              norm_groups=mc.norm_groups, dtype=jnp.dtype(mc.dtype), **fields)


def build(config, spec) -> Family:
  """DDPM on images: a UNet eps/v-model on the spec's image shape, samples mapped to uint8 pixels."""
  mc = config.model
  image_shape = tuple(spec.image_shape)
  model = make_unet(mc, image_shape, num_classes=mc.num_classes)
  pixel_range = tuple(config.data.pixel_range)

  def flip(rng, x0):   # horizontal flips of half the images
    return jnp.where(jax.random.bernoulli(rng, 0.5, (x0.shape[0], 1, 1, 1)), x0[:, :, ::-1], x0)

  batch_spec = {'image': Feature(image_shape, np.float32, *pixel_range),
                'label': Feature((), np.int32, 0, spec.num_classes)}
  return diffusion_family(
      config, model, image_shape, batch_key='image', batch_spec=batch_spec, sample_kind=samples.Images(),
      evaluators={'image_quality': evaluators.image_quality},
      decode=lambda decode_params, x0: images.to_uint8(x0, pixel_range),
      clip=pixel_range if config.sampling.clip_x0 else None, augment=flip if mc.random_flip else None)


def diffusion_family(config, model, sample_shape, *, batch_key: str, batch_spec: dict, sample_kind, evaluators: dict,
                     decode: Callable, decode_params=None, clip=None, augment: Callable | None = None,
                     features: Callable | None = None, condition: Condition | None = None) -> Family:
  """The DDPM Family for any denoiser `model` (apply(params, x_t, t, label, train=) on x of shape (B,
  *sample_shape)) trained on batch[batch_key] of batches `batch_spec`, or on features(batch[batch_key]) computed
  in the step (audio: waveforms -> log-mel): L_simple, label dropout, EMA, jitted samplers whose output goes
  through decode(decode_params, x0) inside the same jit (to uint8 pixels, through a VAE decoder, or back to
  waveforms), written as `sample_kind`. `condition`: what the denoiser is conditioned on where it is not a class
  (Condition; t2i: text); the sampler then takes its raw form as `label` and checks none of it."""
  features = features or (lambda x: x)
  mc = config.model
  own_condition = condition is not None
  if condition is None and mc.num_classes > 0:
    condition = Condition(lambda batch: batch['label'], jnp.full((1,), mc.num_classes, jnp.int32),
                          jnp.zeros((1,), jnp.int32))
  if mc.prediction not in ('eps', 'v'):
    raise UserError(f'unknown model.prediction {mc.prediction!r}; use eps or v')
  if config.sampling.sigma not in ('beta', 'beta_tilde'):
    raise UserError(f'unknown sampling.sigma {config.sampling.sigma!r}; use beta or beta_tilde')
  sched = make_schedule(mc.beta_schedule, mc.timesteps)
  eps_gain = float(jnp.exp(-0.5 * sched.log_alphas_cumprod[-1]))   # x0_hat = (x_T - sqrt(1-abar) eps) / sqrt(abar_T)
  if clip is None and mc.prediction == 'eps' and eps_gain > 1e3:
    raise UserError(f'model.beta_schedule={mc.beta_schedule} ends at abar_T = {1 / eps_gain**2:.1e}: without x0 '
                    f'clipping (latent diffusion) the first sampling step multiplies eps errors by {eps_gain:.0f}; '
                    'use --config.model.prediction=v (or the linear schedule)')
  updater = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps)
  conditional = condition is not None

  def model_fn(params, train=False, dropout_rng=None):
    rngs = {'dropout': dropout_rng} if train else {}
    return lambda x, t, label: model.apply({'params': params}, x, t, label, train=train, rngs=rngs)

  def eps_fn(params) -> EpsFn:
    out_fn = model_fn(params)
    if mc.prediction == 'eps':
      return out_fn
    return lambda x, t, label: eps_from_v(sched, x, t, out_fn(x, t, label))

  def init(rng):
    x = jnp.zeros((1, *sample_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    params = model.init(rng, x, t, condition.example if conditional else None)['params']
    return TrainState.create(params, updater, condition.frozen if conditional else None)

  def train_step(state, batch, rng):
    loss_rng, dropout_rng, label_rng, augment_rng = jax.random.split(rng, 4)
    x0, raw = features(batch[batch_key]), None
    if augment is not None:
      x0 = augment(augment_rng, x0)
    if conditional:   # the condition replaced by the null one with probability p_uncond (classifier-free guidance)
      drop = jax.random.bernoulli(label_rng, mc.p_uncond, x0.shape[:1])
      raw = jax.tree.map(lambda r, n: jnp.where(_bcast(drop, r), n, r), condition.raw(batch), condition.null)

    def loss_fn(params):
      label = condition.encode(params, state.frozen, raw) if conditional else None
      return l_simple(model_fn(params, True, dropout_rng), sched, loss_rng, x0, label, mc.prediction)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
               'lr': optim.current_lr(config.learning_rate, config.optim, config.num_train_steps, state.step)}
    return state.apply_gradients(grads, updater), metrics

  def eval_step(state, batch, rng):
    params = state.sampling_params()
    label = condition.encode(params, state.frozen, condition.raw(batch)) if conditional else None
    x0 = features(batch[batch_key])
    return {'loss': l_simple(model_fn(params), sched, rng, x0, label, mc.prediction)}

  @functools.partial(jax.jit, static_argnames=('num', 'steps', 'kind', 'guided'))
  def sample_decoded(params, frozen, decode_params, rng, raw, null, eta, guidance, *, num, steps, kind, guided):
    fn = eps_fn(params)
    label = condition.encode(params, frozen, raw) if conditional else None
    if guided:
      fn = guided_eps_fn(fn, guidance, condition.encode(params, frozen, null))
    x0 = sample(fn, sched, rng, (num, *sample_shape), steps, kind, label, eta, config.sampling.sigma, clip)
    return decode(decode_params, x0)   # images: uint8 (num, H, W, C); audio: float32 (num, samples)

  def make_sampler(state):
    params = state.sampling_params()

    def sampler(rng, num: int = config.num_preview, *, steps=None, sampler=None, eta=None, label=None,
                guidance=None, null=None, **options):
      """-> decode(x0): uint8 (num, H, W, C) for images. steps < T: DDIM (default) over evenly spaced steps;
      sampler='ancestral'|'ddim'; eta: DDIM noise in [0, 1]; label: class (int or (num,) ints; default cycles
      the classes), or a family's own condition in its raw form (num, ...); guidance: classifier-free guidance
      weight w; null: the raw condition guidance moves away from (default: the null class, the empty prompt)."""
      if options:
        raise UserError(f'unknown DDPM sampler option(s) {sorted(options)}; '
                        'use steps, sampler, eta, label, guidance')
      steps = config.sampling.steps or mc.timesteps if steps is None else steps
      kind = sampler or config.sampling.sampler or ('ancestral' if steps == mc.timesteps else 'ddim')
      eta = config.sampling.eta if eta is None else eta
      w = config.sampling.guidance if guidance is None else guidance
      if not isinstance(num, (int, np.integer)) or num < 1:
        raise UserError(f'num must be a positive integer, got {num!r}')
      if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= mc.timesteps:
        raise UserError(f'steps must be an integer in [1, {mc.timesteps}] (the training timesteps), got {steps!r}')
      if kind not in ('ddim', 'ancestral'):
        raise UserError(f'unknown sampler {kind!r}; use ddim or ancestral')
      if not 0 <= eta <= 1 or (eta and kind != 'ddim'):
        raise UserError(f'eta={eta} needs the ddim sampler and 0 <= eta <= 1')
      if w and not (conditional and mc.p_uncond > 0):
        raise UserError(f'guidance={w} needs a class-conditional model trained with label dropout '
                        '(model.num_classes > 0, model.p_uncond > 0); drop --guidance')
      if own_condition:
        labels = label
      elif conditional:
        labels = np.arange(num) % mc.num_classes if label is None else np.broadcast_to(np.asarray(label), (num,))
        if labels.dtype.kind not in 'iu' or labels.min() < 0 or labels.max() >= mc.num_classes:
          raise UserError(f'label must be a class in [0, {mc.num_classes}), got {label!r}')
        labels = jnp.asarray(labels, jnp.int32)
      elif label is not None:
        raise UserError('label needs a class-conditional model (model.num_classes > 0); drop --label')
      else:
        labels = None
      null = condition.null if conditional and null is None else null
      return sample_decoded(params, state.frozen, decode_params, rng, labels, null, jnp.float32(eta), jnp.float32(w),
                            num=int(num), steps=int(steps), kind=kind, guided=bool(w))

    return sampler

  def preview(state, batch, rng):
    del batch
    samples_ = make_sampler(state)(rng, config.num_preview)
    if isinstance(sample_kind, samples.Images):
      return images.make_grid(samples_, ncols=mc.num_classes if conditional else None)   # one class a column
    return samples_

  def bench_sampler(state, num: int | None, repeats: int, ddim_steps: int = 50, ancestral_num: int = 8, **options):
    """DDIM over ddim_steps (num samples, default 64) and ancestral over all training steps."""
    del options
    sampler, rng, num = make_sampler(state), jax.random.key(0), num or 64
    for kind, n, steps in (('ddim', num, ddim_steps), ('ancestral', ancestral_num, mc.timesteps)):
      first, ms = timing.time_calls(lambda: sampler(rng, num=n, sampler=kind, steps=steps), repeats)
      yield timing.sampler_record(kind, n, first, ms, steps, samples_per_s=n / (ms['median'] / 1e3))

  return Family(init, train_step, eval_step, make_sampler, preview, batch_spec, sample_kind, evaluators,
                bench_sampler=bench_sampler)
