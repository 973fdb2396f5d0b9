"""Arrays held in memory as a Dataset (a stage's latents, made by jaxgen.stages): no files, no TFDS.

Training draws global batches of rows as the image source draws examples: a fresh permutation per epoch,
deterministic in config.seed, checkpointable, each process keeping its rows of every global batch.
"""
from typing import Callable, Iterable

import grain
import numpy as np

from jaxgen.data import base


class _Rows(grain.transforms.Map):
  """Row indices (B,) -> {name: array[indices]} for every array."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def map(self, indices):
    return {k: v[indices] for k, v in self.arrays.items()}


def dataset(config, spec, train: dict[str, np.ndarray], eval_batches: Callable[[], Iterable[dict]]) -> base.Dataset:
  """A Dataset training on the rows of `train` (arrays of equal length) and testing on `eval_batches()`."""
  def train_iterator():
    ds = base.shuffled_epochs(len(next(iter(train.values()))), config.seed)
    ds = ds.batch(config.batch_size, drop_remainder=True).map(base.ProcessRows(config))
    return iter(ds.map(_Rows(train)).to_iter_dataset(base.read_options(config)))
  return base.Dataset(spec, train_iterator, eval_batches)
