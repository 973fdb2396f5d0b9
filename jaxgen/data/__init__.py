"""Input pipelines: TFDS data sources read through Grain, one module per kind of data.

Every source module provides three functions, dispatched on `config.data.name`:
  setup(config, workdir)        make sure the data is prepared (TFDS download, or local files offline) and
                                fill derived config keys (e.g. image shape, vocab size; tokenizers go in workdir)
  train_iterator(config, workdir)  infinite, checkpointable Grain iterator of this process's share of each
                                global batch: dicts of numpy arrays with leading axis batch_size / process_count
  eval_batches(config, workdir) finite iterable of this process's test batches (same layout)

Each process keeps its rows of the same global batches (ProcessRows), so a run's global batches are the
same, row for row, on any number of processes.

A config with an `autoencoder` (latent diffusion) reads its image dataset's latents under that autoencoder
(jaxgen.data.latents) instead.

Batches: images {'image': float32 (B, H, W, C) scaled to config.data.pixel_range, 'label': int32 (B,)};
text {'tokens': int32 (B, block_size + 1)}; latents {'latent': float32 (B, D), 'label': int32 (B,)}.
"""
import importlib

import grain
import jax

from jaxgen.errors import UserError

SOURCES = {
    'fashion_mnist': 'jaxgen.data.images',
    'mnist': 'jaxgen.data.images',
    'cifar10': 'jaxgen.data.images',
    'tiny_shakespeare': 'jaxgen.data.text',
    'text_file': 'jaxgen.data.text',
}


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


def _source(config):
  if 'autoencoder' in config:
    return importlib.import_module('jaxgen.data.latents')
  if config.data.name not in SOURCES:
    raise UserError(f'unknown data.name {config.data.name!r}; choose one of {sorted(SOURCES)}')
  return importlib.import_module(SOURCES[config.data.name])


def setup(config, workdir: str) -> None:
  _source(config).setup(config, workdir)


def train_iterator(config, workdir: str):
  return _source(config).train_iterator(config, workdir)


def eval_batches(config, workdir: str):
  return _source(config).eval_batches(config, workdir)
