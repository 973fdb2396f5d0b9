"""Latents of an image dataset under a trained VAE: the data of latent diffusion (configs with `autoencoder`).

setup trains the first-stage VAE when its workdir holds no run yet (config.autoencoder is its config), then
records in the config which autoencoder this run depends on (model.autoencoder_step and a fingerprint of
its parameters) and the latent scale factor s = 1 / std(z) over the encoded training set, so that s z has
unit variance (Rombach et al. 2022). The latents z = E[q(z|x)] (posterior means) of the train split are
encoded once per process start (seconds for Fashion-MNIST) and held in memory; batches are drawn from
them as images.train_iterator draws images (one global stream of global batches; process p reads its rows).
Batches: {'latent': float32 (B, D) = s z, 'label': int32 (B,)}.
"""
import functools
import hashlib
import os

import grain
import jax
import numpy as np

from jaxgen import data
from jaxgen.data import images
from jaxgen.errors import UserError
from jaxgen.train import checkpointing

_TRAIN_LATENTS = {}   # (autoencoder dir, step, dataset, data_dir) -> the encoded train split


def fingerprint(params) -> str:
  """sha256 of the parameters' names and bytes (16 hex digits): which autoencoder a run depends on."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
    digest.update(jax.tree_util.keystr(path).encode() + np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def load_autoencoder(config):
  """(VAE config, sampling (EMA) params) of config.autoencoder_workdir at model.autoencoder_step (None:
  latest), checked against model.autoencoder_fingerprint once the run has recorded one."""
  ae_dir, step = config.autoencoder_workdir, config.model.autoencoder_step
  if not os.path.exists(checkpointing.config_path(ae_dir)):
    raise UserError(f'the autoencoder {ae_dir} of this latent diffusion run is missing: restore it, or train a '
                    'new run (--config.autoencoder_workdir=DIR names a trained VAE workdir)')
  family = checkpointing.load_config(ae_dir).family
  if family != 'vae':
    raise UserError(f'{ae_dir} holds a {family} run; config.autoencoder_workdir must be a vae workdir')
  steps = checkpointing.manager(ae_dir, read_only=True).all_steps()
  if step is not None and step not in steps:
    raise UserError(f'the autoencoder {ae_dir} no longer has checkpoint {step}, which this run was trained with: '
                    'restore it (and raise that run\'s keep_checkpoints), or train a new run')
  ae_config, params, digest = _restored(ae_dir, max(steps) if step is None else step)
  expected = config.model.autoencoder_fingerprint
  if expected is not None and digest != expected:
    raise UserError(f'the autoencoder {ae_dir} at step {step} is not the one this run was trained with (fingerprint '
                    f'{digest}, recorded {expected}): restore it, or train a new run on it')
  return ae_config, params


@functools.lru_cache(maxsize=None)
def _restored(ae_dir: str, step: int):
  """(VAE config, sampling params, fingerprint) of a checkpoint: restored once per process, however many
  times setup, the iterators, evaluation and the family ask (load_autoencoder checks the files first)."""
  import jaxgen
  ae_config, _, state = jaxgen.load_state(ae_dir, step)
  params = state.sampling_params()
  return ae_config, params, fingerprint(params)


@functools.lru_cache(maxsize=None)
def _encoder(ae_dir: str, step: int):
  """x -> E[q(z|x)] of the checkpoint, jitted once per process (evaluation asks for it at every eval)."""
  from jaxgen.families import vae
  ae_config, params, _ = _restored(ae_dir, step)
  model = vae.make_model(ae_config)
  return jax.jit(lambda x: model.apply({'params': params}, x, method=model.encode)[0])


def train_latents(config) -> dict[str, np.ndarray]:
  """The train split encoded (unscaled posterior means), and its labels."""
  load_autoencoder(config)                   # checks the files and the fingerprint
  ae_dir, step = config.autoencoder_workdir, config.model.autoencoder_step
  key = (ae_dir, step, config.data.name, config.data.data_dir)
  if key not in _TRAIN_LATENTS:
    encode = _encoder(ae_dir, step)
    image_config = config.copy_and_resolve_references()
    image_config.batch_size = 1000
    batches = [(np.asarray(encode(b['image'])), b['label'])
               for b in images.ordered_batches(image_config, 'train')]
    _TRAIN_LATENTS[key] = {'latent': np.concatenate([z for z, _ in batches]),
                           'label': np.concatenate([y for _, y in batches])}
  return _TRAIN_LATENTS[key]


def setup(config, workdir: str) -> None:
  """Train the autoencoder if it has no run yet; fix the autoencoder keys of the config, or reuse those the
  existing run in `workdir` recorded (and check the autoencoder is still the same)."""
  previous = (checkpointing.load_config(workdir) if os.path.exists(checkpointing.config_path(workdir))
              else None)
  if previous is not None and not config.autoencoder_workdir:   # resuming: the autoencoder the run recorded
    ae_dir = previous.autoencoder_workdir
  else:
    ae_dir = os.path.abspath(config.autoencoder_workdir or os.path.join(workdir, 'autoencoder'))
  if previous is None and (not config.autoencoder_workdir or not os.path.exists(checkpointing.config_path(ae_dir))):
    from jaxgen.train import trainer
    with config.autoencoder.unlocked():     # stage one reads the dataset where this run does
      config.autoencoder.data.data_dir = config.data.data_dir
      config.autoencoder.data.manual_dir = config.data.manual_dir
    print(f'jaxgen: training the first-stage {config.autoencoder.family} in {ae_dir} (config.autoencoder, '
          f'{config.autoencoder.num_train_steps} steps); --config.autoencoder_workdir=DIR uses a trained one')
    trainer.train_and_evaluate(config.autoencoder, ae_dir)   # resumes an interrupted one; no-op when trained
  with config.unlocked():
    config.autoencoder_workdir = ae_dir
    if previous is not None:
      for key in ('autoencoder_step', 'autoencoder_fingerprint', 'latent_scale', 'latent_dim'):
        config.model[key] = previous.model[key]
    ae_config, params = load_autoencoder(config)
    config.data.name, config.data.pixel_range = ae_config.data.name, ae_config.data.pixel_range
    images.setup(config, workdir)           # the autoencoder's dataset, read from this run's data_dir
    if previous is None:
      config.model.autoencoder_step = int(checkpointing.manager(ae_dir, read_only=True).latest_step())
      config.model.autoencoder_fingerprint = fingerprint(params)
      z = train_latents(config)['latent']
      config.model.latent_scale = float(1.0 / np.std(z, dtype=np.float64))   # s z: unit variance
      config.model.latent_dim = int(z.shape[-1])


class _Gather(grain.transforms.Map):
  """Indices (B,) -> {'latent': scale * z[indices], 'label': labels[indices]}."""

  def __init__(self, latents, scale: float):
    self.latent, self.label, self.scale = latents['latent'], latents['label'], np.float32(scale)

  def map(self, indices):
    return {'latent': self.scale * self.latent[indices], 'label': self.label[indices]}


def train_iterator(config, workdir: str) -> grain.DatasetIterator:
  """Endless, checkpointable iterator of this process's scaled latent batches; every epoch a new permutation."""
  del workdir
  latents = train_latents(config)
  ds = grain.MapDataset.range(len(latents['label'])).shuffle(seed=config.seed).repeat(None)
  ds = ds.batch(config.batch_size, drop_remainder=True).map(data.ProcessRows(config))
  return iter(ds.map(_Gather(latents, config.model.latent_scale)).to_iter_dataset())


def eval_batches(config, workdir: str):
  """The image source's test batches, encoded and scaled."""
  load_autoencoder(config)
  encode = _encoder(config.autoencoder_workdir, config.model.autoencoder_step)
  for batch in images.eval_batches(config, workdir):
    yield {'latent': config.model.latent_scale * np.asarray(encode(batch['image'])), 'label': batch['label']}
