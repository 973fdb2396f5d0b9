"""Convolutional VAE on Fashion-MNIST (Bernoulli likelihood on [0, 1] pixels)."""
from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'vae'
  c.data.name = 'fashion_mnist'
  c.data.pixel_range = (0.0, 1.0)
  c.model.features = (32, 64)
  c.model.hidden = 256
  c.model.latent_dim = 16
  c.model.likelihood = 'bernoulli'   # bernoulli | gaussian
  c.model.beta = 1.0                 # beta-VAE weight on the KL term
  c.model.iwae_k = 64                # importance samples for the eval NLL
  c.optim.name = 'adam'
  c.learning_rate = 1e-3
  c.batch_size = 128
  set_schedule(c, 30_000, log=100, eval=5_000, checkpoint=5_000, sample=5_000)

  def cpu(c):                        # ~4 epochs; narrower convs keep a step cheap on 2 cores
    c.model.features = (16, 32)
    set_schedule(c, 2_000, log=100, eval=2_000, checkpoint=1_000, sample=1_000)
    c.data.eval_examples = 2_048

  def smoke_(c):
    c.model.features = (8, 16)
    c.model.hidden = 32
    c.model.latent_dim = 4
    c.model.iwae_k = 4
    smoke(c, num_preview=64)

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
