"""What the command-line entry points share: one-line errors, configs by name, the persistent compilation
cache, multi-host start-up; and the installed commands (jaxgen-train, -sample, -bench, -eval, -export).

Persistent compilation cache: every command stores the XLA programs it compiles in JAX's persistent cache
(jax_compilation_cache_dir) and a restarted run (or the next run of the same shapes) loads them instead of
compiling again. The folder is JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/jaxgen/xla (~/.cache/jaxgen/xla);
--nocompilation_cache or JAX_ENABLE_COMPILATION_CACHE=false turn it off. JAX's own thresholds apply (programs
compiling in under JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, default 1 s, are not stored).

Configs by name: `--config NAME[:preset]` (no '.py', no '/') is the config shipped with jaxgen
(jaxgen.config.named_config_file), so the installed commands need no checkout.
"""
import errno
import gc
import os
import re
import sys

import jax
from absl import app, flags, logging

from jaxgen.errors import UserError

flags.DEFINE_bool('compilation_cache', True, 'keep compiled XLA programs in the persistent cache '
                  '(JAX_COMPILATION_CACHE_DIR, default ~/.cache/jaxgen/xla) and load them on the next run')
_COMPILES = {'/jax/compilation_cache/compile_requests_use_cache': 0, '/jax/compilation_cache/cache_hits': 0}


def run(main) -> None:
  """absl's app.run, but bad flags, a config that won't load and UserErrors print one line and exit 2;
  --help prints the command's docstring and flags and exits 0."""
  # The commands' heap is mostly imported modules and JAX's caches of traces and executables, which Python's
  # default thresholds (700, 10, 10) walk again and again: a warm smoke run spent 0.53 s in GC, 0.18 s with these.
  gc.set_threshold(50_000, 20, 20)
  if any(arg in ('--help', '-help', '-h', '--helpshort', '-?') for arg in sys.argv[1:]):
    print_help(main.__module__)
    sys.exit(0)
  try:
    sys.argv = with_named_configs(sys.argv)
    argv = flags.FLAGS(sys.argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      flags.FLAGS.config.keys()                 # config_flags loads lazily: surface its errors now
  except UserError as e:
    fail(str(e))
  except (flags.Error, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    fail(_last_line(e))
  try:
    check_flags()
  except UserError as e:
    fail(str(e))
  if not flags.FLAGS['verbosity'].present:     # Orbax/TFDS log INFO lines to stderr: keep the terminal readable
    logging.set_verbosity(logging.ERROR)
  if flags.FLAGS.compilation_cache:
    enable_compilation_cache()
  try:
    app.run(main, argv=sys.argv, flags_parser=lambda _: argv)   # flags are parsed once, above
  except UserError as e:
    fail(str(e))
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    fail(f'no space left on device writing {e.filename or "a file"}: free space and run the same command again')


def print_help(module: str) -> None:
  doc = (sys.modules[module].__doc__ or '').strip()
  print(f'{doc}\n\nflags:\n{flags.FLAGS.module_help(module)}\n{flags.FLAGS.module_help(__name__)}')


def with_named_configs(argv: list[str]) -> list[str]:
  """argv with `--config NAME[:preset]` (and `--config=NAME...`) replaced by the shipped config's file path."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      out += [arg, _config_path(argv[i + 1])]
      i += 2
      continue
    if arg.startswith(('--config=', '-config=')):
      flag, value = arg.split('=', 1)
      arg = f'{flag}={_config_path(value)}'
    out.append(arg)
    i += 1
  return out


def _config_path(value: str) -> str:
  name, colon, preset = value.partition(':')
  if '/' in name or os.sep in name or name.endswith('.py') or not name:
    return value
  from jaxgen import config as config_lib
  return config_lib.named_config_file(name) + colon + preset


def default_cache_dir() -> str:
  return os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'jaxgen', 'xla')


def enable_compilation_cache() -> str | None:
  """Turn on JAX's persistent compilation cache (see the module docstring) and count what it serves; its folder,
  or None where JAX_ENABLE_COMPILATION_CACHE=false."""
  if not jax.config.jax_enable_compilation_cache:
    return None
  directory = jax.config.jax_compilation_cache_dir or default_cache_dir()
  jax.config.update('jax_compilation_cache_dir', directory)
  if not getattr(enable_compilation_cache, 'listening', False):
    jax.monitoring.register_event_listener(_count_compile)
    enable_compilation_cache.listening = True
  return directory


def _count_compile(event: str, **kwargs) -> None:
  del kwargs
  if event in _COMPILES:
    _COMPILES[event] += 1


def compile_summary() -> str | None:
  """'XLA: H of N programs loaded from the compilation cache (DIR)', or None if nothing went through it."""
  requests, hits = _COMPILES.values()
  if not requests:
    return None
  directory = jax.config.jax_compilation_cache_dir
  return f'XLA: {hits} of {requests} programs loaded from the compilation cache ({directory})'


def check_flags() -> None:
  """Before any work (and before JAX starts): the config's values are in range and --workdir, where given,
  is not a file. The trainer checks the same again, with the device count (jaxgen.config.validate)."""
  from jaxgen import config as config_lib
  from jaxgen.train import lock
  if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
    config_lib.validate(flags.FLAGS.config)
  if 'workdir' in flags.FLAGS and flags.FLAGS.workdir:
    lock.check_directory(flags.FLAGS.workdir)


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _last_line(e: Exception) -> str:
  """The most specific line of a (possibly chained, multi-line) error message."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(e.args[0] if isinstance(e, KeyError) and e.args else e)   # KeyError's str() is a repr
  typo = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if typo:
    return f'unknown config key {typo.group(2)!r}; did you mean {typo.group(1)!r}?'
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  first = lines[0].strip('"') if lines else ''
  if isinstance(e, KeyError) or re.fullmatch(r"'[^']+'", first):
    return f'unknown config key {first}; see the config file for the valid keys'
  return lines[-1] if lines else type(e).__name__


# launchers' world sizes: one task of them is one process, and JAX's detection would pin it to one local device
SINGLE_TASK = {'SLURM_JOB_ID': 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE': 'OMPI_COMM_WORLD_SIZE'}


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
  """jax.distributed.initialize: with explicit flags, or else by JAX's own cluster detection (SLURM, Open MPI,
  Kubernetes, Cloud TPU VMs and pods, JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES/JAX_PROCESS_ID...).

  Telling "no cluster" without JAX's private modules: jax.distributed.initialize() stops at once with
  'coordinator_address should be defined' where it detects none; that ValueError, and only that one, means a
  single process (the run goes on undistributed). A single task of a SLURM step or an mpirun (world size 1)
  is not initialised either: JAX would limit it to the local device of its rank, hiding the others."""
  if coordinator:
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return
  if num_processes and num_processes > 1:
    raise UserError('--num_processes > 1 needs --coordinator HOST:PORT (and --process_id)')
  if any(marker in os.environ and os.environ.get(size, '1') == '1' for marker, size in SINGLE_TASK.items()):
    return
  try:
    jax.distributed.initialize()
  except ValueError as e:
    if not str(e).startswith('coordinator_address'):
      raise UserError(f'jax.distributed.initialize() found a cluster but not all of it ({e}): set '
                      '--coordinator, --num_processes and --process_id') from e


def _command(module: str):
  """An installed command: the module's main, run by cli.run, after its define_flags() where it has one
  (sample.py defines its flags when imported)."""
  def command() -> None:
    import importlib
    target = importlib.import_module(module)
    if hasattr(target, 'define_flags'):
      target.define_flags()
    run(target.main)
  command.__doc__ = f'The {module} command (console script).'
  return command


train = _command('jaxgen.train.__main__')
sample = _command('jaxgen.sample')
bench = _command('jaxgen.bench')
evaluate = _command('jaxgen.eval')
export = _command('jaxgen.export')
