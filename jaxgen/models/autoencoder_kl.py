"""Stable Diffusion's KL autoencoder (Rombach et al. 2022, AutoencoderKL) with the DDPM UNet's blocks.

Encoder: conv_in -> per level num_res_blocks ResBlocks at ch * ch_mult[i] (a stride-2 conv between levels) ->
ResBlock, self-attention, ResBlock -> GN, swish, conv -> (mean, logvar) of q(z|x), each (B, H/f, W/f, z_channels)
with f = 2^(len(ch_mult) - 1); logvar clipped to [-30, 20] as SD's DiagonalGaussianDistribution.
Decoder: the mirror image, num_res_blocks + 1 ResBlocks per level, nearest up-sampling + conv between levels.
The blocks are jaxgen.models.unet's (ResBlock without a time embedding, AttnBlock, GroupNorm).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.models.unet import AttnBlock, GroupNorm, ResBlock


def _block(h, features: int, norm_groups: int, dtype):
  return ResBlock(features, 0.0, norm_groups, dtype)(h, None, False)


def _middle(h, norm_groups: int, dtype):
  """ResBlock, self-attention, ResBlock at the lowest resolution."""
  h = _block(h, h.shape[-1], norm_groups, dtype)
  return _block(AttnBlock(1, norm_groups, dtype)(h), h.shape[-1], norm_groups, dtype)


def _out(h, features: int, norm_groups: int, dtype):
  """GN, swish, 3x3 conv to `features` channels, float32."""
  h = nn.swish(GroupNorm(norm_groups, dtype)(h))
  return nn.Conv(features, (3, 3), dtype=dtype)(h).astype(jnp.float32)


class _Coder(nn.Module):
  out_channels: int
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  norm_groups: int
  dtype: Any


class Encoder(_Coder):        # out_channels: 2 z_channels, mean and logvar
  @nn.compact
  def __call__(self, x):                                                          # (B, H, W, C)
    h = nn.Conv(self.ch, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = _block(h, self.ch * mult, self.norm_groups, self.dtype)
      if level != len(self.ch_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype)(h)   # (B, H/2, W/2, C)
    return _out(_middle(h, self.norm_groups, self.dtype), self.out_channels, self.norm_groups, self.dtype)


class Decoder(_Coder):
  @nn.compact
  def __call__(self, z):                                                          # (B, h, w, z_channels)
    h = nn.Conv(self.ch * self.ch_mult[-1], (3, 3), dtype=self.dtype)(z.astype(self.dtype))
    h = _middle(h, self.norm_groups, self.dtype)
    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = _block(h, self.ch * mult, self.norm_groups, self.dtype)
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)                     # nearest, (B, 2H, 2W, C)
        h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype)(h)
    return _out(h, self.out_channels, self.norm_groups, self.dtype)


class AutoencoderKL(nn.Module):
  out_channels: int = 3
  z_channels: int = 4
  ch: int = 64
  ch_mult: Sequence[int] = (1, 2, 4)       # f = 4: 32x32 -> 8x8
  num_res_blocks: int = 1
  norm_groups: int = 32
  dtype: Any = jnp.float32

  def setup(self):
    shape = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                 norm_groups=self.norm_groups, dtype=self.dtype)
    self.encoder = Encoder(2 * self.z_channels, **shape)
    self.decoder = Decoder(self.out_channels, **shape)

  def encode(self, x):
    """x (B, H, W, C) -> (mean, logvar) of q(z|x), float32 (B, H/f, W/f, z_channels) each."""
    mean, logvar = jnp.split(self.encoder(x), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    """z (B, h, w, z_channels) -> x (B, h f, w f, out_channels) float32."""
    return self.decoder(z)

  def __call__(self, x, z):
    return self.encode(x), self.decode(z)
