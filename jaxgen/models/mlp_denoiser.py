"""A residual MLP denoiser for vector data (the latents of a VAE): the UNet's interface without convolutions.

eps_theta(x_t, t, label): x_t (B, D), t (B,) int timesteps, label (B,) int or None -> (B, D).
Sinusoidal time embedding + MLP, plus a label embedding (num_classes + 1 rows; the last is the null label
of classifier-free guidance); residual blocks h += W2 dropout(act(W1 act(LN(h)) + W emb)) (the UNet's
ResBlock with Dense in place of Conv); the blocks' last layers and the output start at zero.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.models.unet import timestep_embedding


class MLPBlock(nn.Module):
  width: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, h, emb, train: bool):
    x = nn.Dense(self.width, dtype=self.dtype)(nn.swish(nn.LayerNorm(dtype=self.dtype)(h)))
    x = x + nn.Dense(self.width, dtype=self.dtype)(nn.swish(emb))
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(nn.LayerNorm(dtype=self.dtype)(x)))
    return h + nn.Dense(self.width, dtype=self.dtype, kernel_init=nn.initializers.zeros)(x)


class MLPDenoiser(nn.Module):
  out_dim: int
  width: int = 512
  num_blocks: int = 4
  dropout: float = 0.0
  num_classes: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, t, label=None, train: bool = False):
    emb = timestep_embedding(t, self.width)
    emb = nn.Dense(self.width, dtype=self.dtype)(nn.swish(nn.Dense(self.width, dtype=self.dtype)(emb)))
    if self.num_classes:
      emb = emb + nn.Embed(self.num_classes + 1, self.width, dtype=self.dtype)(label)
    h = nn.Dense(self.width, dtype=self.dtype)(x)
    for _ in range(self.num_blocks):
      h = MLPBlock(self.width, self.dropout, self.dtype)(h, emb, train)
    h = nn.swish(nn.LayerNorm(dtype=self.dtype)(h))
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=nn.initializers.zeros)(h).astype(jnp.float32)
