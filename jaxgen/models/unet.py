"""The DDPM UNet of Ho et al. 2020 (a PixelCNN++-style backbone) as a Flax Linen module.

eps_theta(x_t, t, label): x_t (B, H, W, C), t (B,) int timesteps, label (B,) int or None -> (B, H, W, C).
Sinusoidal time embedding + MLP; residual blocks (GroupNorm, swish, dropout) at channel widths
ch * ch_mult[i]; self-attention at the spatial sizes in attn_resolutions and in the middle; stride-2 conv
down-sampling, nearest up-sampling, skip connections from every down block to its up block. A label
embedding (num_classes + 1 rows; the last is the null label of classifier-free guidance) is added to the
time embedding. Layers whose output joins a residual path start at zero, as in the paper's code.

Text conditioning (Rombach et al. 2022, Stable Diffusion's UNet): with transformer_resolutions, the label is a
text condition (context (B, S, D), context_mask (B, S) bool, True for real tokens) and a SpatialTransformer
follows each residual block at those spatial sizes and replaces the middle self-attention:
  h = proj_in(GN(x)) (B, HW, C);  per block: h += SelfAttn(LN(h)); h += CrossAttn(LN(h), context); h += GEGLU(LN(h))
  out = x + proj_out(h),  proj_out zero-initialised;  CrossAttn: q from h, k and v from context, padding masked
With transformer_resolutions=() the module and its parameters are the DDPM UNet's as before.
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding [sin(t w_k), cos(t w_k)], w_k = max_period^(-k / (dim/2 - 1)): (B,) -> (B, dim)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]   # (B, half)
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class GroupNorm(nn.Module):
  """GroupNorm (Wu & He 2018) over (H, W, C/G): y = (x - mean_g) / sqrt(var_g + eps) * scale + bias.

  The group moments come from per-channel moments over (H, W), so x is read once for the statistics and
  once for y = x * a + b with per-(B, C) a, b; a fused pass that runs faster on CPU than nn.GroupNorm.
  """
  num_groups: int
  dtype: Any
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    b, c = x.shape[0], x.shape[-1]
    x32 = x.astype(jnp.float32)
    moments = jnp.stack([jnp.mean(x32, axis=(1, 2)), jnp.mean(jnp.square(x32), axis=(1, 2))])   # (2, B, C)
    mean, mean_sq = jnp.repeat(moments.reshape(2, b, self.num_groups, -1).mean(-1), c // self.num_groups, -1)
    a = jax.lax.rsqrt(jnp.maximum(mean_sq - mean**2, 0.0) + self.epsilon) * self.param('scale', nn.initializers.ones, (c,))
    shift = self.param('bias', nn.initializers.zeros, (c,)) - mean * a                             # (B, C)
    return (x32 * a[:, None, None, :] + shift[:, None, None, :]).astype(self.dtype)


class ResBlock(nn.Module):
  """h = conv(dropout(act(GN(conv(act(GN(x))) + W act(temb))))); returns shortcut(x) + h (temb None: no W term,
  the autoencoder's blocks)."""
  features: int
  dropout: float
  norm_groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x, temb, train: bool):
    h = nn.swish(GroupNorm(self.norm_groups, self.dtype)(x))
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(h)
    if temb is not None:
      h = h + nn.Dense(self.features, dtype=self.dtype)(nn.swish(temb))[:, None, None, :]   # (B, 1, 1, F)
    h = nn.swish(GroupNorm(self.norm_groups, self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, dtype=self.dtype)(x)   # 1x1 projection of the shortcut
    return x + h


class AttnBlock(nn.Module):
  """x + proj(softmax(q k^T / sqrt(d)) v) over the H*W positions, q, k, v = 1x1 projections of GN(x)."""
  num_heads: int
  norm_groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    h = GroupNorm(self.norm_groups, self.dtype)(x).reshape(b, height * width, c)
    qkv = nn.DenseGeneral((3, self.num_heads, c // self.num_heads), dtype=self.dtype)(h)   # (B, L, 3, N, D)
    h = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])            # (B, L, N, D)
    h = nn.DenseGeneral(c, axis=(-2, -1), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    return x + h.reshape(b, height, width, c)


def _attention(x, context, mask, num_heads: int, dtype):
  """Multi-head softmax(q k^T / sqrt(d)) v with q from x (B, L, C), k and v from context (B, S, D), no biases,
  keys where mask (B, S) is False left out; output projection back to C."""
  c = x.shape[-1]
  q = nn.DenseGeneral((num_heads, c // num_heads), use_bias=False, dtype=dtype)(x)                # (B, L, N, Dh)
  kv = nn.DenseGeneral((2, num_heads, c // num_heads), use_bias=False, dtype=dtype)(context)      # (B, S, 2, N, Dh)
  mask = None if mask is None else mask[:, None, None, :]                                        # (B, 1, 1, S)
  h = jax.nn.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1], mask=mask)                       # (B, L, N, Dh)
  return nn.DenseGeneral(c, axis=(-2, -1), dtype=dtype)(h)                                       # (B, L, C)


class TransformerBlock(nn.Module):
  """SD's BasicTransformerBlock: h += SelfAttn(LN(h)); h += CrossAttn(LN(h), context); h += GEGLU(LN(h)),
  GEGLU(h) = (a * gelu(g)) W_2 with [a, g] = h W_1, 4C wide (Shazeer 2020)."""
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, h, context, context_mask):        # h (B, L, C), context (B, S, D), context_mask (B, S)
    norm = lambda: nn.LayerNorm(dtype=self.dtype)
    y = norm()(h)
    h = h + _attention(y, y, None, self.num_heads, self.dtype)
    h = h + _attention(norm()(h), context, context_mask, self.num_heads, self.dtype)
    a, gate = jnp.split(nn.Dense(8 * h.shape[-1], dtype=self.dtype)(norm()(h)), 2, axis=-1)
    return h + nn.Dense(h.shape[-1], dtype=self.dtype)(a * nn.gelu(gate))


class SpatialTransformer(nn.Module):
  """x + proj_out(blocks(proj_in(GN(x)))) over the H*W positions; proj_out starts at zero (identity block)."""
  num_heads: int
  depth: int
  norm_groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x, context, context_mask):
    b, height, width, c = x.shape
    h = GroupNorm(self.norm_groups, self.dtype)(x).reshape(b, height * width, c)
    h = nn.Dense(c, dtype=self.dtype)(h)                                         # proj_in (a 1x1 conv)
    for _ in range(self.depth):
      h = TransformerBlock(self.num_heads, self.dtype)(h, context.astype(self.dtype), context_mask)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)      # proj_out
    return x + h.reshape(b, height, width, c)


class UNet(nn.Module):
  """Ho et al.'s CIFAR-10 model is ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)."""
  out_channels: int
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_heads: int = 1
  norm_groups: int = 32
  num_classes: int = 0          # > 0: class-conditional; label == num_classes is the null label
  row_coordinate: bool = False  # True: a channel of each row's position in [-1, 1] joins x (convolutions are
                                # shift-equivariant; on a spectrogram's mel axis the row *is* the pitch)
  row_profiles: Any = None      # (num_classes + 1) x H nested tuples: the label's row profile joins x as a
                                # channel (spectrograms: the mel rows of the pitch's harmonics; null label: 0)
  transformer_resolutions: Sequence[int] = ()   # spatial sizes with a SpatialTransformer; the label is then the
                                                # text condition (context (B, S, D), context_mask (B, S))
  transformer_depth: int = 1
  transformer_heads: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, t, label=None, train: bool = False):
    res = dict(norm_groups=self.norm_groups, dtype=self.dtype)
    if self.transformer_resolutions:
      context, label = label, None
    transformer = lambda h: SpatialTransformer(self.transformer_heads, self.transformer_depth, **res)(h, *context)

    def attend(h):   # after a residual block of a level: self-attention and / or the text's transformer
      if h.shape[1] in self.attn_resolutions:
        h = AttnBlock(self.num_heads, **res)(h)
      return transformer(h) if h.shape[1] in self.transformer_resolutions else h

    temb = timestep_embedding(t, self.ch)
    temb = nn.Dense(4 * self.ch, dtype=self.dtype)(temb)
    temb = nn.Dense(4 * self.ch, dtype=self.dtype)(nn.swish(temb))   # (B, 4ch)
    if self.num_classes:
      if label is None:
        label = jnp.full(t.shape, self.num_classes, jnp.int32)
      temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype)(label)

    if self.row_coordinate:
      rows = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, x.shape[1])[None, :, None, None], (*x.shape[:-1], 1))
      x = jnp.concatenate([x, rows.astype(x.dtype)], axis=-1)                  # (B, H, W, C + 1)
    if self.row_profiles is not None:
      profile = jnp.asarray(self.row_profiles, jnp.float32)[label]              # (B, H)
      profile = jnp.broadcast_to(profile[:, :, None, None], (*x.shape[:-1], 1))
      x = jnp.concatenate([x, profile.astype(x.dtype)], axis=-1)
    h = nn.Conv(self.ch, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
    hs = [h]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = attend(ResBlock(self.ch * mult, self.dropout, **res)(h, temb, train))
        hs.append(h)
      if level != len(self.ch_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype)(h)   # (B, H/2, W/2, C)
        hs.append(h)

    h = ResBlock(h.shape[-1], self.dropout, **res)(h, temb, train)
    h = transformer(h) if self.transformer_resolutions else AttnBlock(self.num_heads, **res)(h)
    h = ResBlock(h.shape[-1], self.dropout, **res)(h, temb, train)

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = ResBlock(self.ch * mult, self.dropout, **res)(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
        h = attend(h)
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)                     # nearest, (B, 2H, 2W, C)
        h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype)(h)

    h = nn.swish(GroupNorm(self.norm_groups, self.dtype)(h))
    h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    return h.astype(jnp.float32)


class TextUNet(nn.Module):
  """A UNet with transformer blocks on a text condition, and `encoder`: the text encoder trained with it, a module
  (tokens (B, T), mask (B, T)) -> (.., features (B, T, D), ..) such as jaxgen.models.gpt.BERT; None where the
  features come from a frozen encoder outside. eps_theta(x_t, t, (features, mask)) is the UNet's."""
  unet: UNet
  encoder: nn.Module | None = None

  def __call__(self, x, t, label, train: bool = False):
    if self.encoder is not None and self.is_initializing():    # the encoder's parameters are created with the UNet's
      self.encode(jnp.zeros(label[1].shape, jnp.int32), label[1])
    return self.unet(x, t, label, train)

  def encode(self, tokens, mask):
    """The condition the UNet reads: (features (B, T, D) float32, mask (B, T))."""
    return self.encoder(tokens, mask)[1].astype(jnp.float32), mask
