"""Input pipelines by modality: TFDS data sources read through Grain, and in-memory arrays.

`config.data.modality` picks a source module from MODALITIES; each provides
  load(config, workdir) -> Dataset       prepare the data if needed (TFDS download, or local files offline;
                                         text tokenizers go in the workdir) and open it
  synthetic_spec(config) -> spec         the spec without the data (bench's synthetic batches)
A Dataset is (spec, train_iterator(), eval_batches()): the spec is a frozen dict of facts derived from the
data (image shape, classes, vocabulary, sample rate, ...) that goes to the family's build(config, spec); the
config is never changed. Arrays held in memory (a stage's latents, made by jaxgen.stages) are a Dataset too
(jaxgen.data.arrays).

train_iterator() is an infinite, checkpointable Grain iterator of this process's share of each global
batch (dicts of numpy arrays with leading axis batch_size / process_count); eval_batches() a finite
iterable of this process's test batches. Each process keeps its rows of the same global batches
(ProcessRows), so a run's global batches are the same, row for row, on any number of processes.
A Dataset's optional wire (base.Wire) is what the trainer reads instead: the same batches in a compact form
(image datasets: uint8 pixels) and the jittable to_model that its jitted step applies on the device.
"""
import importlib

from jaxgen.data.base import Dataset, ProcessRows, Wire, make_spec, spec_from_json, spec_to_json  # noqa: F401
from jaxgen.errors import UserError

MODALITIES = {'image': 'jaxgen.data.images', 'text': 'jaxgen.data.text', 'sentences': 'jaxgen.data.sentences',
              'audio': 'jaxgen.data.audio', 'captioned': 'jaxgen.data.captions'}


def _source(config):
  modality = config.data.modality
  if modality not in MODALITIES:
    raise UserError(f'unknown data.modality {modality!r}; choose one of {sorted(MODALITIES)}')
  return importlib.import_module(MODALITIES[modality])


def load(config, workdir: str) -> Dataset:
  """The Dataset of config.data (prepared first where needed)."""
  return _source(config).load(config, workdir)


def synthetic_spec(config):
  """The spec of config.data's dataset as far as it is known without the data (for synthetic batches)."""
  return _source(config).synthetic_spec(config)
