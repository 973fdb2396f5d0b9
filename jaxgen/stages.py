"""Runs of several stages, resolved above the trainer: latent diffusion's autoencoder (Rombach et al. 2022).

`train_and_evaluate(config, workdir)` is what train.py runs. A config without stages trains on
jaxgen.data.load(config). A config with `autoencoder` (the stage-one config) trains on the latents of its
image dataset under that autoencoder:
  1. stage one is the workdir config.autoencoder_workdir (default <workdir>/autoencoder); when it holds no
     run yet, config.autoencoder is trained there first (by this same function, so a stage may have stages);
  2. it is restored and fingerprinted (jaxgen.train.checkpointing.fingerprint of its state);
  3. its family's encoder maps the train split to latents z (VAE: posterior means), held in memory;
  4. s = 1 / std(z) scales them to unit variance; batches are {'latent': s z, 'label': y}.
The run's data spec (DIR/spec.json) records the stage (workdir, step, fingerprint) and s: a resumed run,
jaxgen.load_state and the family use the recorded stage, and a missing or changed one is refused.
"""
import os

import jax
import numpy as np

from jaxgen import config as config_lib, data, families, files
from jaxgen.data import arrays, images as image_source
from jaxgen.errors import UserError
from jaxgen.train import checkpointing, lock, trainer


def train_and_evaluate(config, workdir: str):
  """Train `config` in `workdir` (its stages first), resuming from the newest intact checkpoint; the final state.
  The config's values are checked and the workdir locked (one writer) before anything is written: data
  preparation (tokenizers, token arrays) and stage one happen under the lock."""
  workdir = files.absolute(workdir)
  config_lib.validate(config, jax.device_count())
  with lock.hold(workdir):                    # re-entrant: trainer.train takes it again
    return trainer.train(config, workdir, resolve(config, workdir, train_missing=True))


def resolve(config, workdir: str, train_missing: bool = False) -> data.Dataset:
  """The Dataset the run of `config` in `workdir` trains on; with train_missing, missing stages are trained."""
  if 'autoencoder' not in config:
    return data.load(config, workdir)
  return _latents(config, workdir, train_missing)


def spec(config, workdir: str):
  """The spec a run of `config` would train with, without its data where possible (bench): the data
  source's synthetic spec, or for a config with stages the resolved one (its stages must be trained)."""
  if 'autoencoder' not in config:
    return data.synthetic_spec(config)
  return resolve(config, workdir).spec


def _stage_data_config(stage_config, config):
  """The stage's config, reading its dataset where this run reads its data."""
  stage_config = stage_config.copy_and_resolve_references()
  stage_config.data.data_dir, stage_config.data.manual_dir = config.data.data_dir, config.data.manual_dir
  return stage_config


def _latents(config, workdir: str, train_missing: bool) -> data.Dataset:
  previous = checkpointing.load_spec(workdir) if files.exists(checkpointing.spec_path(workdir)) else None
  recorded = previous.stages.autoencoder if previous else None
  given = config.autoencoder_workdir and files.absolute(config.autoencoder_workdir)
  ae_dir = given or (recorded.workdir if recorded else os.path.join(workdir, 'autoencoder'))
  if recorded is None and not (given and files.exists(checkpointing.config_path(ae_dir))):
    if not train_missing:
      raise UserError('the autoencoder of this latent diffusion run is not trained: train the run '
                      '(python train.py ...), or give --config.autoencoder_workdir=DIR')
    stage = _stage_data_config(config.autoencoder, config)
    print(f'jaxgen: training the first stage ({stage.family}) in {ae_dir} (config.autoencoder, '
          f'{stage.num_train_steps} steps); --config.autoencoder_workdir=DIR uses a trained one')
    train_and_evaluate(stage, ae_dir)           # resumes an interrupted one; a no-op when trained
  step = recorded.step if recorded else checkpointing.manager(ae_dir, read_only=True).latest_step()
  (ae_config, ae_spec, ae_family, ae_state), digest = checkpointing.restore_stage(
      ae_dir, step, recorded.fingerprint if recorded else None, families.build)
  if ae_family.make_encoder is None or ae_spec.modality != 'image':
    raise UserError(f'{ae_dir} holds a {ae_config.family} run on {ae_spec.modality} data, not an image '
                    'autoencoder; config.autoencoder_workdir must be a vae workdir')

  image_config = config.copy_and_resolve_references()      # this run's batches of the autoencoder's images
  image_config.data.modality, image_config.data.name = 'image', ae_config.data.name
  image_config.data.pixel_range = ae_config.data.pixel_range
  images = data.load(image_config, workdir)
  encode = ae_family.make_encoder(ae_state)
  in_order = image_config.copy_and_resolve_references()
  in_order.batch_size = 1000
  train_z, train_y = zip(*[(np.asarray(encode(b)), b['label']) for b in image_source.ordered_batches(in_order, 'train')])
  train = {'latent': np.concatenate(train_z), 'label': np.concatenate(train_y)}
  scale = previous.latent_scale if previous else float(1.0 / np.std(train['latent'], dtype=np.float64))
  train['latent'] *= np.float32(scale)                      # s z: unit variance

  def eval_batches():
    for b in images.eval_batches():
      yield {'latent': np.float32(scale) * np.asarray(encode(b)), 'label': b['label']}

  spec = data.make_spec(
      modality='array', features={'latent': tuple(train['latent'].shape[1:])}, num_classes=ae_spec.num_classes,
      latent_scale=scale, stages={'autoencoder': dict(workdir=ae_dir, step=int(step),
                                                      fingerprint=digest)})
  return arrays.dataset(config, spec, train, eval_batches)
