"""Sample kinds: how a family's samples are written to files and TensorBoard (the writers pick none by type).

Each kind has `extension` (of the main file), `save(path, samples) -> [paths written]`, `log(tb, step,
samples)` for a tensorboardX SummaryWriter, and `text(samples)`: what sample.py prints (None: nothing).
  Images  uint8 (N, H, W, C) samples, or one (H, W, C) grid a family laid out: a PNG grid (.npz: the raw samples)
  Texts   list[str]: a .txt file, the texts separated by `separator` (a rule; one per line for sentences)
  Audio   float32 (N, samples) waveforms in [-1, 1]: one 16-bit PCM WAV of the clips in turn (with
          `gap_s` of silence between them) and a PNG grid of their log-magnitude spectrograms
"""
import os

import numpy as np
import scipy.io.wavfile

from jaxgen import images
from jaxgen.errors import UserError

TEXT_RULE = '\n\n----------\n\n'


class Images:
  extension = '.png'

  def _grid(self, samples) -> np.ndarray:
    samples = np.asarray(samples)
    return images.make_grid(samples) if samples.ndim == 4 else samples

  def save(self, path: str, samples) -> list[str]:
    """A PNG grid; for a path ending in .npz the raw uint8 (N, H, W, C) samples as the array 'images' (the
    input of external FID tools, e.g. np.load(path)['images'])."""
    if path.endswith('.npz'):
      samples = np.asarray(samples)
      if samples.ndim != 4 or samples.dtype != np.uint8:
        raise UserError(f'--out {path} holds uint8 (N, H, W, C) samples; this sampler gave {samples.dtype} '
                        f'{samples.shape}: write a .png grid instead')
      np.savez(path, images=samples)
      return [path]
    images.save_png(path, self._grid(samples))
    return [path]

  def log(self, tb, step: int, samples) -> None:
    tb.add_image('samples', self._grid(samples), step, dataformats='HWC')

  def text(self, samples) -> None:
    return None


class Texts:
  extension = '.txt'

  def __init__(self, separator: str = TEXT_RULE):
    self.separator = separator

  def save(self, path: str, samples: list[str]) -> list[str]:
    with open(path, 'w') as f:
      f.write(self.text(samples) + '\n')
    return [path]

  def log(self, tb, step: int, samples: list[str]) -> None:
    tb.add_text('samples', self.text(samples), step)

  def text(self, samples: list[str]) -> str:
    return self.separator.join(samples)


def spectrogram_db(wave: np.ndarray, sample_rate: int, nperseg: int = 512, floor_db: float = -80.0) -> np.ndarray:
  """20 log10 |STFT| (Hann window, 75% overlap) relative to full scale, clipped at floor_db: (freq, time)."""
  import scipy.signal   # here: importing it costs every process ~1.5 s, and only audio runs draw spectrograms
  _, _, z = scipy.signal.stft(wave, fs=sample_rate, nperseg=nperseg, noverlap=3 * nperseg // 4)
  return np.maximum(20 * np.log10(np.abs(z) + 1e-10), floor_db)


class Audio:
  extension = '.wav'

  def __init__(self, sample_rate: int, gap_s: float = 0.25):
    self.sample_rate, self.gap_s = sample_rate, gap_s

  def pcm16(self, samples) -> np.ndarray:
    """The clips in turn with silence between them, as int16 PCM (1-D)."""
    clips = np.clip(np.asarray(samples, np.float32).reshape(-1, np.shape(samples)[-1]), -1.0, 1.0)
    gap = np.zeros((len(clips), int(self.gap_s * self.sample_rate)), np.float32)
    wave = np.concatenate([clips, gap], axis=1).reshape(-1)[:-gap.shape[1] or None]
    return np.round(wave * 32767).astype(np.int16)

  def spectrograms(self, samples) -> np.ndarray:
    """uint8 (N, freq, time, 1) images of the clips' spectrograms, low frequencies at the bottom."""
    specs = np.stack([spectrogram_db(w, self.sample_rate) for w in np.asarray(samples, np.float32)])[:, ::-1]
    return np.round((specs - specs.min()) / max(np.ptp(specs), 1e-6) * 255).astype(np.uint8)[..., None]

  def save(self, path: str, samples) -> list[str]:
    scipy.io.wavfile.write(path, self.sample_rate, self.pcm16(samples))
    png = os.path.splitext(path)[0] + '.png'
    images.save_png(png, images.make_grid(self.spectrograms(samples), ncols=1 if len(samples) < 4 else None))
    return [path, png]

  def log(self, tb, step: int, samples) -> None:
    tb.add_audio('samples', self.pcm16(samples).astype(np.float32) / 32767, step, sample_rate=self.sample_rate)
    tb.add_image('spectrograms', images.make_grid(self.spectrograms(samples)), step, dataformats='HWC')

  def text(self, samples) -> None:
    return None


Kind = Images | Texts | Audio
