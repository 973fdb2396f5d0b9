"""jaxgen: GAN, VAE, DDPM and GPT as pure JAX functions.

    sampler = jaxgen.load_sampler('runs/vae')
    images = sampler(jax.random.key(0), num=16)      # uint8 (16, H, W, C)
"""
__version__ = '0.1.0'


def load_state(workdir: str, step: int | None = None):
  """(config, family, state) of a trained workdir at its latest (or the given) checkpoint, on local devices."""
  import ml_collections
  from jaxgen import families
  from jaxgen.errors import UserError
  from jaxgen.train import checkpointing, sharding, trainer

  config = checkpointing.load_config(workdir)
  family = families.build(config, workdir)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  mngr = checkpointing.manager(workdir, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise UserError(f'{workdir} has no checkpoint yet: train first (python train.py --workdir {workdir} ...)')
  if step not in mngr.all_steps():
    raise UserError(f'{workdir} has no checkpoint {step}; it has {sorted(mngr.all_steps())}')
  state = checkpointing.restore(mngr, step, trainer.abstract_state(family, mesh, config.seed))
  return config, family, state


def load_sampler(workdir: str, step: int | None = None):
  """The family's jitted sampler with the trained (EMA where used) parameters of `workdir`."""
  _, family, state = load_state(workdir, step)
  return family.make_sampler(state)
