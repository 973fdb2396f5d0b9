import os
import subprocess
import sys

import pytest

# Tests compile many small XLA programs: skip XLA's backend optimisation (about half the compile time).
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, mock_data=True, check=True, timeout=300):
  """Run `python [tests/support/mock_tfds.py] SCRIPT ARGS` from the repo root; returns CompletedProcess."""
  prefix = [os.path.join(ROOT, 'tests', 'support', 'mock_tfds.py')] if mock_data else []
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, *prefix, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode:
    raise AssertionError(f'{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return proc


@pytest.fixture
def cli():
  return run_cli
