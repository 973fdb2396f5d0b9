"""Convolutional VAE on Fashion-MNIST (Bernoulli likelihood on [0, 1] pixels)."""
from jaxgen.config import base_config


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'vae'
  c.data.name = 'fashion_mnist'
  c.data.image_shape = (28, 28, 1)
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
  c.num_train_steps = 30_000
  c.eval_every_steps = 5_000
  c.checkpoint_every_steps = 5_000
  c.sample_every_steps = 5_000
  if preset == 'default':
    pass
  elif preset == 'cpu':               # ~4 epochs; narrower convs keep a step cheap on 2 cores
    c.model.features = (16, 32)
    c.num_train_steps = 2_000
    c.eval_every_steps = 2_000
    c.checkpoint_every_steps = 1_000
    c.sample_every_steps = 1_000
    c.data.eval_examples = 2_048
  elif preset == 'smoke':
    c.model.features = (8, 16)
    c.model.hidden = 32
    c.model.latent_dim = 4
    c.model.iwae_k = 4
    c.batch_size = 8
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 3
    c.sample_every_steps = 6
    c.data.eval_examples = 16
  else:
    raise ValueError(f'unknown preset {preset!r}; use default, cpu or smoke')
  return c
