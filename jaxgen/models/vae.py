"""Convolutional VAE (Kingma & Welling 2014): encoder -> diagonal Gaussian q(z|x), decoder -> p(x|z) params."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.models.layers import ConvTranspose2x


class Encoder(nn.Module):
  features: Sequence[int]
  hidden: int
  latent_dim: int
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x):                                    # (B, H, W, C)
    for f in self.features:                                 # each halves H and W
      x = nn.gelu(nn.Conv(f, (4, 4), strides=2, dtype=self.dtype)(x))
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(x.reshape(x.shape[0], -1)))
    mean = nn.Dense(self.latent_dim, dtype=self.dtype)(x)
    logvar = nn.Dense(self.latent_dim, dtype=self.dtype)(x)
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)   # (B, latent_dim) each


class Decoder(nn.Module):
  features: Sequence[int]
  hidden: int
  image_shape: Sequence[int]
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, z):                                    # (B, latent_dim)
    h, w, c = self.image_shape
    scale = 2 ** len(self.features)
    grid = (h // scale, w // scale, self.features[-1])
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(z))
    x = nn.gelu(nn.Dense(grid[0] * grid[1] * grid[2], dtype=self.dtype)(x)).reshape(-1, *grid)
    for f in reversed(self.features):                       # each doubles H and W
      x = nn.gelu(ConvTranspose2x(f, dtype=self.dtype)(x))
    x = nn.Conv(c, (3, 3), dtype=self.dtype)(x)
    return x.astype(jnp.float32)                            # (B, H, W, C): Bernoulli logits or Gaussian mean


class VAE(nn.Module):
  features: Sequence[int] = (32, 64)
  hidden: int = 256
  latent_dim: int = 16
  image_shape: Sequence[int] = (28, 28, 1)
  dtype: str = 'float32'

  def setup(self):
    self.encoder = Encoder(self.features, self.hidden, self.latent_dim, self.dtype)
    self.decoder = Decoder(self.features, self.hidden, self.image_shape, self.dtype)
    # log sigma of the Gaussian likelihood p(x|z) = N(decoder(z), sigma^2 I); unused for Bernoulli
    self.log_scale = self.param('log_scale', nn.initializers.zeros, ())

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z), self.log_scale

  def __call__(self, x, z):
    return self.encode(x), self.decode(z)
