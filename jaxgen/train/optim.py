"""Optax optimizers, schedules and parameter EMA built from `config.optim` (shared by all families)."""
import jax
import ml_collections
import optax


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


def ema_update(ema_params, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params."""
  return optax.incremental_update(params, ema_params, step_size=1.0 - decay)


def current_lr(lr: float, optim: ml_collections.ConfigDict, num_steps: int, step: jax.Array) -> jax.Array:
  return learning_rate_schedule(lr, optim, num_steps)(step)
