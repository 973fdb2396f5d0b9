"""Reliability through the command lines: one writer per workdir, damaged or foreign files, values that cannot
be right, eval's --num / --batch. Every refusal is one `error: ` line on stderr, exit status 2, and leaves the
workdir byte-identical. Refusals that need no data run without the TFDS mock and stop before JAX compiles."""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import ldm_fashion_mnist, vae_fashion_mnist
from jaxgen import evaluators, families, stages
from jaxgen.data import base
from jaxgen.errors import UserError
from jaxgen.train import checkpointing, lock
from tests.conftest import ROOT
from tests.support.mock_tfds import mock_images

VAE = 'configs/vae_fashion_mnist.py:smoke'


def files(directory) -> dict:
  """Every file and folder under `directory`: sha256 of each file's bytes, 'dir' for each folder."""
  root = pathlib.Path(directory)
  if root.is_file():
    return {'.': hashlib.sha256(root.read_bytes()).hexdigest()}
  return {str(p.relative_to(root)): 'dir' if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*'))}


def refused(cli, *args, workdir, mock_data=False, process=False) -> str:
  """Run a CLI that must refuse: exit 2, stderr ending in one `error: ` line, `workdir` unchanged; that line."""
  before = files(workdir)
  proc = cli(*args, mock_data=mock_data, check=False, process=process)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines and lines[-1].startswith('error: '), proc.stderr[-3000:]
  assert [l for l in lines if l.startswith('error: ')] == lines[-1:] and 'Traceback' not in proc.stderr
  assert files(workdir) == before
  return lines[-1]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A VAE smoke run of 3 steps (checkpoint 3), trained once for the module; tests work on copies."""
  tmp = tmp_path_factory.mktemp('trained')
  config = vae_fashion_mnist.get_config('smoke')
  config.num_train_steps, config.data.data_dir = 3, str(tmp / 'tfds')
  with mock_images():
    stages.train_and_evaluate(config, str(tmp / 'run'))
  return tmp / 'run'


@pytest.fixture
def workdir(trained, tmp_path):
  shutil.copytree(trained, tmp_path / 'run')
  return tmp_path / 'run'


# ------------------------------------------------------------------------------------------- one writer

def test_second_writer_is_refused_naming_the_holder(workdir, cli, tmp_path):
  with lock.hold(str(workdir)):                    # this test process is the first run
    holder = json.loads((workdir / 'train.lock').read_text())
    line = refused(cli, 'train.py', '--config', VAE, '--workdir', str(workdir),
                   f'--config.data.data_dir={tmp_path}/tfds', workdir=workdir, mock_data=True,
                   process=True)               # the lock is re-entrant within one process
  assert holder == dict(host=socket.gethostname(), pid=os.getpid(), started=holder['started'])
  assert line == (f'error: {workdir} is being trained by another run (pid {os.getpid()} on host '
                  f'{socket.gethostname()}, started {holder["started"]}; lock {os.path.realpath(workdir)}/train.lock)'
                  ': wait for it to finish or stop it, or use another --workdir; sample.py and jaxgen.eval may '
                  'read it meanwhile')
  assert (workdir / 'train.lock').read_text() == ''  # the holder let go: the file stays, naming no one


def test_kill_9_never_leaves_a_stale_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from jaxgen.train import lock\n'
       'with lock.hold(sys.argv[1]):\n  print("held", flush=True); time.sleep(600)', str(tmp_path)],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT), stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == 'held\n'
  with pytest.raises(UserError, match=f'is being trained by another run \\(pid {holder.pid} '):
    with lock.hold(str(tmp_path)):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with lock.hold(str(tmp_path)):                   # the OS released it with the process
    assert json.loads((tmp_path / 'train.lock').read_text())['pid'] == os.getpid()


def test_readers_need_no_lock(workdir):
  import jaxgen
  with lock.hold(str(workdir)):                    # a run is training here
    images = jaxgen.load_sampler(str(workdir))(jax.random.key(0), num=2)
  assert images.shape == (2, 28, 28, 1)


# ------------------------------------------------------------------------------------------- damaged and foreign files

def test_workdir_that_is_a_file_is_refused(tmp_path, cli):
  path = tmp_path / 'notes.txt'
  path.write_text('not a run\n')
  for script in ('train.py', 'sample.py'):
    args = ('--config', VAE) if script == 'train.py' else ()
    assert refused(cli, script, *args, '--workdir', str(path), workdir=path) == (
        f'error: --workdir={path} is a file, not a directory: give a directory (a new one, or a jaxgen run)')


def test_truncated_config_json_is_refused_by_train_and_sample(workdir, cli, tmp_path):
  config = workdir / 'config.json'
  config.write_bytes(config.read_bytes()[:100])
  try:
    json.loads(config.read_text())
  except ValueError as e:
    reason = str(e)
  expected = (f"error: {config} cannot be read as JSON ({reason}): the run's config is damaged; restore it from "
              'a copy, or use a new --workdir')
  assert refused(cli, 'sample.py', '--workdir', str(workdir), workdir=workdir) == expected
  assert refused(cli, 'train.py', '--config', VAE, '--workdir', str(workdir),
                 f'--config.data.data_dir={tmp_path}/tfds', workdir=workdir, mock_data=True) == expected


def test_config_and_spec_of_another_program_are_refused(workdir):
  before = files(workdir)
  (workdir / 'config.json').write_text('{"name": "my-experiment", "lr": 0.1}')
  with pytest.raises(UserError) as e:
    checkpointing.load_config(str(workdir))
  assert str(e.value) == (f"{workdir}/config.json is not a jaxgen config (no 'family', 'batch_size', 'model', "
                          "'data'): another program wrote it; use a new --workdir")
  (workdir / 'spec.json').write_text('[1, 2, 3]')
  with pytest.raises(UserError, match=r"spec.json is not a jaxgen data spec \(no 'modality'\)"):
    checkpointing.load_spec(str(workdir))
  (workdir / 'spec.json').write_text('{"modality": "ima')
  with pytest.raises(UserError, match=r"spec.json cannot be read as JSON .*: the run's data spec is damaged"):
    checkpointing.load_spec(str(workdir))
  assert set(files(workdir)) == set(before)


def test_latent_diffusion_whose_stage_is_gone_is_refused(workdir, tmp_path, cli):
  """An LDM run records its autoencoder (spec.json); sampling it after the autoencoder's files are gone is
  one line: the whole stage deleted, or its checkpoint's files."""
  ldm = tmp_path / 'ldm'
  ldm.mkdir()
  config = ldm_fashion_mnist.get_config('smoke')
  (ldm / 'config.json').write_text(json.dumps(json.loads(config.to_json_best_effort()), indent=2))
  stage = dict(workdir=str(tmp_path / 'gone'), step=3, fingerprint='0' * 16)
  spec = base.make_spec(modality='array', features={'latent': (4,)}, num_classes=10, latent_scale=1.0,
                        stages={'autoencoder': stage})
  (ldm / 'spec.json').write_text(base.spec_to_json(spec))
  assert refused(cli, 'sample.py', '--workdir', str(ldm), workdir=ldm) == (
      f'error: the stage {tmp_path}/gone this run depends on is missing: restore it, or train a new run '
      '(--config.autoencoder_workdir=DIR names a trained one)')

  stage['workdir'] = str(workdir)                  # the stage is there, its checkpoint's arrays are not
  (ldm / 'spec.json').write_text(base.spec_to_json(base.make_spec(**{**spec.to_dict(), 'stages': {'autoencoder': stage}})))
  shutil.rmtree(workdir / 'checkpoints' / '3' / 'state')
  with pytest.raises(UserError, match=f'^the stage {workdir} this run depends on cannot be read at checkpoint 3 '
                     r'\(.*\): restore its files, or train a new run$'):
    checkpointing.restore_stage(str(workdir), 3, None, families.build)


# ------------------------------------------------------------------------------------------- values refused up front

@pytest.mark.parametrize('override, line', [
    ('--config.learning_rate=-1', 'error: learning_rate=-1.0 is out of range; valid: > 0 (set --config.learning_rate)'),
    ('--config.optim.ema_decay=1.0',
     'error: optim.ema_decay=1.0 is out of range; valid: [0, 1) (set --config.optim.ema_decay)'),
    ('--config.checkpoint_every_steps=0',
     'error: checkpoint_every_steps=0 is out of range; valid: > 0 (set --config.checkpoint_every_steps)'),
])
def test_values_that_cannot_be_right_are_refused_before_any_work(workdir, cli, override, line):
  assert refused(cli, 'train.py', '--config', VAE, '--workdir', str(workdir), override, workdir=workdir) == line


def test_refused_values_leave_no_workdir_behind(tmp_path, cli):
  refused(cli, 'train.py', '--config', VAE, '--workdir', str(tmp_path / 'new'), '--config.batch_size=0',
          workdir=tmp_path)
  assert not (tmp_path / 'new').exists()


# ------------------------------------------------------------------------------------------- eval --num / --batch

def test_eval_with_num_below_the_default_batch_works(workdir, cli, tmp_path):
  """--num 64 with the default --batch 250 (and a test split of 32 under the mock): one smaller batch."""
  cache = tmp_path / 'classifiers'
  model = evaluators._model('fashion_mnist', 10)
  params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))['params']
  evaluators.save_classifier(str(cache), 'fashion_mnist', params, dict(
      dataset='fashion_mnist', architecture=evaluators._architecture('fashion_mnist'), num_classes=10,
      image_shape=[28, 28, 1], test_accuracy=0.0))
  proc = cli('jaxgen/eval.py', '--workdir', str(workdir), '--num', '64', '--cache_dir', str(cache),
             '--iwae_k', '2', '--iwae_examples', '16')
  record = json.loads((workdir / 'eval.jsonl').read_text().splitlines()[-1])
  assert record['num'] == 64 and record['num_real_test'] == 32 and np.isfinite(record['fd']), proc.stdout


def test_eval_batch_below_one_is_one_line(workdir):
  from jaxgen import eval as eval_lib
  with pytest.raises(UserError, match=r'^--batch=0 must be >= 1 \(images per sampler and classifier call\)$'):
    eval_lib.evaluate_workdir(str(workdir), 64, batch=0)
