"""TFDS mocked with small deterministic image and note datasets (no files, no network) for tests and CLI runs.

    with mock_images(): ...                                    # in-process
    python tests/support/mock_tfds.py train.py --config ...    # a CLI under the same mock
"""
import contextlib
import runpy
import sys

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = {'train': 64, 'test': 32}


class SyntheticImages:
  """Random-access source: example i of a split is a fixed pseudo-random uint8 image and label i % 10."""

  def __init__(self, split: str, shape):
    self.n, self.shape, self.salt = NUM_EXAMPLES[split], tuple(shape), 0 if split == 'train' else 10**6

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    rng = np.random.default_rng(self.salt + int(i))
    return {'image': rng.integers(0, 256, self.shape, dtype=np.uint8), 'label': np.int64(int(i) % 10)}

  def __getitems__(self, keys):
    return [self[k] for k in keys]


class SyntheticNotes:
  """Example i of a split: a decaying harmonic tone of MIDI pitch 48 + i % 37 (int16 audio, NSynth's keys)."""

  def __init__(self, split: str, audio):
    self.n, self.salt = NUM_EXAMPLES[split], 0 if split == 'train' else 10**6
    self.num_samples, self.rate = audio.shape[0], audio.sample_rate

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    pitch = 48 + int(i) % 37
    t = np.arange(self.num_samples) / self.rate
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    phases = np.random.default_rng(self.salt + int(i)).uniform(0, 2 * np.pi, 3)
    wave = sum(np.sin(2 * np.pi * k * f0 * t + phases[k - 1]) / k for k in (1, 2, 3)) * np.exp(-3 * t)
    return {'audio': np.round(wave / np.abs(wave).max() * 0.9 * 32767).astype(np.int16), 'pitch': np.int32(pitch)}

  def __getitems__(self, keys):
    return [self[k] for k in keys]


def _as_data_source(builder, split, **kwargs):
  del kwargs
  features = builder.info.features
  if 'audio' in features:
    return SyntheticNotes(str(split), features['audio'])
  return SyntheticImages(str(split), features['image'].shape)


@contextlib.contextmanager
def mock_images():
  """TFDS's mock (its download_and_prepare does nothing) as if online, so setup never looks for local files."""
  from jaxgen.data import images
  online, images._online = images._online, lambda builder: True
  try:
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_data_source_fn=_as_data_source):
      yield
  finally:
    images._online = online


if __name__ == '__main__':
  script, sys.argv = sys.argv[1], sys.argv[1:]
  with mock_images():
    runpy.run_path(script, run_name='__main__')
