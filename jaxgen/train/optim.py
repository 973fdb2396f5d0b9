"""Optax optimizers, schedules and parameter EMA built from `config.optim`: the one update rule of every family."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxgen.errors import UserError


def learning_rate_schedule(lr: float, optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then constant or cosine decay to lr * min_lr_ratio at `num_steps`."""
  if optim.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, max(optim.warmup_steps, 1), max(num_steps, optim.warmup_steps + 1), lr * optim.min_lr_ratio)
  if optim.schedule == 'constant':
    if optim.warmup_steps:
      return optax.linear_schedule(0.0, lr, optim.warmup_steps)
    return optax.constant_schedule(lr)
  raise ValueError(f'unknown optim.schedule {optim.schedule!r}; use constant or cosine')


def make_optimizer(lr: float, optim: ml_collections.ConfigDict, num_steps: int,
                   weight_decay_mask=None) -> optax.GradientTransformation:
  """Clip (global norm) -> Adam/AdamW with the schedule; `weight_decay_mask(params)` picks decayed leaves."""
  schedule = learning_rate_schedule(lr, optim, num_steps)
  if optim.name == 'adamw':
    opt = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay, mask=weight_decay_mask)
  elif optim.name == 'adam':
    opt = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  else:
    raise ValueError(f'unknown optim.name {optim.name!r}; use adam or adamw')
  if optim.grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt)
  return opt


def ema_update(ema_params, params, decay):
  """ema <- decay * ema + (1 - decay) * params."""
  return optax.incremental_update(params, ema_params, step_size=1.0 - decay)


def ema_decay_at(decay: float, warmup: bool, step):
  """The EMA decay after `step` updates: `decay`, or with warm-up min(decay, (1 + n) / (10 + n)) (as Ho et
  al.'s and TF's ExponentialMovingAverage num_updates), so that a short run's EMA is not stuck at init."""
  if not warmup:
    return decay
  n = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1 + n) / (10 + n))


class Updater(NamedTuple):
  """Gradients -> Optax update -> parameters -> EMA (optim.ema_decay > 0; optim.ema_warmup), once per step."""
  tx: optax.GradientTransformation
  ema_decay: float = 0.0
  ema_warmup: bool = False

  def init(self, params) -> tuple[Any, Any]:
    """(optimizer state, EMA parameters or None)."""
    return self.tx.init(params), (jax.tree.map(jnp.copy, params) if self.ema_decay else None)

  def apply(self, grads, params, opt_state, ema_params, step):
    """(new params, new optimizer state, new EMA) after one update; `step` = updates done before this one."""
    updates, opt_state = self.tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if ema_params is not None:
      ema_params = ema_update(ema_params, params, ema_decay_at(self.ema_decay, self.ema_warmup, step))
    return params, opt_state, ema_params


def make_updater(lr: float, optim: ml_collections.ConfigDict, num_steps: int, weight_decay_mask=None,
                 ema: bool = True) -> Updater:
  """The Updater of config.optim; ema=False for a network without an EMA (a GAN's discriminator)."""
  if not 0 <= optim.ema_decay < 1:
    raise UserError(f'optim.ema_decay={optim.ema_decay} must be in [0, 1) (0 disables the EMA)')
  return Updater(make_optimizer(lr, optim, num_steps, weight_decay_mask), optim.ema_decay if ema else 0.0,
                 bool(optim.ema_warmup))


def current_lr(lr: float, optim: ml_collections.ConfigDict, num_steps: int, step: jax.Array) -> jax.Array:
  return learning_rate_schedule(lr, optim, num_steps)(step)
