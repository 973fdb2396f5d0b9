"""Model families: each plugs into the generic trainer through `Family`, a bundle of pure functions.

A family module defines `build(config, workdir) -> Family`. Adding a family means one model file
(`jaxgen/models/`), one family file here, one entry in `FAMILIES`, and one config.
"""
import importlib
from typing import Any, Callable, NamedTuple

import flax
import jax
import numpy as np

State = Any                 # a pytree, usually a flax.struct.dataclass; params may carry nn.LogicallyPartitioned
Batch = dict[str, Any]      # numpy/jax arrays with a leading (global) batch axis
Metrics = dict[str, jax.Array]


class Family(NamedTuple):
  """The pure functions a family gives the trainer; all close over the config, none has side effects.

  init(rng) -> state                                   jitted by the trainer with the state's shardings
  train_step(state, batch, rng) -> (state, metrics)     jitted; metrics are scalars (means over the batch)
  eval_step(state, batch, rng) -> metrics               jitted; averaged over test batches by the trainer
  make_sampler(state) -> sampler                        sampler(rng, num=..., **family options) is jitted
  preview(state, local_batch, rng) -> uint8 (H, W, C) grid | list[str]   what samples/step_<N>.png|.txt
                                                        shows; local_batch is this process's numpy batch
  """
  init: Callable[[jax.Array], State]
  train_step: Callable[[State, Batch, jax.Array], tuple[State, Metrics]]
  eval_step: Callable[[State, Batch, jax.Array], Metrics]
  make_sampler: Callable[[State], Callable[..., Any]]
  preview: Callable[[State, Batch, jax.Array], np.ndarray | list[str]]


@flax.struct.dataclass
class TrainState:
  """The state of a one-network family: step, parameters, Optax state, EMA of the parameters (None without)."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any

  def sampling_params(self):
    """The parameters to sample and evaluate with: the EMA where there is one."""
    return self.ema_params if self.ema_params is not None else self.params


# family name -> module defining build(config, workdir) -> Family (imported on first use)
FAMILIES = {name: f'jaxgen.families.{name}' for name in ('vae', 'gan', 'ddpm', 'ldm', 'gpt')}


def build(config, workdir: str) -> Family:
  from jaxgen.errors import UserError
  if config.family not in FAMILIES:
    raise UserError(f'unknown family {config.family!r}; choose one of {sorted(FAMILIES)}')
  return importlib.import_module(FAMILIES[config.family]).build(config, workdir)
