"""Train states and their creation on a mesh, shared by every family and the trainer.

Randomness: keys derive from (seed, step) only (`run_keys`), so any step can be recomputed.
"""
from typing import Any

import flax
import flax.linen as nn
import jax

from jaxgen.train import optim, sharding


@flax.struct.dataclass
class TrainState:
  """The state of a one-network family: step, parameters, Optax state, EMA of the parameters (None without), and
  `frozen`: parameters of a trained stage the steps read but never update (a frozen text encoder; None without),
  held here so that the jitted steps take them as arguments, not as constants compiled into the program."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  frozen: Any = None

  @classmethod
  def create(cls, params, updater: optim.Updater, frozen=None) -> 'TrainState':
    opt_state, ema_params = updater.init(params)
    return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=opt_state, ema_params=ema_params,
               frozen=frozen)

  def apply_gradients(self, grads, updater: optim.Updater) -> 'TrainState':
    """One optimizer step (and EMA update): the rule every family uses (jaxgen.train.optim.Updater)."""
    params, opt_state, ema_params = updater.apply(grads, self.params, self.opt_state, self.ema_params, self.step)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)

  def sampling_params(self):
    """The parameters to sample and evaluate with: the EMA where there is one."""
    return self.ema_params if self.ema_params is not None else self.params


def run_keys(seed: int) -> dict[str, jax.Array]:
  """Independent key streams of a run; the step is folded in at use: fold_in(keys[kind], step)."""
  return dict(zip(('init', 'train', 'eval', 'sample'), jax.random.split(jax.random.key(seed), 4)))


def _boxed_shardings(family, mesh, seed: int):
  """(boxed ShapeDtypeStructs of the state `family.init` makes, their NamedShardings on `mesh`)."""
  boxed = jax.eval_shape(family.init, run_keys(seed)['init'])
  return boxed, sharding.state_shardings(boxed, mesh)


def abstract_state(family, mesh, seed: int):
  """ShapeDtypeStructs, with their NamedShardings on `mesh`, of the state `family.init` makes."""
  boxed, shardings = _boxed_shardings(family, mesh, seed)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.meta.unbox(boxed), shardings)


def create_state(family, mesh, seed: int):
  """Initialise the state directly into its shardings; returns (state, shardings). One trace of family.init
  serves both: jax.eval_shape's is the one jax.jit compiles (the same function), and the boxes come off after."""
  _, shardings = _boxed_shardings(family, mesh, seed)
  # init runs once: on CPU, XLA's backend optimisation of its random draws costs far more than it saves
  options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  state = jax.jit(family.init, out_shardings=shardings, compiler_options=options)(run_keys(seed)['init'])
  return nn.meta.unbox(state), shardings
