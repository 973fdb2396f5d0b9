"""The generic trainer end to end on the VAE smoke config: outputs, resume, bad input."""
import json
import os

import jax
import numpy as np
import pytest

import jaxgen
from configs import vae_fashion_mnist
from jaxgen.errors import UserError
from tests.conftest import ROOT
from tests.support.mock_tfds import mock_images
from jaxgen import stages

VAE = 'configs/vae_fashion_mnist.py:smoke'


def _train(workdir, steps, **overrides):
  config = vae_fashion_mnist.get_config('smoke')
  config.num_train_steps = steps
  config.data.data_dir = str(workdir) + '_tfds'
  for k, v in overrides.items():
    setattr(config, k, v)
  with mock_images():
    return stages.train_and_evaluate(config, str(workdir))


def test_resume_is_bit_exact(tmp_path):
  straight = _train(tmp_path / 'straight', 6)
  _train(tmp_path / 'resumed', 3)
  resumed = _train(tmp_path / 'resumed', 6)
  assert sorted(os.listdir(tmp_path / 'resumed' / 'checkpoints')) == ['3', '6']
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_smoke_run_writes_outputs_and_samples(tmp_path, cli):
  workdir = tmp_path / 'run'
  cli('train.py', '--config', VAE, '--workdir', str(workdir), f'--config.data.data_dir={tmp_path}/tfds')
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6']
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  train = [r for r in records if 'loss' in r]
  assert [r['step'] for r in train] == [2, 4, 6] and all(np.isfinite(r['loss']) for r in train)
  assert any('eval/iwae_nll' in r for r in records)
  assert os.path.exists(workdir / 'samples' / 'step_000006.png')
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  assert json.load(open(workdir / 'config.json'))['family'] == 'vae'

  relative = os.path.relpath(workdir, ROOT)        # Orbax wants absolute paths: jaxgen makes them so
  cli('sample.py', '--workdir', relative, '--num', '9', '--out', str(tmp_path / 'grid.png'), mock_data=False)
  assert os.path.exists(tmp_path / 'grid.png')
  sampler = jaxgen.load_sampler(str(workdir))
  images = sampler(jax.random.key(0), num=5)
  assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, sampler(jax.random.key(0), num=5))
  with pytest.raises(UserError, match=r'has no checkpoint 5; it has \[3, 6\]'):
    jaxgen.load_sampler(str(workdir), step=5)


def test_unknown_config_key_is_one_line_error(tmp_path, cli):
  proc = cli('train.py', '--config', VAE, '--workdir', str(tmp_path), '--config.model.latnet_dim=3',
             mock_data=False, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: unknown config key 'latnet_dim'; did you mean 'latent_dim'?"


def test_bad_value_type_is_one_line_error(tmp_path, cli):
  proc = cli('train.py', '--config', VAE, '--workdir', str(tmp_path), '--config.batch_size=big',
             mock_data=False, check=False)
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and 'batch_size' in proc.stderr


def test_workdir_of_another_model_is_refused(tmp_path, cli):
  workdir = str(tmp_path / 'run')
  _train(workdir, 3)
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  proc = cli('train.py', '--config', VAE, '--workdir', workdir, '--config.model.latent_dim=8',
             f'--config.data.data_dir={tmp_path}/tfds', check=False)
  last = proc.stderr.strip().splitlines()[-1]     # (the TFDS mock logs a warning before it)
  assert proc.returncode == 2
  assert last.startswith('error: ') and 'holds a run of a different model (model.latent_dim: 4 -> 8)' in last
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
