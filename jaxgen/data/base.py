"""What every data source shares: the Dataset bundle, data specs, and each process's rows of a global batch."""
import functools
import json
from typing import Callable, Iterable, Iterator, NamedTuple

import grain
import jax
import ml_collections
import numpy as np

from jaxgen.errors import UserError


class Wire(NamedTuple):
  """The trainer's train batches in a compact form for the trip to the device (uint8 pixels: a quarter of the
  bytes of float32), and the jittable map back: to_model(next(train_iterator())) equals the Dataset's
  next(train_iterator()) bit for bit. The trainer applies to_model inside its jitted step."""
  train_iterator: Callable[[], Iterator[dict]]
  to_model: Callable[[dict], dict] | None      # None: the batches are what the family reads


class Dataset(NamedTuple):
  spec: ml_collections.FrozenConfigDict
  train_iterator: Callable[[], Iterator[dict]]
  eval_batches: Callable[[], Iterable[dict]]
  wire: Wire | None = None         # None: the trainer sends train_iterator's batches as they are


def make_spec(**facts) -> ml_collections.FrozenConfigDict:
  """A data spec: JSON-able facts (tuples for shapes), frozen; `modality` names the source kind. Made through
  JSON, so a spec equals itself read back from spec.json."""
  return spec_from_json(json.dumps(facts))


def spec_to_json(spec) -> str:
  return json.dumps(spec.to_dict() if hasattr(spec, 'to_dict') else dict(spec), indent=2, sort_keys=True)


def spec_from_json(text: str) -> ml_collections.FrozenConfigDict:
  return ml_collections.FrozenConfigDict(json.loads(text))


class ProcessRows(grain.transforms.Map):
  """A global batch (an array, or a dict of arrays: example indices or examples) -> this process's rows: the
  p-th of P contiguous blocks, the row order of the global array the trainer assembles."""

  def __init__(self, config):
    if config.batch_size % jax.process_count():
      raise UserError(f'batch_size {config.batch_size} must be a multiple of the number of processes '
                      f'({jax.process_count()})')
    n = config.batch_size // jax.process_count()
    self.rows = slice(jax.process_index() * n, (jax.process_index() + 1) * n)

  def map(self, batch):
    return jax.tree.map(lambda x: x[self.rows], batch)


def read_options(config) -> grain.ReadOptions:
  """config.data.prefetch batches read ahead, one thread each (per worker process when data.num_workers > 0);
  0: read when asked. Not Grain's default (16 threads, 500 elements): a smoke run of 4 steps would read 500
  batches, and every run would take CPU from its train step to read far ahead of it."""
  return grain.ReadOptions(num_threads=config.data.prefetch, prefetch_buffer_size=config.data.prefetch)


@functools.lru_cache(maxsize=4)        # the epochs being read (prefetch threads may straddle two)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


class _EpochPermutation(grain.transforms.MapWithIndex):
  """(position i, i mod n) -> example permutation_e[i mod n] of epoch e = i // n."""

  def __init__(self, n: int, seed: int):
    self.n, self.seed = n, seed

  def map_with_index(self, i: int, k: int) -> int:
    return int(_permutation(self.n, self.seed, i // self.n)[k])


def shuffled_epochs(n: int, seed: int) -> grain.MapDataset:
  """Example indices 0..n-1, endlessly, in a fresh permutation each epoch (numpy's, seeded by (seed, epoch)):
  random access, so an iterator's state is its position. Not Grain's MapDataset.shuffle, whose index cipher
  walks a domain of at least 2^16 indices: ~65536/n rounds per index below that, 0.5 ms an index at n = 64
  (4.8 us at 60000); a permutation here costs O(n) once per epoch and a lookup per index."""
  return grain.MapDataset.range(n).repeat(None).map_with_index(_EpochPermutation(n, seed))
