"""Runs of several stages, resolved above the trainer: latent diffusion's autoencoder (Rombach et al. 2022) and
text-to-image's text encoder.

`train_and_evaluate(config, workdir)` is what train.py runs. A config without stages trains on
jaxgen.data.load(config). A config with stages (its sub-configs named in STAGES: `autoencoder`, an image
autoencoder, and `text_encoder`, a BERT, unless model.text_encoder='joint' trains that with the denoiser) trains
on the latents of its images under the autoencoder:
  1. each stage is the workdir config.<name>_workdir (default <workdir>/<name>); when it holds no run yet,
     config.<name> is trained there first (by this same function, so a stage may have stages); a text encoder
     without a data.text_file reads the run's train captions, written to <its workdir>/captions.txt;
  2. it is restored and fingerprinted (jaxgen.train.checkpointing.fingerprint of its state);
  3. the autoencoder's encoder maps the train split to latents z (its posterior means), held in memory, beside
     the labels (data.modality=image) or the captions' tokens and mask from the text encoder's tokenizer
     (data.modality=captioned: image and caption of each example, in the split's order; a joint encoder's
     tokenizer is fitted to the train captions here and recorded in the spec);
  4. s = 1 / std(z) scales them to unit variance; batches are {'latent': s z, 'label': y} or
     {'latent': s z, 'tokens': (B, T) int32, 'mask': (B, T) bool}.
The run's data spec (DIR/spec.json) records each stage (workdir, step, fingerprint) and s: a resumed run,
jaxgen.load_state and the family use the recorded stages, and a missing or changed one is refused.
"""
import json
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from jaxgen import config as config_lib, data, families, files
from jaxgen.data import arrays, captions, images as image_source, tokenizers
from jaxgen.errors import UserError
from jaxgen.families import bert
from jaxgen.train import checkpointing, lock, trainer

STAGES = ('autoencoder', 'text_encoder')       # config keys of stage configs, in training order
NUM_PROMPTS = 64                                # test captions recorded for text-to-image previews


class Stage(NamedTuple):
  config: Any
  spec: Any
  family: Any
  state: Any
  record: dict                                  # what spec.json records: workdir, step, fingerprint


def train_and_evaluate(config, workdir: str):
  """Train `config` in `workdir` (its stages first), resuming from the newest intact checkpoint; the final state.
  The config's values are checked and the workdir locked (one writer) before anything is written: data
  preparation (tokenizers, token arrays) and the stages happen under the lock."""
  workdir = files.absolute(workdir)
  config_lib.validate(config, jax.device_count())
  with lock.hold(workdir):                    # re-entrant: trainer.train takes it again
    return trainer.train(config, workdir, resolve(config, workdir, train_missing=True))


def stage_names(config) -> list[str]:
  """The stages of `config` in training order (a joint text encoder, model.text_encoder='joint', is none)."""
  joint = config.model.get('text_encoder') == 'joint'
  return [name for name in STAGES if name in config and not (name == 'text_encoder' and joint)]


def resolve(config, workdir: str, train_missing: bool = False) -> data.Dataset:
  """The Dataset the run of `config` in `workdir` trains on; with train_missing, missing stages are trained."""
  if not stage_names(config):
    return data.load(config, workdir)
  previous = checkpointing.load_spec(workdir) if files.exists(checkpointing.spec_path(workdir)) else None
  stages = {name: _stage(config, workdir, name, previous, train_missing) for name in stage_names(config)}
  return _latents(config, workdir, stages, previous)


def spec(config, workdir: str):
  """The spec a run of `config` would train with, without its data where possible (bench): the data source's
  synthetic spec; for a config with stages the resolved one where every stage is given (config.<name>_workdir),
  else a synthetic one recording each stage without a workdir, with its config and synthetic spec, that the
  family initialises at random (jaxgen.train.checkpointing.stage_run)."""
  names = stage_names(config)
  if not names:
    return data.synthetic_spec(config)
  if all(config.get(f'{name}_workdir') for name in names):
    return resolve(config, workdir).spec
  return _synthetic_spec(config, names)


def _stage_data_config(stage_config, config):
  """The stage's config, reading its dataset where this run reads its data."""
  stage_config = stage_config.copy_and_resolve_references()
  stage_config.data.data_dir, stage_config.data.manual_dir = config.data.data_dir, config.data.manual_dir
  return stage_config


def _train_captions(config) -> list[str]:
  """Every caption of the train split (the dataset prepared first)."""
  image_source.prepare(config)
  return captions.captions_text(config, 'train')


def _stage(config, workdir: str, name: str, previous, train_missing: bool) -> Stage:
  """Stage `name` of the run: the recorded one, the given one (config.<name>_workdir) or <workdir>/<name>,
  trained first where it holds no run (train_missing), restored and checked."""
  recorded = previous.stages.get(name) if previous else None
  given = config.get(f'{name}_workdir') and files.absolute(config.get(f'{name}_workdir'))
  stage_dir = given or (recorded.workdir if recorded else os.path.join(workdir, name))
  if recorded is None and not (given and files.exists(checkpointing.config_path(stage_dir))):
    if not train_missing:
      raise UserError(f'the {name} of this run is not trained: train the run (python train.py ...), or give '
                      f'--config.{name}_workdir=DIR')
    stage = _stage_data_config(config[name], config)
    if name == 'text_encoder' and not stage.data.text_file:
      stage.data.text_file = os.path.join(stage_dir, 'captions.txt')
      files.write_atomic(stage.data.text_file, '\n'.join(_train_captions(config)))
    print(f'jaxgen: training the stage {name} ({stage.family}) in {stage_dir} (config.{name}, '
          f'{stage.num_train_steps} steps); --config.{name}_workdir=DIR uses a trained one')
    train_and_evaluate(stage, stage_dir)           # resumes an interrupted one; a no-op when trained
  step = recorded.step if recorded else checkpointing.manager(stage_dir, read_only=True).latest_step()
  (s_config, s_spec, s_family, s_state), digest = checkpointing.restore_stage(
      stage_dir, step, recorded.fingerprint if recorded else None, families.build, name)
  kind = 'image' if name == 'autoencoder' else 'text'
  if s_family.make_encoder is None or s_spec.modality != kind:
    raise UserError(f'{stage_dir} holds a {s_config.family} run on {s_spec.modality} data, not a {kind} encoder; '
                    f'config.{name}_workdir must name one')
  return Stage(s_config, s_spec, s_family, s_state, dict(workdir=stage_dir, step=int(step), fingerprint=digest))


def _text_spec(text_config, texts: list[str]):
  """The data spec a text source gives text_config (its tokenizer kind and special tokens) fitted to `texts`."""
  d = text_config.data
  tokenizer = tokenizers.train(d.tokenizer, '\n'.join(texts), d.bpe_vocab_size, tuple(d.special_tokens))
  return data.make_spec(modality='text', source='captions', vocab_size=tokenizer.vocab_size,
                        tokenizer=json.dumps(tokenizer.to_json()))


def _tokenize(config, stages: dict, previous):
  """(tokenize of the text encoder, the spec's facts of a joint encoder): the text stage's tokenizer, or one fitted
  to the train captions (recorded, so a resumed run keeps it)."""
  if 'text_encoder' in stages:
    text_config, text_spec, joint = stages['text_encoder'].config, stages['text_encoder'].spec, {}
  else:
    text_config = config.text_encoder
    text_spec = previous.text if previous and 'text' in previous else _text_spec(text_config, _train_captions(config))
    joint = {'text': text_spec.to_dict()}
  tokenizer = tokenizers.from_json(json.loads(text_spec.tokenizer))
  return bert.make_tokenize(tokenizer, text_config.model.block_size), joint


def _latents(config, workdir: str, stages: dict, previous) -> data.Dataset:
  ae = stages['autoencoder']
  to_float = image_source.to_pixel_range(tuple(ae.config.data.pixel_range))   # uint8 -> the autoencoder's range
  encode = ae.family.make_encoder(ae.state)

  def latent(batch):
    image = batch['image']
    return np.asarray(encode({'image': image} if image.dtype.kind == 'f' else to_float({'image': image})))

  source = config.copy_and_resolve_references()     # this run's batches of the autoencoder's images
  source.data.pixel_range = ae.config.data.pixel_range
  if config.data.modality == 'captioned':           # image-caption pairs: the captions tokenised
    tokenize, facts = _tokenize(config, stages, previous)
    keys, dataset = ('tokens', 'mask'), captions.load(source, workdir, tokenize)
    ordered = lambda c, split: captions.ordered_batches(c, split, tokenize)
    facts.update(name=config.data.name, image_shape=tuple(ae.spec.image_shape), prompts=(
        previous.prompts if previous else captions.captions_text(config, 'test', NUM_PROMPTS)))
  else:
    source.data.modality, source.data.name = 'image', ae.config.data.name
    keys, dataset, ordered = ('label',), data.load(source, workdir), image_source.ordered_batches
    facts = dict(num_classes=ae.spec.num_classes)
  in_order = source.copy_and_resolve_references()
  in_order.batch_size = 1000
  columns = list(zip(*[(latent(b), *(b[k] for k in keys)) for b in ordered(in_order, 'train')]))
  train = {k: np.concatenate(column) for k, column in zip(('latent', *keys), columns)}
  scale = previous.latent_scale if previous else float(1.0 / np.std(train['latent'], dtype=np.float64))
  train['latent'] *= np.float32(scale)                      # s z: unit variance

  def eval_batches():
    for b in dataset.eval_batches():
      yield {'latent': np.float32(scale) * latent(b), **{k: b[k] for k in keys}}

  spec = data.make_spec(
      modality='array', features={k: tuple(train[k].shape[1:]) for k in ('latent', 'tokens') if k in train},
      latent_scale=scale, stages={name: stage.record for name, stage in stages.items()}, **facts)
  return arrays.dataset(config, spec, train, eval_batches)


def _synthetic_spec(config, names: list[str]):
  """The spec of a run of `config` whose stages are untrained: random stages (spec's docstring), s = 1, no data."""
  ae_config = _stage_data_config(config.autoencoder, config)
  ae_spec = data.synthetic_spec(ae_config)
  ae = families.build(ae_config, ae_spec)
  image = jax.ShapeDtypeStruct((1, *ae_spec.image_shape), np.float32)
  z = jax.eval_shape(lambda state, x: ae.make_encoder(state)({'image': x}),
                     nn.meta.unbox(jax.eval_shape(ae.init, jax.random.key(0))), image)
  stages = {'autoencoder': (ae_config, ae_spec)}
  features, facts = {'latent': tuple(z.shape[1:])}, dict(num_classes=ae_spec.num_classes)
  if config.data.modality == 'captioned':
    text_config = _stage_data_config(config.text_encoder, config)
    stages['text_encoder'] = text_config, _text_spec(text_config, [])
    features['tokens'] = (text_config.model.block_size,)
    facts = dict(name=config.data.name, image_shape=tuple(ae_spec.image_shape), prompts=('',))
    if 'text_encoder' not in names:
      facts['text'] = stages['text_encoder'][1].to_dict()
  records = {name: dict(workdir=None, config=stages[name][0].to_dict(), spec=stages[name][1].to_dict())
             for name in names}
  return data.make_spec(modality='array', features=features, latent_scale=1.0, stages=records, **facts)
