"""jaxgen: GANs, VAEs, diffusion and language models as pure JAX functions.

    sampler = jaxgen.load_sampler('runs/vae')
    images = sampler(jax.random.key(0), num=16)      # uint8 (16, H, W, C)
"""
__version__ = '0.1.0'


def load_state(workdir: str, step: int | None = None):
  """(config, family, state) of a trained workdir at its latest (or the given) checkpoint, on local devices."""
  from jaxgen import families
  from jaxgen.train import checkpointing
  config, _, family, state = checkpointing.restore_run(workdir, families.build, step)
  return config, family, state


def load_sampler(workdir: str, step: int | None = None):
  """The family's jitted sampler with the trained (EMA where used) parameters of `workdir`."""
  _, family, state = load_state(workdir, step)
  return family.make_sampler(state)
