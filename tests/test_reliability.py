"""Faults and bad input: kills, preemption, NaNs, damaged checkpoints, bad sampler arguments, no pickle."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxgen
from configs import vae_fashion_mnist
from tests.support.mock_tfds import mock_images
from jaxgen import families
from jaxgen.errors import UserError
from jaxgen import stages
from jaxgen.train import trainer
from tests.conftest import ROOT

VAE = 'configs/vae_fashion_mnist.py:smoke'


def _config(tmp_path, steps, **overrides):
  config = vae_fashion_mnist.get_config('smoke')
  config.num_train_steps = steps
  config.data.data_dir = str(tmp_path / 'tfds')
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


def _train(config, workdir):
  with mock_images():
    return stages.train_and_evaluate(config, str(workdir))


def _params(workdir):
  _, _, state = jaxgen.load_state(str(workdir))
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def _spawn(workdir, tmp_path, *extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT)
  return subprocess.Popen(
      [sys.executable, 'tests/support/mock_tfds.py', 'train.py', '--config', VAE, '--workdir', str(workdir),
       f'--config.data.data_dir={tmp_path}/tfds', *extra],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(workdir, step, proc, timeout=240):
  """Block until metrics.jsonl has logged `step` (the run is warm and mid-training)."""
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  deadline = time.time() + timeout
  while time.time() < deadline:
    if path.exists() and any(json.loads(l).get('step', 0) >= step for l in path.read_text().splitlines()):
      return
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  raise TimeoutError(f'step {step} not reached')


LONG = ('--config.num_train_steps=150', '--config.log_every_steps=1', '--config.checkpoint_every_steps=7',
        '--config.eval_every_steps=1000', '--config.sample_every_steps=1000')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The final parameters of the 150-step run, trained without interruption."""
  tmp = tmp_path_factory.mktemp('straight')
  proc = _spawn(tmp / 'run', tmp, *LONG)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  return _params(tmp / 'run')


def test_sigkill_at_any_moment_resumes_bit_exact(tmp_path, uninterrupted):
  workdir = tmp_path / 'run'
  for kill_at in (5, 50, 110):                   # before any save, around async saves (every 7 steps), late
    proc = _spawn(workdir, tmp_path, *LONG)
    _wait_for_step(workdir, kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # only finished saves carry a step name; one cut off mid-write stays a tmp dir that resuming ignores
    assert all(d.isdigit() or 'tmp' in d for d in os.listdir(workdir / 'checkpoints'))
  proc = _spawn(workdir, tmp_path, *LONG)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  _assert_same(_params(workdir), uninterrupted)


def test_sigterm_checkpoints_and_says_how_to_resume(tmp_path, uninterrupted):
  workdir = tmp_path / 'run'
  proc = _spawn(workdir, tmp_path, *LONG)
  _wait_for_step(workdir, 30, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  stopped = re.search(r'error: stopped by SIGTERM at step (\d+) with a checkpoint saved; run the same command', err)
  assert stopped, err[-2000:]
  assert stopped.group(1) in os.listdir(workdir / 'checkpoints')
  proc = _spawn(workdir, tmp_path, *LONG)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  _assert_same(_params(workdir), uninterrupted)


def _inject_nan(monkeypatch, at_steps):
  """Make the family's train_step return NaN loss and NaN parameters at the given (0-based) trainer steps."""
  build = families.build

  def build_with_nan(config, workdir):
    family = build(config, workdir)
    bad_keys = [jax.random.key_data(jax.random.fold_in(trainer.run_keys(config.seed)['train'], s)) for s in at_steps]

    def train_step(state, batch, rng):
      new_state, metrics = family.train_step(state, batch, rng)
      bad = jax.numpy.any(jax.numpy.stack([jax.numpy.all(jax.random.key_data(rng) == k) for k in bad_keys]))
      poison = lambda x: jax.numpy.where(bad, jax.numpy.nan, x) if x.dtype.kind == 'f' else x
      return jax.tree.map(poison, new_state), {**metrics, 'loss': poison(metrics['loss'])}
    return family._replace(train_step=train_step)
  monkeypatch.setattr(families, 'build', build_with_nan)


def test_nan_stops_naming_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  config = _config(tmp_path, 12, log_every_steps=1, checkpoint_every_steps=3)
  _inject_nan(monkeypatch, [7])                           # the 8th step goes bad
  with pytest.raises(UserError, match=r'non-finite loss=nan at step 8; stopped without saving'):
    _train(config, tmp_path / 'run')
  assert sorted(d for d in os.listdir(tmp_path / 'run' / 'checkpoints')) == ['3', '6']
  assert all(np.isfinite(x).all() for x in _params(tmp_path / 'run'))


def test_skip_nonfinite_steps_instead_of_stopping(tmp_path, monkeypatch):
  config = _config(tmp_path, 6, log_every_steps=1, skip_nonfinite=True)
  _inject_nan(monkeypatch, [2])
  state = _train(config, tmp_path / 'run')
  records = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl') if '"skipped"' in l]
  assert [r['skipped'] for r in records] == [0, 0, 1, 0, 0, 0]
  assert int(state.step) == 5                            # the skipped update left the state as it was
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path):
  workdir = tmp_path / 'run'
  _train(_config(tmp_path, 6), workdir)
  straight = _params(workdir)
  for f in (workdir / 'checkpoints' / '6' / 'state').rglob('*'):
    if f.is_file() and 'ocdbt' in str(f):
      f.write_bytes(f.read_bytes()[:10])                  # truncate the array data
  _train(_config(tmp_path, 6), workdir)                   # resumes from 3, retrains to 6
  assert (workdir / 'checkpoints' / '6.corrupt').exists()
  _assert_same(_params(workdir), straight)


def test_keep_zero_checkpoints_is_refused(tmp_path):
  with pytest.raises(UserError, match='keep_checkpoints=0 would keep no checkpoint'):
    _train(_config(tmp_path, 2, keep_checkpoints=0), tmp_path / 'run')


@pytest.fixture(scope='module')
def trained_smoke(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('smoke')
  _train(_config(tmp, 3), tmp / 'run')
  return tmp / 'run'


@pytest.mark.parametrize('args, message', [
    (['--num=-1'], 'error: --num must be positive, got -1'),
    (['--steps=10'], 'error: --steps does not apply to this model; its options are --num'),
])
def test_impossible_sampler_arguments_are_one_line_errors(trained_smoke, cli, args, message):
  proc = cli('sample.py', f'--workdir={trained_smoke}', *args, mock_data=False, check=False)
  assert proc.returncode == 2 and proc.stderr.strip() == message


def test_sampling_an_untrained_workdir_is_a_one_line_error(tmp_path, cli):
  proc = cli('sample.py', f'--workdir={tmp_path}', mock_data=False, check=False)
  assert proc.returncode == 2 and proc.stderr.strip().startswith('error: ') and proc.stderr.count('\n') == 1


def test_no_pickle_anywhere_in_jaxgen():
  forbidden = re.compile(r'\bimport (c?pickle|dill|cloudpickle)\b|allow_pickle\s*=\s*True|pickle\.loads?\(')
  offenders = [str(p) for p in pathlib.Path(ROOT, 'jaxgen').rglob('*.py') if forbidden.search(p.read_text())]
  offenders += [s for s in ('train.py', 'sample.py') if forbidden.search(pathlib.Path(ROOT, s).read_text())]
  assert offenders == []
