"""Latent diffusion: the latent scale, stage one trained on demand, a frozen decoder, autoencoder checks."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from configs import ldm_fashion_mnist
from jaxgen import data, samples, stages
from jaxgen.errors import UserError
from jaxgen.families import ddpm, ldm, vae
from jaxgen.models.mlp_denoiser import MLPDenoiser
from jaxgen.models.vae import VAE
from jaxgen.train import checkpointing
from tests.support.mock_tfds import mock_images


def smoke_config(tmp_path):
  config = ldm_fashion_mnist.get_config('smoke')
  config.data.data_dir = str(tmp_path / 'tfds')
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """An LDM smoke run whose first stage (a VAE smoke run) the same call trains; (workdir, final state)."""
  tmp_path = tmp_path_factory.mktemp('ldm')
  workdir = str(tmp_path / 'ldm')
  with mock_images():
    state = stages.train_and_evaluate(smoke_config(tmp_path), workdir)
  return workdir, state


def test_stage_one_is_trained_and_recorded_in_the_spec_not_the_config(trained):
  workdir, _ = trained
  spec, config = checkpointing.load_spec(workdir), checkpointing.load_config(workdir)
  stage = spec.stages.autoencoder
  assert stage.workdir == os.path.join(workdir, 'autoencoder') and stage.step == 6
  assert checkpointing.load_config(stage.workdir).family == 'vae'
  assert spec.features.latent == (4,) and spec.modality == 'array' and spec.num_classes == 10
  _, _, _, ae_state = checkpointing.restore_run(stage.workdir, vae.build, 6)
  assert stage.fingerprint == checkpointing.fingerprint(ae_state)
  assert config.autoencoder_workdir is None and 'latent_scale' not in config.model   # the config as given


def test_latent_scale_makes_training_latents_unit_variance(trained):
  """One epoch of training batches is the whole (64-example) train split permuted: s z has unit variance."""
  workdir, _ = trained
  config = checkpointing.load_config(workdir)
  with mock_images():
    dataset = stages.resolve(config, workdir)
  batches = [next(it) for it in [dataset.train_iterator()] for _ in range(64 // config.batch_size)]
  z = np.concatenate([b['latent'] for b in batches])
  assert z.shape == (64, 4) and dataset.spec.latent_scale == checkpointing.load_spec(workdir).latent_scale
  assert abs(np.var(z, dtype=np.float64) - 1) < 1e-5
  labels = np.concatenate([b['label'] for b in batches])
  np.testing.assert_array_equal(np.sort(labels), np.sort(np.arange(64) % 10))   # every example once


def test_sampler_decodes_ddim_latents_with_the_frozen_vae_decoder(trained):
  """The jitted sampler = the VAE decoder (parameters as stage one saved them) applied to z / s for the
  latents z of DDPM's own DDIM sampler: the decoder took no part in stage two's training."""
  workdir, state = trained
  config, spec = checkpointing.load_config(workdir), checkpointing.load_spec(workdir)
  ae_config, ae_spec, ae_params = ldm.load_autoencoder(spec)       # checks the fingerprint: unchanged by stage two
  assert not set(state.params) & {'encoder', 'decoder', 'log_scale'}

  family = ddpm.diffusion_family(config, MLPDenoiser(
      out_dim=4, width=config.model.width, num_blocks=config.model.num_blocks, num_classes=10),
      (4,), batch_key='latent', batch_spec={}, sample_kind=samples.Images(), evaluators={}, decode=lambda _, z: z)
  labels = jnp.arange(6) % 10
  z = family.make_sampler(state)(jax.random.key(3), num=6, label=np.asarray(labels), guidance=0.0)
  logits, _ = vae.make_model(ae_config, ae_spec).apply({'params': ae_params}, z / spec.latent_scale,
                                                       method=VAE.decode)
  expected = np.asarray(jnp.round(jax.nn.sigmoid(logits) * 255)).astype(np.uint8)

  sampler = jaxgen.load_sampler(workdir)
  images = sampler(jax.random.key(3), num=6, label=np.asarray(labels), guidance=0.0)
  assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
  assert np.abs(images.astype(int) - expected).max() <= 1
  np.testing.assert_array_equal(images, sampler(jax.random.key(3), num=6, label=np.asarray(labels), guidance=0.0))


def test_sample_cli_with_label_and_guidance(trained, cli, tmp_path):
  out = tmp_path / 'grid.png'
  cli('sample.py', '--workdir', trained[0], '--num', '8', '--label', '3', '--guidance', '2', '--steps', '4',
      '--out', str(out), mock_data=False)
  assert out.stat().st_size > 0


def test_missing_or_changed_autoencoder_is_refused(trained, tmp_path):
  workdir, _ = trained
  copy = str(tmp_path / 'ldm')
  shutil.copytree(workdir, copy)
  spec = checkpointing.load_spec(copy)
  ae_dir = spec.stages.autoencoder.workdir        # the original run's autoencoder, outside the copy
  moved = ae_dir + '.moved'
  os.rename(ae_dir, moved)
  try:
    with pytest.raises(UserError, match='stage .* this run depends on is missing'):
      jaxgen.load_sampler(copy)
  finally:
    os.rename(moved, ae_dir)
  checkpoint = os.path.join(ae_dir, 'checkpoints', '6')
  os.rename(checkpoint, checkpoint + '.moved')
  try:
    with pytest.raises(UserError, match='no longer has checkpoint 6'):
      jaxgen.load_sampler(copy)
  finally:
    os.rename(checkpoint + '.moved', checkpoint)

  # Point the copy's recorded stage at another VAE of the same shape (another seed): refused by its fingerprint.
  other = str(tmp_path / 'other_vae')
  ae_config = checkpointing.load_config(ae_dir)
  ae_config.seed = 1
  with mock_images():
    stages.train_and_evaluate(ae_config, other)
  record = json.loads(data.spec_to_json(spec))
  record['stages']['autoencoder']['workdir'] = other
  with open(checkpointing.spec_path(copy), 'w') as f:
    json.dump(record, f)
  with pytest.raises(UserError, match='not the one this run was trained with'):
    jaxgen.load_sampler(copy)


def test_resumed_run_on_a_given_autoencoder_equals_the_straight_run(trained, tmp_path):
  workdir, straight = trained
  config = smoke_config(tmp_path)
  config.autoencoder_workdir = os.path.join(workdir, 'autoencoder')   # trained: used as is
  with mock_images():
    config.num_train_steps = 2
    stages.train_and_evaluate(config.copy_and_resolve_references(), str(tmp_path / 'run'))
    config.num_train_steps = 4
    resumed = stages.train_and_evaluate(config, str(tmp_path / 'run'))
  assert checkpointing.load_spec(str(tmp_path / 'run')) == checkpointing.load_spec(workdir)
  config.autoencoder_workdir = None      # re-running without the flag uses the autoencoder the run recorded
  with mock_images():
    again = stages.train_and_evaluate(config, str(tmp_path / 'run'))
  assert int(again.step) == 4
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bench_times_latent_training_and_sampling(trained):
  from jaxgen import bench
  config = ldm_fashion_mnist.get_config('smoke')
  config.autoencoder_workdir = os.path.join(trained[0], 'autoencoder')
  config.data.data_dir = checkpointing.load_config(trained[0]).data.data_dir
  with mock_images():
    records = bench.run_benchmarks(config, 'ldm:smoke', steps=2, warmup=1, sampler=True, num=4, repeats=1,
                                   ddim_steps=3, ancestral_num=2, emit=lambda line: None)
  train, ddim, ancestral = records
  assert train['examples_per_s'] > 0 and train['flops_per_step'] > 0
  assert (ddim['sampler'], ddim['steps'], ancestral['sampler']) == ('ddim', 3, 'ancestral')
  assert ddim['samples_per_s'] > 0 and ancestral['samples_per_s'] > 0


def test_cosine_schedule_with_eps_prediction_is_refused_without_x0_clipping(trained):
  """abar_T = 2.4e-9: the first DDIM step would scale eps errors by 2e4 (measured FD-FMNIST 32.6 vs 10.3)."""
  config, spec = checkpointing.load_config(trained[0]), checkpointing.load_spec(trained[0])
  config.model.beta_schedule = 'cosine'
  with pytest.raises(UserError, match='multiplies eps errors by 20291; use --config.model.prediction=v'):
    jaxgen.families.build(config, spec)
  config.model.prediction = 'v'
  jaxgen.families.build(config, spec)
