"""DCGAN (Radford et al. 2015): a transposed-convolution generator and a strided-convolution discriminator.

Paper rules kept: no pooling (strided convolutions down, transposed convolutions up), BatchNorm in the
generator, ReLU in the generator with tanh output, LeakyReLU(0.2) in the discriminator, no BatchNorm on
the discriminator's input layer, weights initialised N(0, 0.02). Class conditioning (optional): the
generator concatenates a label embedding to z; the discriminator uses the projection of Miyato & Koyama
(2018), D(x, y) = psi(phi(x)) + embed(y) . phi(x).

Spatial plan: an image side H is halved while even and > 4 (28 -> 14 -> 7, 32 -> 16 -> 8 -> 4); the
generator starts at the smallest side and doubles back up, the discriminator mirrors it.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models.layers import ConvTranspose2x


def _init(key, shape, dtype=jnp.float32):
  """N(0, 0.02^2), the DCGAN init; drawn flat and reshaped because XLA:CPU takes seconds to compile an
  N-d jax.random draw (threefry_partitionable) for small 4-d kernel shapes, and ~0.4 s for a flat one."""
  return 0.02 * jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def num_resolutions(height: int, width: int) -> int:
  """How many stride-2 stages separate the image from the smallest feature map (>= 1)."""
  n = 0
  while height % 2 == 0 and width % 2 == 0 and min(height, width) > 4:
    height, width, n = height // 2, width // 2, n + 1
  if n == 0:
    raise ValueError(f'image side {height}x{width} cannot be halved; DCGAN needs even sides')
  return n


def _batch_norm(train: bool, dtype):
  # momentum 0.9 is PyTorch's BatchNorm default (momentum=0.1), which the reference DCGAN uses.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype,
                      scale_init=lambda k, s, d: 1.0 + _init(k, s, d))


class Generator(nn.Module):
  """z (B, latent_dim) [, labels (B,)] -> images (B, H, W, C) in [-1, 1]."""
  image_shape: tuple[int, int, int]
  features: int = 64                # width of the last hidden stage; doubles per stage towards z
  num_classes: int = 0              # > 0: class-conditional
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, labels=None, *, train: bool):
    h, w, c = self.image_shape
    n = num_resolutions(h, w)
    if self.num_classes:
      z = jnp.concatenate([z, nn.Embed(self.num_classes, z.shape[-1], embedding_init=_init)(labels)], -1)
    width = self.features * 2 ** (n - 1)
    x = nn.Dense(width * (h >> n) * (w >> n), use_bias=False, kernel_init=_init, dtype=self.dtype)(z)
    x = x.reshape(z.shape[0], h >> n, w >> n, width)           # (B, H/2^n, W/2^n, features*2^(n-1))
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    for i in reversed(range(n - 1)):
      x = ConvTranspose2x(self.features * 2 ** i, use_bias=False, kernel_init=_init, dtype=self.dtype)(x)
      x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = ConvTranspose2x(c, kernel_init=_init, dtype=self.dtype)(x)                # (B, H, W, C)
    return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
  """images (B, H, W, C) [, labels (B,)] -> logits (B,); D(x) = sigmoid(logit).

  norm: 'batch' (DCGAN), 'spectral' (Miyato et al. 2018; power-iteration state lives in 'batch_stats'),
  or 'none'.
  """
  features: int = 64                # width of the first stage; doubles per stage
  norm: str = 'batch'
  num_classes: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool):
    if self.norm not in ('batch', 'spectral', 'none'):
      raise ValueError(f'unknown discriminator norm {self.norm!r}; use batch, spectral or none')

    def layer(module, y):
      if self.norm == 'spectral':
        return nn.SpectralNorm(module)(y, update_stats=train)
      return module(y)

    n = num_resolutions(*x.shape[1:3])
    x = x.astype(self.dtype)
    for i in range(n):
      x = layer(nn.Conv(self.features * 2 ** i, (4, 4), (2, 2), use_bias=self.norm != 'batch' or i == 0,
                        kernel_init=_init, dtype=self.dtype), x)
      if self.norm == 'batch' and i > 0:
        x = _batch_norm(train, self.dtype)(x)
      x = nn.leaky_relu(x, 0.2)
    phi = x.reshape(x.shape[0], -1)                             # (B, h*w*features*2^(n-1))
    logits = layer(nn.Dense(1, kernel_init=_init, dtype=self.dtype), phi)[:, 0]
    if self.num_classes:                                        # projection: + <embed(y), phi(x)>
      logits += jnp.sum(nn.Embed(self.num_classes, phi.shape[-1], embedding_init=_init)(labels) * phi, -1)
    return logits.astype(jnp.float32)
