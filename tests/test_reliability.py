"""Faults and bad input: kills, preemption, NaNs, damaged checkpoints, full disks, values out of range,
interrupted dataset preparation, bad sampler arguments, no pickle. (Refusals through the CLIs: test_reliability_cli.)"""
import errno
import gzip
import importlib
import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxgen
from configs import vae_fashion_mnist
from tests.support.mock_tfds import mock_images
from jaxgen import config as jaxgen_config, families
from jaxgen.errors import UserError
from jaxgen import stages
from jaxgen.train import trainer
from tests.conftest import ROOT, run_cli

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


def _train_args(workdir, tmp_path, *extra):
  """train.py's argv for the VAE smoke run in `workdir` on the mock data under `tmp_path`."""
  return ('train.py', '--config', VAE, '--workdir', str(workdir), f'--config.data.data_dir={tmp_path}/tfds', *extra)


def _spawn(workdir, tmp_path, *extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT)
  return subprocess.Popen([sys.executable, 'tests/support/mock_tfds.py', *_train_args(workdir, tmp_path, *extra)],
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


LONG = ('--config.num_train_steps=40', '--config.log_every_steps=1', '--config.checkpoint_every_steps=7',
        '--config.eval_every_steps=1000', '--config.sample_every_steps=1000')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The final parameters of the 40-step run, trained without interruption (the same command, in this process)."""
  tmp = tmp_path_factory.mktemp('straight')
  run_cli(*_train_args(tmp / 'run', tmp, *LONG))
  return _params(tmp / 'run')


def test_sigkill_at_any_moment_resumes_bit_exact(tmp_path, uninterrupted):
  workdir = tmp_path / 'run'
  for kill_at in (5, 25):                        # before any save; mid-run, around async saves (every 7 steps)
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
  _wait_for_step(workdir, 15, proc)
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
  with pytest.raises(UserError, match=r'^keep_checkpoints=0 is out of range; valid: > 0 \(set --config.keep_checkpoints\)$'):
    _train(_config(tmp_path, 2, keep_checkpoints=0), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def _shipped(name, preset='smoke'):
  return importlib.import_module(f'configs.{name}').get_config(preset)


@pytest.mark.parametrize('name, key, value, line', [
    ('ddpm_fashion_mnist', 'model.p_uncond', 1.5,
     'model.p_uncond=1.5 is out of range; valid: [0, 1] (set --config.model.p_uncond)'),
    ('gpt_shakespeare_char', 'model.dropout', -0.1,
     'model.dropout=-0.1 is out of range; valid: [0, 1] (set --config.model.dropout)'),
    ('vae_text_shakespeare', 'model.word_dropout', 2.0,
     'model.word_dropout=2.0 is out of range; valid: [0, 1] (set --config.model.word_dropout)'),
    ('gpt_shakespeare_char', 'sampling.top_p', 0.0,
     'sampling.top_p=0.0 is out of range; valid: (0, 1] (set --config.sampling.top_p)'),
    ('gan_fashion_mnist', 'optim.ema_decay', -0.5,
     'optim.ema_decay=-0.5 is out of range; valid: [0, 1) (set --config.optim.ema_decay)'),
    ('ddpm_fashion_mnist', 'sample_every_steps', -3,
     'sample_every_steps=-3 is out of range; valid: > 0 (set --config.sample_every_steps)'),
    ('vae_fashion_mnist', 'batch_size', 0, 'batch_size=0 is out of range; valid: > 0 (set --config.batch_size)'),
    ('vae_fashion_mnist', 'num_train_steps', 0,
     'num_train_steps=0 is out of range; valid: > 0 (set --config.num_train_steps)'),
    ('ldm_fashion_mnist', 'autoencoder.learning_rate', 0.0,        # a stage's config by the same rules
     'autoencoder.learning_rate=0.0 is out of range; valid: > 0 (set --config.autoencoder.learning_rate)'),
    ('vae_fashion_mnist', 'mesh.data', 3, 'mesh.data=3 x mesh.fsdp=1 does not multiply to the 1 devices; valid: '
     'sizes whose product is 1, or -1 for one of them (set --config.mesh.data=-1)'),
    ('vae_fashion_mnist', 'mesh.fsdp', -1, 'mesh.data=-1 x mesh.fsdp=-1 is out of range; valid: positive sizes, '
     'at most one -1 (all remaining devices) (set --config.mesh.data=-1)'),
])
def test_values_are_refused_by_key_name_with_their_valid_range(name, key, value, line):
  config = _shipped(name)
  *parents, leaf = key.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(UserError) as e:
    jaxgen_config.validate(config, device_count=1)
  assert str(e.value) == line


def test_every_shipped_config_and_preset_is_in_range():
  for path in sorted(pathlib.Path(ROOT, 'configs').glob('*.py')):
    for preset in ('default', 'cpu', 'smoke'):
      try:
        config = _shipped(path.stem, preset)
      except ValueError:                           # a config without that preset
        continue
      assert jaxgen_config.value_errors(config) == [], (path.stem, preset)


def test_mesh_that_does_not_fit_the_devices_is_refused_before_anything_is_written(tmp_path):
  config = _config(tmp_path, 2)
  config.mesh.fsdp = 2
  with pytest.raises(UserError, match=r'^mesh.data=-1 x mesh.fsdp=2 does not multiply to the 1 devices'):
    _train(config, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_full_disk_stops_keeps_the_previous_checkpoint_and_rerun_resumes_exactly(tmp_path, monkeypatch):
  """A save failing with ENOSPC (faked in the data-iterator item's write, inside Orbax's save) stops the run
  with one line; checkpoint 3 survives even with keep_checkpoints=1; the rerun cleans the cut-off save's
  tmp dir, resumes from 3, ends with the state the failed run had at step 6, and logs no step twice."""
  from grain._src.python.checkpoint import handler
  from jaxgen.train import checkpointing
  config = _config(tmp_path, 6, keep_checkpoints=1)
  workdir = tmp_path / 'run'
  write, save, at_save = handler.CheckpointHandler.save, checkpointing.save, {}

  def full_disk_at_step_6(self, directory, *args, **kwargs):
    if '/6.orbax-checkpoint-tmp/' in str(directory) + '/':
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f'{directory}/process_0-of-1.json')
    return write(self, directory, *args, **kwargs)

  def recording_save(mngr, step, state, data_iterator):
    at_save[step] = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]
    return save(mngr, step, state, data_iterator)

  monkeypatch.setattr(handler.CheckpointHandler, 'save', full_disk_at_step_6)
  monkeypatch.setattr(checkpointing, 'save', recording_save)
  with pytest.raises(UserError) as e:
    _train(config, workdir)
  assert re.fullmatch(r'no space left on device writing \S+/checkpoints/6\.orbax-checkpoint-tmp/\S+; training '
                      r'stopped and the last complete checkpoint \(3\) is intact: free space and run the same '
                      r'command again to resume', str(e.value)), str(e.value)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6.orbax-checkpoint-tmp']
  _assert_same(_params_at(workdir, 3), at_save[3])

  monkeypatch.undo()                                # space freed
  _train(config, workdir)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['6']      # the cut-off save's tmp dir is gone
  _assert_same(_params(workdir), at_save[6])
  rows = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  logged = [(r['step'], 'loss' in r) for r in rows]
  assert sorted(logged) == sorted(set(logged)) and [s for s, train in logged if train] == [2, 4, 6]


def _params_at(workdir, step):
  _, _, state = jaxgen.load_state(str(workdir), step)
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_metrics_rows_past_the_restored_step_and_torn_lines_are_dropped(tmp_path):
  from jaxgen.train.writers import RunWriter
  rows = [dict(step=2, loss=1.0), dict(step=4, loss=0.5), {'step': 4, 'eval/loss': 0.7}, dict(step=6, loss=0.2)]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 8, "lo')
  writer = RunWriter(str(tmp_path), resume_step=4)     # a kill -9 after logging 6 and half of 8; checkpoint 4
  writer.scalars(6, dict(loss=0.25))
  writer.close()
  assert [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')][:3] == rows[:3]
  assert [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')] == [2, 4, 4, 6]


_DIE_WHILE_PREPARING = """
import os, signal, socket, sys
from jaxgen.config import base_config
from jaxgen.data import images, local_fashion_mnist
generate = local_fashion_mnist.LocalFashionMNIST._generate_examples
def generate_then_die(self, *args, **kwargs):
  for i, example in enumerate(generate(self, *args, **kwargs)):
    if i == 3:
      os.kill(os.getpid(), signal.SIGKILL)          # kill -9 in the middle of writing the train split
    yield example
local_fashion_mnist.LocalFashionMNIST._generate_examples = generate_then_die
socket.create_connection = lambda *a, **k: (_ for _ in ()).throw(OSError())
config = base_config()
config.data.data_dir, config.data.manual_dir = sys.argv[1], sys.argv[2]
images.load(config, '')
"""


def _write_idx(path, array):
  header = struct.pack(f'>I{array.ndim}I', 0x0800 | array.ndim, *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


def test_kill_9_while_preparing_a_dataset_then_rerun_prepares_cleanly(tmp_path, monkeypatch, capsys):
  from jaxgen.config import base_config
  from jaxgen.data import images, local_fashion_mnist
  manual, data_dir = tmp_path / 'manual', tmp_path / 'tfds'
  manual.mkdir()
  rng = np.random.default_rng(0)
  for split, n in [('train', 12), ('test', 6)]:
    for name, array in zip(local_fashion_mnist.FILES[split], (rng.integers(0, 256, (n, 28, 28), np.uint8),
                                                              rng.integers(0, 10, n, np.uint8))):
      _write_idx(manual / name, array)
  proc = subprocess.run([sys.executable, '-c', _DIE_WHILE_PREPARING, str(data_dir), str(manual)], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  leftovers = [d for d in os.listdir(data_dir / 'fashion_mnist') if d.startswith('incomplete.')]
  assert len(leftovers) == 1 and not (data_dir / 'fashion_mnist' / '3.0.1').exists()

  config = base_config()
  config.batch_size = 4
  config.data.data_dir, config.data.manual_dir = str(data_dir), str(manual)
  monkeypatch.setattr(images.socket, 'create_connection', lambda *a, **k: (_ for _ in ()).throw(OSError()))
  dataset = images.load(config, '')                 # the rerun
  assert f'jaxgen: removing {data_dir}/fashion_mnist/{leftovers[0]}, left by an interrupted preparation of ' \
         'fashion_mnist' in capsys.readouterr().out
  assert not [d for d in os.listdir(data_dir / 'fashion_mnist') if d.startswith('incomplete.')]
  assert dataset.spec.image_shape == (28, 28, 1)
  assert next(dataset.train_iterator())['image'].shape == (4, 28, 28, 1)      # and training can proceed


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
