"""Log-mel spectrograms of waveforms and their inverse (Griffin-Lim), as jittable JAX functions.

Forward, for a waveform y (B, N) at rate sr:
  X = STFT(y): Hann window of n_fft (periodic), hop `hop`, frames centred on t * hop (zero padding, as librosa's
      default), X (B, frames, 1 + n_fft / 2);
  M = |X| B^T with B librosa's Slaney mel filterbank (n_mels, 1 + n_fft / 2) on [fmin, fmax]: magnitude mel;
  x = 2 (20 log10 max(M, 10^(floor_db / 20)) - floor_db) / (top_db - floor_db) - 1, clipped to [-1, 1]:
      the first `frames` frames, as an image (B, n_mels, frames, 1), low frequencies in row 0.
Inverse: M from x; the linear magnitude S >= 0 minimising ||S B^T - M|| by multiplicative NNLS updates
(Lee & Seung), then fast Griffin-Lim (Perraudin et al. 2013; librosa's momentum 0.99) for the phase.
The parameters are fixed per dataset in MelParams and recorded in the data spec.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class MelParams(NamedTuple):
  sample_rate: int = 16_000
  num_samples: int = 16_384       # waveform length; frames cover it with hop-spaced centres
  n_fft: int = 1024
  hop: int = 512
  n_mels: int = 128
  fmin: float = 0.0
  fmax: float = 8_000.0
  frames: int = 32                # kept of the 1 + num_samples // hop centred frames
  floor_db: float = -75.0         # -> -1 (silence; ~95 dB below the loudest notes)
  top_db: float = 25.0            # -> +1 (notes peak-normalised to 0.9 reach ~21 dB)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.n_mels, self.frames, 1)


@functools.lru_cache(maxsize=None)
def mel_basis(p: MelParams) -> np.ndarray:
  """librosa's Slaney-normalised mel filterbank, float32 (n_mels, 1 + n_fft // 2)."""
  import librosa     # imported on use: it pulls in numba
  return librosa.filters.mel(sr=p.sample_rate, n_fft=p.n_fft, n_mels=p.n_mels, fmin=p.fmin, fmax=p.fmax,
                             dtype=np.float32)


def _window(n_fft: int) -> jax.Array:
  return jnp.asarray(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft), jnp.float32)   # periodic Hann


def stft(y: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """(B, N) -> complex64 (B, 1 + N // hop, 1 + n_fft // 2): frames centred on t * hop, zero padded."""
  y = jnp.pad(y, ((0, 0), (n_fft // 2, n_fft // 2)))
  num_frames = 1 + (y.shape[1] - n_fft) // hop
  idx = hop * jnp.arange(num_frames)[:, None] + jnp.arange(n_fft)[None, :]     # (frames, n_fft)
  return jnp.fft.rfft(y[:, idx] * _window(n_fft), axis=-1)


def istft(spec: jax.Array, n_fft: int, hop: int, length: int) -> jax.Array:
  """Inverse of stft: windowed overlap-add divided by the summed squared window, cut to `length`."""
  frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * _window(n_fft)              # (B, T, n_fft)
  num_frames = spec.shape[1]
  total = n_fft + hop * (num_frames - 1)
  idx = (hop * jnp.arange(num_frames)[:, None] + jnp.arange(n_fft)[None, :]).reshape(-1)
  y = jnp.zeros((spec.shape[0], total), frames.dtype).at[:, idx].add(frames.reshape(spec.shape[0], -1))
  wss = jnp.zeros((total,), jnp.float32).at[idx].add(jnp.tile(jnp.square(_window(n_fft)), num_frames))
  y = y / jnp.where(wss > 1e-8, wss, 1.0)
  return y[:, n_fft // 2:n_fft // 2 + length]


def mel_magnitude(y: jax.Array, p: MelParams) -> jax.Array:
  """(B, N) -> M = |STFT| B^T: (B, 1 + N // hop, n_mels)."""
  return jnp.abs(stft(y, p.n_fft, p.hop)) @ jnp.asarray(mel_basis(p)).T


def db_to_unit(db: jax.Array, p: MelParams) -> jax.Array:
  return jnp.clip(2 * (db - p.floor_db) / (p.top_db - p.floor_db) - 1, -1.0, 1.0)


def unit_to_magnitude(x: jax.Array, p: MelParams) -> jax.Array:
  return 10 ** ((p.floor_db + (x + 1) / 2 * (p.top_db - p.floor_db)) / 20)


def log_mel(y: jax.Array, p: MelParams) -> jax.Array:
  """Waveforms (B, N) in [-1, 1] -> normalised log-mel images (B, n_mels, frames, 1) in [-1, 1]."""
  m = mel_magnitude(y, p)[:, :p.frames]                                         # (B, frames, n_mels)
  db = 20 * jnp.log10(jnp.maximum(m, 10 ** (p.floor_db / 20)))
  return db_to_unit(db, p).transpose(0, 2, 1)[..., None]


def mel_to_linear(m: jax.Array, p: MelParams, iters: int = 100) -> jax.Array:
  """Magnitude mel (B, T, n_mels) -> S >= 0 (B, T, 1 + n_fft // 2) with S B^T ~ M: multiplicative NNLS updates
  S <- S (M B) / (S B^T B), started from M B normalised per frequency (each step lowers ||S B^T - M||^2)."""
  basis = jnp.asarray(mel_basis(p))                                             # (n_mels, F)
  mb = m @ basis                                                                # (B, T, F)
  s0 = mb / jnp.maximum(basis.sum(0) * basis.max(), 1e-8)

  def body(_, s):
    return s * mb / jnp.maximum((s @ basis.T) @ basis, 1e-12)

  return jax.lax.fori_loop(0, iters, body, s0)


def griffin_lim(s: jax.Array, p: MelParams, iters: int = 64, momentum: float = 0.99) -> jax.Array:
  """Linear magnitude (B, T, F) -> waveform (B, num_samples): fast Griffin-Lim from zero phase."""
  def project(angles):
    return stft(istft(s * angles, p.n_fft, p.hop, p.num_samples), p.n_fft, p.hop)

  def body(_, carry):
    angles, previous = carry
    rebuilt = project(angles)
    accelerated = rebuilt - momentum / (1 + momentum) * previous
    return accelerated / jnp.maximum(jnp.abs(accelerated), 1e-16), rebuilt

  init = (jnp.ones_like(s, jnp.complex64), jnp.zeros_like(s, jnp.complex64))
  angles, _ = jax.lax.fori_loop(0, iters, body, init)
  return istft(s * angles, p.n_fft, p.hop, p.num_samples)


def to_waveform(x: jax.Array, p: MelParams, iters: int = 64) -> jax.Array:
  """Normalised log-mel images (B, n_mels, frames, 1) -> float32 waveforms (B, num_samples) in [-1, 1]; the
  frames beyond `frames` (at the clip's end) are taken as silence."""
  m = unit_to_magnitude(x[..., 0].transpose(0, 2, 1), p)                         # (B, frames, n_mels)
  all_frames = 1 + p.num_samples // p.hop
  silence = unit_to_magnitude(-jnp.ones((m.shape[0], all_frames - p.frames, p.n_mels)), p)
  m = jnp.concatenate([m, silence], axis=1)
  return jnp.clip(griffin_lim(mel_to_linear(m, p), p, iters), -1.0, 1.0)


def harmonic_profiles(p: MelParams, num_pitches: int = 128, harmonics: int = 24, width: float = 0.75) -> np.ndarray:
  """(num_pitches + 1, n_mels) float32: row r of pitch m is max_k exp(-(r - r_k)^2 / (2 width^2)) over its
  harmonics k f0 < fmax, f0 = 440 * 2^((m - 69) / 12), r_k the (fractional) mel row of k f0 on the filters'
  centre frequencies; the last row (the null label of classifier-free guidance) is 0."""
  import librosa
  centres = librosa.mel_frequencies(p.n_mels + 2, fmin=p.fmin, fmax=p.fmax)[1:-1]
  rows = np.arange(p.n_mels)
  out = np.zeros((num_pitches + 1, p.n_mels), np.float32)
  for m in range(num_pitches):
    f = 440.0 * 2 ** ((m - 69) / 12) * np.arange(1, harmonics + 1)
    r = np.interp(f[f < p.fmax], centres, rows, left=-10.0, right=p.n_mels + 10.0)
    if len(r):
      out[m] = np.max(np.exp(-np.square(rows[None] - r[:, None]) / (2 * width**2)), axis=0)
  return out


def params_of(spec) -> MelParams:
  """The MelParams recorded in an audio data spec (jaxgen.data.audio)."""
  return MelParams(**dict(spec.mel))
