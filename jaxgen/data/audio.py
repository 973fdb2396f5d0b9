"""Audio datasets (data.modality=audio): pitched notes from TFDS with an audio and a pitch feature —
`jaxgen_notes` (rendered offline with fluidsynth, jaxgen.data.notes) or `nsynth/gansynth_subset` (online).

Spec: modality='audio', name, sample_rate, num_samples, num_classes = 128 (MIDI pitches: a model is
conditioned on the MIDI number itself), pitch_range (lo, hi) inclusive (data.pitch_range: what previews
and evaluation ask for), mel: the jaxgen.data.mel.MelParams of the log-mel features (fixed here, so a family
and its evaluators compute the same features).
Batches: {'audio': float32 (B, num_samples) in [-1, 1], the first data.clip_samples of each note (zero padded),
'label': int32 (B,) MIDI pitch}; order, repetition and process rows as for images (jaxgen.data.images).
"""
import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data import base, images, mel
from jaxgen.data import notes  # noqa: F401 -- registers the jaxgen_notes builder with TFDS
from jaxgen.errors import UserError

NUM_PITCHES = 128


class ReadNotes(grain.transforms.Map):
  """Indices (B,) -> {'audio': float32 (B, num_samples), 'label': int32 (B,)}; int16 audio is scaled by 1/32768."""

  def __init__(self, config, source):
    self.source, self.num_samples = source, config.data.clip_samples
    self.audio_key, self.label_key = config.data.audio_key, config.data.label_key

  def map(self, indices):
    keys = indices.tolist()
    try:
      examples = self.source.__getitems__(keys)
    except TypeError:  # a source without a working batched read, e.g. tfds.testing.mock_data's
      examples = [self.source[k] for k in keys]
    audio = np.zeros((len(keys), self.num_samples), np.float32)
    for row, e in enumerate(examples):
      wave = np.asarray(e[self.audio_key])[:self.num_samples]
      audio[row, :len(wave)] = wave / 32768.0 if wave.dtype == np.int16 else wave
    return {'audio': audio, 'label': np.array([e[self.label_key] for e in examples], np.int32)}


def _spec(config, features):
  data = config.data
  if data.audio_key not in features or data.label_key not in features:
    raise UserError(f'TFDS dataset {data.name} has no {data.audio_key!r} and {data.label_key!r} features (it has '
                    f'{sorted(features)}); set --config.data.audio_key / --config.data.label_key')
  rate = int(features[data.audio_key].sample_rate)
  lo, hi = data.pitch_range
  if not 0 <= lo <= hi < NUM_PITCHES:
    raise UserError(f'data.pitch_range={tuple(data.pitch_range)} must be MIDI pitches lo <= hi in [0, 127]')
  params = mel.MelParams(sample_rate=rate, num_samples=data.clip_samples, fmax=min(8_000.0, rate / 2),
                         frames=data.clip_samples // mel.MelParams._field_defaults['hop'])
  return base.make_spec(modality='audio', name=data.name, sample_rate=rate, num_samples=data.clip_samples,
                        num_classes=NUM_PITCHES, pitch_range=(lo, hi), mel=params._asdict())


def load(config, workdir: str) -> base.Dataset:
  """Prepares the dataset as ArrayRecord if needed (jaxgen_notes renders its notes); its spec and iterators."""
  del workdir
  builder = images.prepare(config)
  return base.Dataset(_spec(config, builder.info.features),
                      lambda: images.train_iterator(config, ReadNotes),
                      lambda: images.eval_batches(config, ReadNotes))


def synthetic_spec(config):
  return _spec(config, tfds.builder(config.data.name, data_dir=config.data.data_dir).info.features)


def ordered_batches(config, split: str) -> grain.IterDataset:
  """All of `split` in order (the last batch smaller)."""
  return images.ordered_batches(config, split, ReadNotes)
