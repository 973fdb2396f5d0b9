"""What every data source shares: the Dataset bundle, data specs, and each process's rows of a global batch."""
import json
from typing import Callable, Iterable, Iterator, NamedTuple

import grain
import jax
import ml_collections

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
