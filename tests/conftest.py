import atexit
import contextlib
import gc
import io
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings

import pytest

# Tests compile many small XLA programs: skip XLA's backend optimisation (about half the compile time) and use
# the elemental emitters, not the newer fusion emitters (a quarter less compile time on XLA:CPU).
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false')
# ... and many of them again (a resumed run recompiles the uninterrupted run's step; the processes tests start compile
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


def run_cli(*args, mock_data=True, check=True, timeout=300, process=False):
  """`python [tests/support/mock_tfds.py] SCRIPT|-m MODULE ARGS` from the repo root; returns CompletedProcess.

  In this process unless `process` (runpy, with sys.argv, stdout and stderr swapped and absl's flags reset
  after; no timeout): the command's own code from its argv to its exit status, without a new interpreter's ~3 s
  of imports. What only a process shows (signals, the installed scripts, locks between processes) starts one."""
  if process:
    prefix = [os.path.join(ROOT, 'tests', 'support', 'mock_tfds.py')] if mock_data else []
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, *prefix, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
  else:
    proc = _run_in_process(args, mock_data)
  if check and proc.returncode:
    raise AssertionError(f'{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return proc


def _run_in_process(args, mock_data):
  from absl import flags, logging
  from jaxgen import cli                           # its --compilation_cache stays defined
  from tests.support.mock_tfds import mock_images
  defined, verbosity, argv, cwd = set(flags.FLAGS), logging.get_verbosity(), sys.argv, os.getcwd()
  # JAX is running here already, so jax.distributed.initialize() would refuse: these runs are single-process
  init_distributed, cli.init_distributed = cli.init_distributed, lambda *args: None
  out, err = io.StringIO(), io.StringIO()
  module = args[1] if args[0] == '-m' else None
  sys.argv = [module or args[0], *args[2 if module else 1:]]
  os.chdir(ROOT)
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
        mock_images() if mock_data else contextlib.nullcontext():
      if module:
        with warnings.catch_warnings():          # tests import it too: runpy warns of running a second copy
          warnings.filterwarnings('ignore', f"'{module}' found in sys.modules", RuntimeWarning)
          runpy.run_module(module, run_name='__main__', alter_sys=True)
      else:
        runpy.run_path(os.path.join(ROOT, args[0]), run_name='__main__')
    returncode = 0
  except SystemExit as e:
    returncode = e.code if isinstance(e.code, int) else int(e.code is not None)
    if isinstance(e.code, str):
      err.write(e.code + '\n')
  except Exception:                                # what an uncaught error prints and exits with
    err.write(traceback.format_exc())
    returncode = 1
  finally:
    sys.argv, cli.init_distributed = argv, init_distributed
    os.chdir(cwd)
    for name in set(flags.FLAGS) - defined:        # the command's flags: the next command defines its own
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    logging.set_verbosity(verbosity)
  return subprocess.CompletedProcess(args, returncode, out.getvalue(), err.getvalue())


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
