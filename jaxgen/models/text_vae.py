"""Sentence VAE (Bowman et al. 2016): bidirectional GRU encoder -> q(z|x), z-conditioned GRU language model p(x|z).

  e_t = W_e[x_t],   (h_fwd, h_bwd) = BiGRU(e_1 .. e_L),   mu = W_mu [h_fwd; h_bwd],   log sigma^2 = W_s [h_fwd; h_bwd]
  h_0 = tanh(W_z z),   h_t = GRU(h_{t-1}, [W_e[y_t]; z]),   logits_t = W_o h_t

The embedding W_e is shared by encoder and decoder. Sentences are BOS .. EOS followed by PAD; the encoder reads
only the L = mask.sum(-1) real tokens (the backward GRU starts at each sentence's last real token).
"""
import flax.linen as nn
import jax.numpy as jnp


class SentenceVAE(nn.Module):
  vocab_size: int
  embed_dim: int
  hidden: int                           # GRU width
  latent_dim: int
  pad_id: int                           # for the family's loss masking; the model reads padding from `mask`
  dtype: jnp.dtype = jnp.float32        # compute dtype; parameters are float32

  def setup(self):
    gru = lambda: nn.RNN(nn.GRUCell(self.hidden, dtype=self.dtype))
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype)
    self.encoder = nn.Bidirectional(gru(), gru(), return_carry=True)
    self.to_mean = nn.Dense(self.latent_dim, dtype=self.dtype)
    self.to_logvar = nn.Dense(self.latent_dim, dtype=self.dtype)
    self.to_carry = nn.Dense(self.hidden, dtype=self.dtype)
    self.decoder = gru()
    self.to_logits = nn.Dense(self.vocab_size, dtype=self.dtype)

  def encode(self, tokens, mask):
    """tokens (B, T) int, mask (B, T) bool true at real tokens -> (mean, logvar), (B, latent_dim) float32 each."""
    (h_fwd, h_bwd), _ = self.encoder(self.embed(tokens), seq_lengths=mask.sum(-1).astype(jnp.int32))
    h = jnp.concatenate([h_fwd, h_bwd], -1)                 # (B, 2 hidden)
    return self.to_mean(h).astype(jnp.float32), self.to_logvar(h).astype(jnp.float32)

  def init_carry(self, z):
    """z (B, latent_dim) -> h_0 = tanh(W_z z), (B, hidden)."""
    return jnp.tanh(self.to_carry(z))

  def _step_inputs(self, z, tokens):
    """[W_e[y_t]; z] for tokens (B, T) -> (B, T, embed_dim + latent_dim)."""
    e = self.embed(tokens)                                  # (B, T, E)
    z = jnp.broadcast_to(z[:, None].astype(e.dtype), (*tokens.shape, z.shape[-1]))
    return jnp.concatenate([e, z], -1)

  def decode(self, z, inputs):
    """z (B, latent_dim), teacher-forced inputs (B, T) -> logits (B, T, V) float32; logits_t sees inputs[:, :t+1]."""
    h = self.decoder(self._step_inputs(z, inputs), initial_carry=self.init_carry(z))  # (B, T, hidden)
    return self.to_logits(h).astype(jnp.float32)

  def decode_step(self, z, carry, token):
    """One decoder step: z (B, latent_dim), carry (B, hidden), token (B,) -> (carry, logits (B, V) float32)."""
    carry, h = self.decoder(self._step_inputs(z, token[:, None]), initial_carry=carry, return_carry=True)
    return carry, self.to_logits(h[:, 0]).astype(jnp.float32)

  def __call__(self, tokens, mask, inputs, z_noise):
    """For init: z = mean + exp(logvar / 2) * z_noise -> (logits (B, T, V), mean, logvar)."""
    mean, logvar = self.encode(tokens, mask)
    z = mean + jnp.exp(0.5 * logvar) * z_noise
    return self.decode(z, inputs), mean, logvar
