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


class ConvTranspose2x(nn.Module):
  """nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME'): same kernel, same outputs.

  Computed as a sub-pixel convolution (Shi et al. 2016): tap t = 2j + a of the 4-tap transposed kernel
  acts on output phase a at input offset j, so out[2m + a] = sum_j k[2j + a] x[m + a + j - 1], one 2x2
  convolution to 4 * features channels on the 1-padded input, then the phases interleave. Its kernel
  gradient is an ordinary convolution, which XLA:CPU runs ~3x faster than lax.conv_transpose's dilated one.
  """
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):                                        # (B, H, W, Cin) -> (B, 2H, 2W, features)
    b, h, w, cin = x.shape
    f = self.features
    kernel = self.param('kernel', _init, (4, 4, cin, f))        # HWIO, as nn.ConvTranspose
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    k = kernel.reshape(2, 2, 2, 2, cin, f).transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, 4 * f)  # (j, j', I, a a' O)
    # explicit padding + VALID: XLA:CPU's kernel gradient is slow when the padding grows the output
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y.reshape(b, h + 1, w + 1, 2, 2, f)                     # (B, H+1, W+1, a, a', O)
    y = jnp.stack([jnp.stack([y[:, a:a + h, c:c + w, a, c] for c in (0, 1)], 3) for a in (0, 1)], 2)
    y = y.reshape(b, 2 * h, 2 * w, f)                           # (B, H, a, W, a', O) -> (B, 2H, 2W, O)
    if self.use_bias:
      y += self.param('bias', nn.initializers.zeros, (f,)).astype(y.dtype)
    return y


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
      x = ConvTranspose2x(self.features * 2 ** i, use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = ConvTranspose2x(c, dtype=self.dtype)(x)                # (B, H, W, C)
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
