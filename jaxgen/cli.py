"""What the command-line entry points share: one-line errors and multi-host start-up."""
import errno
import os
import re
import sys

import jax
from absl import app, flags, logging

from jaxgen.errors import UserError


def run(main) -> None:
  """absl's app.run, but bad flags, a config that won't load and UserErrors print one line and exit 2."""
  try:
    argv = flags.FLAGS(sys.argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      flags.FLAGS.config.keys()                 # config_flags loads lazily: surface its errors now
  except (flags.Error, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    fail(_last_line(e))
  try:
    check_flags()
  except UserError as e:
    fail(str(e))
  if not flags.FLAGS['verbosity'].present:     # Orbax/TFDS log INFO lines to stderr: keep the terminal readable
    logging.set_verbosity(logging.ERROR)
  try:
    app.run(main, argv=sys.argv, flags_parser=lambda _: argv)   # flags are parsed once, above
  except UserError as e:
    fail(str(e))
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    fail(f'no space left on device writing {e.filename or "a file"}: free space and run the same command again')


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


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
  """jax.distributed.initialize: explicit flags, or automatic on TPU VMs / SLURM; a no-op for one process."""
  if coordinator:
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif num_processes and num_processes > 1:
    raise UserError('--num_processes > 1 needs --coordinator HOST:PORT (and --process_id)')
  elif cluster_detected():
    jax.distributed.initialize()      # JAX reads coordinator, process count and id from the cluster


def cluster_detected() -> bool:
  """A task of a multi-task SLURM job step, or a Cloud TPU VM (pod workers find each other through the TPU
  metadata): where jax.distributed.initialize() configures itself. One SLURM task or no cluster: False."""
  from jax._src import clusters     # JAX's own detection; no public API tells a TPU VM or a SLURM step
  if clusters.SlurmCluster.is_env_present():
    return int(os.environ['SLURM_NTASKS']) > 1
  return clusters.GceTpuCluster.is_env_present() or clusters.GkeTpuCluster.is_env_present()
