"""Latent diffusion: the latent scale, stage one trained on demand, a frozen decoder, autoencoder checks."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from configs import ldm_fashion_mnist
from jaxgen.data import latents
from jaxgen.errors import UserError
from jaxgen.families import ddpm, vae
from jaxgen.models.mlp_denoiser import MLPDenoiser
from jaxgen.models.vae import VAE
from jaxgen.train import checkpointing, trainer
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
    state = trainer.train_and_evaluate(smoke_config(tmp_path), workdir)
  return workdir, state


def test_stage_one_is_trained_and_recorded(trained):
  workdir, _ = trained
  config = checkpointing.load_config(workdir)
  assert config.autoencoder_workdir == os.path.join(workdir, 'autoencoder')
  assert checkpointing.load_config(config.autoencoder_workdir).family == 'vae'
  assert config.model.autoencoder_step == 6 and config.model.latent_dim == 4
  _, ae_params = latents.load_autoencoder(config)
  assert config.model.autoencoder_fingerprint == latents.fingerprint(ae_params)


def test_latent_scale_makes_training_latents_unit_variance(trained):
  config = checkpointing.load_config(trained[0])
  z = latents.train_latents(config)['latent']
  assert z.shape == (64, 4)
  assert abs(np.var(config.model.latent_scale * z, dtype=np.float64) - 1) < 1e-5
  batch = next(latents.train_iterator(config, trained[0]))
  scaled = config.model.latent_scale * z                       # every batch row is a scaled training latent
  nearest = np.argmin(np.square(batch['latent'][:, None] - scaled[None]).sum(-1), axis=1)
  np.testing.assert_allclose(batch['latent'], scaled[nearest], rtol=1e-6)
  np.testing.assert_array_equal(batch['label'], latents.train_latents(config)['label'][nearest])


def test_sampler_decodes_ddim_latents_with_the_frozen_vae_decoder(trained):
  """The jitted sampler = the VAE decoder (parameters as stage one saved them) applied to z / s for the
  latents z of DDPM's own DDIM sampler: the decoder took no part in stage two's training."""
  workdir, state = trained
  config = checkpointing.load_config(workdir)
  ae_config, ae_params = latents.load_autoencoder(config)
  assert latents.fingerprint(ae_params) == config.model.autoencoder_fingerprint   # unchanged by stage two
  assert not set(state.params) & {'encoder', 'decoder', 'log_scale'}

  family = ddpm.diffusion_family(config, MLPDenoiser(
      out_dim=4, width=config.model.width, num_blocks=config.model.num_blocks, num_classes=10),
      (4,), batch_key='latent', decode=lambda _, z: z)
  labels = jnp.arange(6) % 10
  z = family.make_sampler(state)(jax.random.key(3), num=6, label=np.asarray(labels), guidance=0.0)
  logits, _ = vae.make_model(ae_config).apply({'params': ae_params}, z / config.model.latent_scale,
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
  config = checkpointing.load_config(copy)
  ae_dir = config.autoencoder_workdir          # the original run's autoencoder, outside the copy
  moved = ae_dir + '.moved'
  os.rename(ae_dir, moved)
  try:
    with pytest.raises(UserError, match='autoencoder .* is missing'):
      jaxgen.load_sampler(copy)
  finally:
    os.rename(moved, ae_dir)
  checkpoint = os.path.join(ae_dir, 'checkpoints', str(config.model.autoencoder_step))
  os.rename(checkpoint, checkpoint + '.moved')
  try:
    with pytest.raises(UserError, match='no longer has checkpoint 6'):
      jaxgen.load_sampler(copy)
  finally:
    os.rename(checkpoint + '.moved', checkpoint)

  # Point the copy at another VAE of the same shape (another seed): refused by its fingerprint.
  other = str(tmp_path / 'other_vae')
  ae_config = checkpointing.load_config(ae_dir)
  ae_config.seed = 1
  with mock_images():
    trainer.train_and_evaluate(ae_config, other)
  config.autoencoder_workdir = other
  checkpointing.save_config(copy, config)
  with pytest.raises(UserError, match='not the one this run was trained with'):
    jaxgen.load_sampler(copy)


def test_resumed_run_on_a_given_autoencoder_equals_the_straight_run(trained, tmp_path):
  workdir, straight = trained
  config = smoke_config(tmp_path)
  config.autoencoder_workdir = os.path.join(workdir, 'autoencoder')   # trained: used as is
  with mock_images():
    config.num_train_steps = 2
    trainer.train_and_evaluate(config.copy_and_resolve_references(), str(tmp_path / 'run'))
    config.num_train_steps = 4
    resumed = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert checkpointing.load_config(str(tmp_path / 'run')).model.latent_scale == config.model.latent_scale
  config.autoencoder_workdir = None      # re-running without the flag uses the autoencoder the run recorded
  with mock_images():
    again = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
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
  assert ddim['images_per_s'] > 0 and ancestral['images_per_s'] > 0


def test_cosine_schedule_with_eps_prediction_is_refused_without_x0_clipping(trained):
  """abar_T = 2.4e-9: the first DDIM step would scale eps errors by 2e4 (measured FD-FMNIST 32.6 vs 10.3)."""
  config = checkpointing.load_config(trained[0])
  config.model.beta_schedule = 'cosine'
  with pytest.raises(UserError, match='multiplies eps errors by 20291; use --config.model.prediction=v'):
    jaxgen.families.build(config, trained[0])
  config.model.prediction = 'v'
  jaxgen.families.build(config, trained[0])
