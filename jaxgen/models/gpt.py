"""GPT (Radford et al. 2019; nanoGPT's layout): pre-LayerNorm causal Transformer with tied embeddings; with
causal=False the same blocks are BERT's bidirectional encoder (Devlin et al. 2019).

  h_0 = W_te[x] + P,   h_l' = h_l + Attn(LN(h_l)),   h_{l+1} = h_l' + MLP(LN(h_l')),   logits = LN(h_L) W_te^T
  Attn(x) = softmax(Q K^T / sqrt(d_k) + causal mask) V per head,   MLP(x) = GELU(x W_fc) W_proj

Encoder (causal=False): no causal mask but a padding mask (each token attends to every real token), optional
segment embeddings (h_0 += W_tt[s], BERT's sentences A and B), and BERT's MLM head before the tied decoder:
  features = LN(h_L),   logits = LN_mlm(GELU(features W_mlm + b)) W_te^T + b_mlm
The causal model's parameters are exactly GPT's (no MLM head, no segment embeddings).

Parameters carry logical axis names ('vocab', 'embed', 'mlp', 'heads', 'kv') for sharding rules.
Decoding passes an explicit `kv_cache` (one KVCache per layer) in and out: the tokens fed at
`cache_index` write their keys/values there and attend to every cached position <= their own.

With scan_layers the L blocks are one nn.scan over a Block whose parameters are stacked on a leading 'layers'
axis ('h': each leaf (L, ...), where the unrolled model has 'h_0' ... 'h_{L-1}'), and the cache is one KVCache
of (L, B, S, H, D): XLA compiles one block instead of L (stack_layers / unstack_layers convert parameters).
"""
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class KVCache(NamedTuple):
  k: jax.Array  # (B, S, H, D)
  v: jax.Array  # (B, S, H, D)


def init_kv_cache(model: 'GPT', batch_size: int) -> tuple[KVCache, ...] | KVCache:
  """Zeroed keys/values for `block_size` positions in the compute dtype: one KVCache per layer, or with
  scan_layers one KVCache whose arrays have a leading layer axis."""
  shape = (batch_size, model.block_size, model.num_heads, model.embed_dim // model.num_heads)
  if model.scan_layers:
    zeros = jnp.zeros((model.num_layers, *shape), model.dtype)
    return KVCache(zeros, zeros)
  zeros = jnp.zeros(shape, model.dtype)
  return tuple(KVCache(zeros, zeros) for _ in range(model.num_layers))


def stack_layers(params: dict) -> dict:
  """Unrolled GPT parameters ('h_0' ... 'h_{L-1}') -> scan_layers' ('h': every leaf stacked on axis 0)."""
  layers = [params[f'h_{i}'] for i in range(sum(k.startswith('h_') for k in params))]
  rest = {k: v for k, v in params.items() if not k.startswith('h_')}
  return {**rest, 'h': jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)}


def unstack_layers(params: dict) -> dict:
  """The inverse of stack_layers; unrolled parameters are returned as they are."""
  if 'h' not in params:
    return params
  rest = {k: v for k, v in params.items() if k != 'h'}
  num_layers = jax.tree.leaves(params['h'])[0].shape[0]
  return {**rest, **{f'h_{i}': jax.tree.map(lambda x: np.asarray(x)[i], params['h']) for i in range(num_layers)}}


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)); (length, dim)."""
  angles = np.arange(length)[:, None] / 10000 ** (np.arange(0, dim, 2) / dim)
  pe = np.zeros((length, dim), np.float32)
  pe[:, 0::2], pe[:, 1::2] = np.sin(angles), np.cos(angles[:, :dim // 2])
  return pe


def attention_implementation(dtype, device=None) -> str:
  """jax.nn.dot_product_attention's implementation: 'cudnn' (its fused flash-attention kernel) for bf16/fp16
  on NVIDIA GPUs of compute capability >= 8 (Ampere and later), 'xla' everywhere else."""
  device = device or jax.devices()[0]
  nvidia = device.platform == 'gpu' and 'nvidia' in device.device_kind.lower()
  ampere = float(getattr(device, 'compute_capability', 0) or 0) >= 8.0
  return 'cudnn' if nvidia and ampere and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else 'xla'


def softmax_attention(q, k, v, mask=None, is_causal: bool = False):
  """softmax(q k^T / sqrt(D)) v per head, keys left out where mask (broadcast to (B, N, T, S)) is False and, with
  is_causal, after the query (T == S); q (B, T, N, D), k and v (B, S, N, D) -> (B, T, N, D). What
  jax.nn.dot_product_attention's XLA path computes (scores and softmax in float32); this form runs forward +
  backward ~1.6x faster on XLA:CPU at the GPT's shapes (1.5 vs 2.5 ms at B 12, T 64, 4 heads of 32)."""
  scores = jnp.einsum('btnd,bsnd->bnts', q, k, preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
  scores = scores * (1.0 / np.sqrt(q.shape[-1]))                                           # (B, N, T, S)
  if is_causal:
    causal = np.tril(np.ones(scores.shape[-2:], bool))
    mask = causal if mask is None else jnp.logical_and(mask, causal)
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bnts,bsnd->btnd', weights, v)


@jax.custom_vjp
def _matmul(x, w):
  """x (M, K) @ w (K, N) whose VJP forms the weight gradient as (dy^T x)^T, not x^T dy: XLA:CPU runs that dot at
  ~1.5x the rate (152 vs 84-100 GFLOP/s at 768x128x512; docs/performance.md). dx = dy w^T either way."""
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(residuals, dy):
  x, w = residuals
  return dy @ w.T, (dy.T @ x).T


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """lax.dot_general of the Dense / DenseGeneral kernels (the input's trailing axes against the kernel's leading
  ones, no batch axes) as one 2-D _matmul on CPU; lax.dot_general otherwise and on other backends."""
  (lhs_contract, rhs_contract), batch = dimension_numbers
  k = len(lhs_contract)
  if (jax.default_backend() != 'cpu' or any(batch) or precision is not None or preferred_element_type is not None
      or tuple(lhs_contract) != tuple(range(lhs.ndim - k, lhs.ndim)) or tuple(rhs_contract) != tuple(range(k))):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type)
  contracted = int(np.prod(rhs.shape[:k]))
  y = _matmul(lhs.reshape(-1, contracted), rhs.reshape(contracted, -1))
  return y.reshape(*lhs.shape[:lhs.ndim - k], *rhs.shape[k:])


def _init(std: float, names: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _layer_norm(use_bias: bool, dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(1e-5, use_bias=use_bias, dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


class SelfAttention(nn.Module):
  num_heads: int
  dropout_rate: float
  use_bias: bool
  residual_std: float
  dtype: jnp.dtype
  causal: bool = True

  @nn.compact
  def __call__(self, x, train: bool, kv_cache: KVCache | None, cache_index, padding_mask=None):
    """padding_mask (B, T) bool, True for real tokens: no query attends to padding keys."""
    B, T, C = x.shape
    qkv = nn.DenseGeneral((3, self.num_heads, C // self.num_heads), use_bias=self.use_bias, dtype=self.dtype,
                          dot_general=dense_dot_general, kernel_init=_init(0.02, ('embed', None, 'heads', 'kv')),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None, 'heads', 'kv')),
                          name='c_attn')(x)                              # (B, T, 3, H, D)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]                   # (B, T, H, D)
    if kv_cache is None:   # the one place causal and bidirectional attention differ
      mask, is_causal = None if padding_mask is None else padding_mask[:, None, None, :], self.causal  # (B, 1, 1, S)
    else:
      k = lax.dynamic_update_slice(kv_cache.k, k.astype(kv_cache.k.dtype), (0, cache_index, 0, 0))  # (B, S, H, D)
      v = lax.dynamic_update_slice(kv_cache.v, v.astype(kv_cache.v.dtype), (0, cache_index, 0, 0))
      kv_cache = KVCache(k, v)
      mask = jnp.arange(k.shape[1])[None, :] <= cache_index + jnp.arange(T)[:, None]  # (T, S)
      mask, is_causal = mask[None, None], False
    if train and self.dropout_rate > 0:
      # jax.nn.dot_product_attention has no dropout on the attention weights; nanoGPT applies it there.
      if is_causal:
        mask = nn.combine_masks(nn.make_causal_mask(jnp.ones((B, T), bool)), mask)
      weights = nn.dot_product_attention_weights(q, k, mask=mask, dropout_rate=self.dropout_rate,
                                                 dropout_rng=self.make_rng('dropout'), deterministic=False,
                                                 dtype=self.dtype)  # (B, H, T, S)
      y = jnp.einsum('bhts,bshd->bthd', weights, v)
    else:
      if jax.default_backend() == 'cpu':
        y = softmax_attention(q, k, v, mask, is_causal)                        # (B, T, H, D)
      else:   # cuDNN takes the causal mask as a flag; an explicit mask (padding, cached positions) goes to XLA
        implementation = attention_implementation(q.dtype) if mask is None else 'xla'
        y = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation=implementation)
    y = nn.DenseGeneral(C, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype, dot_general=dense_dot_general,
                        kernel_init=_init(self.residual_std, ('heads', 'kv', 'embed')),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                        name='c_proj')(y)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y), kv_cache


class Block(nn.Module):
  num_heads: int
  dropout_rate: float
  use_bias: bool
  residual_std: float
  dtype: jnp.dtype
  causal: bool = True

  @nn.compact
  def __call__(self, x, train: bool, kv_cache: KVCache | None, cache_index, padding_mask=None):
    C = x.shape[-1]
    dense = lambda features, std, names, name: nn.Dense(
        features, use_bias=self.use_bias, dtype=self.dtype, name=name, kernel_init=_init(std, names),
        dot_general=dense_dot_general,
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))
    attn = SelfAttention(self.num_heads, self.dropout_rate, self.use_bias, self.residual_std, self.dtype,
                         self.causal, name='attn')
    y, kv_cache = attn(_layer_norm(self.use_bias, self.dtype, 'ln_1')(x), train, kv_cache, cache_index, padding_mask)
    x = x + y
    h = _layer_norm(self.use_bias, self.dtype, 'ln_2')(x)
    h = nn.gelu(dense(4 * C, 0.02, ('embed', 'mlp'), 'c_fc')(h))  # (B, T, 4C)
    h = dense(C, self.residual_std, ('mlp', 'embed'), 'c_proj')(h)
    return x + nn.Dropout(self.dropout_rate, deterministic=not train)(h), kv_cache


class GPT(nn.Module):
  vocab_size: int
  block_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  dropout_rate: float = 0.0
  use_bias: bool = False
  position_embedding: str = 'learned'   # learned | sinusoidal
  dtype: jnp.dtype = jnp.float32        # compute dtype; parameters are float32
  causal: bool = True                   # False: BERT's encoder (padding mask, MLM head; returns features)
  num_segments: int = 0                 # encoder: > 0 adds segment (token type) embeddings 'wtt'
  remat: bool = False                   # recompute each block's activations in the backward pass (nn.remat)
  scan_layers: bool = False             # one nn.scan over the blocks (parameters stacked on a 'layers' axis)

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, kv_cache: tuple[KVCache, ...] | None = None,
               cache_index=0, padding_mask=None, segments=None):
    """tokens (B, T) at positions cache_index + [0, T).

    causal -> (logits (B, T, V) float32, updated kv_cache); without a kv_cache the T tokens attend causally to
    each other (cache_index must be 0).
    encoder -> (MLM logits (B, T, V) float32, features (B, T, C)): every token attends to every real token
    (padding_mask (B, T) bool, True for real tokens; None: all are); segments (B, T) int in [0, num_segments)
    (None: 0). Padding changes nothing at the real tokens.
    """
    if not self.causal and kv_cache is not None:
      raise ValueError('the encoder (causal=False) has no KV cache')
    T = tokens.shape[1]
    wte = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name='wte',
                   embedding_init=_init(0.02, ('vocab', 'embed')))
    positions = cache_index + jnp.arange(T)
    if self.position_embedding == 'learned':
      pos = nn.Embed(self.block_size, self.embed_dim, dtype=self.dtype, name='wpe',
                     embedding_init=_init(0.02, (None, 'embed')))(positions)
    elif self.position_embedding == 'sinusoidal':
      pos = jnp.asarray(sinusoidal_positions(self.block_size, self.embed_dim), self.dtype)[positions]
    else:
      raise ValueError(f'unknown position_embedding {self.position_embedding!r}; use learned or sinusoidal')
    x = wte(tokens) + pos                                                          # (B, T, C)
    if self.num_segments:
      segments = jnp.zeros_like(tokens) if segments is None else segments
      x = x + nn.Embed(self.num_segments, self.embed_dim, dtype=self.dtype, name='wtt',
                       embedding_init=_init(0.02, (None, 'embed')))(segments)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    residual_std = 0.02 / np.sqrt(2 * self.num_layers)
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block   # static: train (self is 0)
    args = (self.num_heads, self.dropout_rate, self.use_bias, residual_std, self.dtype, self.causal)
    if self.scan_layers:   # carry x; scan over the stacked parameters and the cache's layer axis
      blocks = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                       in_axes=(nn.broadcast, 0, nn.broadcast, nn.broadcast), length=self.num_layers,
                       metadata_params={nn.PARTITION_NAME: 'layers'})
      x, new_cache = blocks(*args, name='h')(x, train, kv_cache, cache_index, padding_mask)
    else:
      new_cache = []
      for i in range(self.num_layers):
        x, layer_cache = block(*args, name=f'h_{i}')(x, train, None if kv_cache is None else kv_cache[i],
                                                     cache_index, padding_mask)
        new_cache.append(layer_cache)
      new_cache = tuple(new_cache)
    x = _layer_norm(self.use_bias, self.dtype, 'ln_f')(x)
    if self.causal:
      logits = wte.attend(x).astype(jnp.float32)  # weight tying: (B, T, V)
      return logits, None if kv_cache is None else new_cache
    h = nn.Dense(self.embed_dim, dtype=self.dtype, name='mlm_dense', kernel_init=_init(0.02, (None, 'embed')),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(x)
    h = _layer_norm(True, self.dtype, 'mlm_ln')(nn.gelu(h))
    bias = self.param('mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)), (self.vocab_size,))
    logits = (wte.attend(h) + bias).astype(jnp.float32)  # the MLM head, tied to the token embeddings: (B, T, V)
    return logits, x


class BERT(nn.Module):
  """Devlin et al. 2019 on GPT's blocks: `encoder` is a GPT(causal=False); with nsp, the next-sentence
  classifier on the pooled [CLS] feature, tanh(h_[CLS] W_pool + b) W_nsp + b (BERT's pooler)."""
  encoder: GPT
  nsp: bool = False

  @nn.compact
  def __call__(self, tokens, padding_mask=None, segments=None, *, train: bool = False):
    """tokens (B, T) -> (MLM logits (B, T, V) float32, features (B, T, C), NSP logits (B, 2) float32 or None)."""
    logits, features = self.encoder(tokens, train=train, padding_mask=padding_mask, segments=segments)
    if not self.nsp:
      return logits, features, None
    dense = lambda n, names, name: nn.Dense(n, dtype=self.encoder.dtype, name=name, kernel_init=_init(0.02, names),
                                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))
    pooled = jnp.tanh(dense(self.encoder.embed_dim, ('embed', None), 'pooler')(features[:, 0]))   # (B, C)
    return logits, features, dense(2, ('embed', None), 'nsp_head')(pooled).astype(jnp.float32)
