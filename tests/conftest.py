import atexit
import gc
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# Tests compile many small XLA programs: skip XLA's backend optimisation (about half the compile time) and use
# the elemental emitters, not the newer fusion emitters (a quarter less compile time on XLA:CPU).
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false')
# ... and many of them again (a resumed run recompiles the uninterrupted run's step; CLI subprocesses compile
# what the test process did): one persistent compilation cache for the session and its subprocesses, new for
# every session so no test reads what an older jaxgen compiled.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='jaxgen-tests-xla-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# No Python source frames in the programs' MLIR locations: lowering the DDPM smoke step takes 0.66 s, not 0.76.
os.environ.setdefault('JAX_TRACEBACK_IN_LOCATIONS_LIMIT', '0')
# A test process's heap is mostly JAX's caches of traces and executables, which every full collection walks
# (0.3-0.5 s each): collect less often (test_t2i.py: 23 full collections, 6.9 s, at Python's (700, 10, 10); 2,
# 1.4 s, here; all of GC 8.2 s -> 2.6 s of the file's ~115 s).
gc.set_threshold(50_000, 20, 20)

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


# pytest-xdist's --dist loadfile hands whole files to the workers in collection order (--no-loadscope-reorder: not
# by test count): the slowest files first (longest processing time first, costs measured on 2 cores), so that
# none of them starts when the other worker is nearly done.
SLOWEST_FIRST = ('test_t2i.py', 'test_reliability.py', 'test_scale.py', 'test_stylegan.py', 'test_bench.py',
                 'test_audio.py', 'test_ddpm.py', 'test_text_vae.py', 'test_bert.py', 'test_ldm.py',
                 'test_reliability_cli.py', 'test_gpt.py', 'test_interop.py', 'test_gan.py', 'test_trainer.py',
                 'test_data_images.py', 'test_vae.py')


def pytest_collection_modifyitems(items):
  rank = lambda item: SLOWEST_FIRST.index(item.path.name) if item.path.name in SLOWEST_FIRST else len(SLOWEST_FIRST)
  items.sort(key=rank)      # stable: the order within a file is kept
