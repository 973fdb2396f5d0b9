"""One writer per workdir: an fcntl lock on DIR/train.lock, held by process 0 of the training job.

The operating system releases a flock when its process ends, however it ends (kill -9 included), so a lock
is never stale: there is nothing to clean up and no timeout to guess. The file stays; while a run holds it,
it names the holder (host, pid, start time) for the refusal a second run prints, and it is emptied when
the holder lets go. Only process 0 locks: the other processes of a multi-host job are the same run, and
they stop with process 0 when it is refused. Readers (sample.py, jaxgen.eval, jaxgen.load_sampler) take no
lock: Orbax renames a checkpoint into place only when it is complete and config.json / spec.json are
replaced atomically, so a reader never sees a half-written file.

The lock is re-entrant within a process (a run that trains its stages first, or the CLI and the trainer
both holding it) and works on local file systems and on NFS (Linux emulates flock with POSIX locks there).
A cloud store (a gs://... workdir) has no locks: such a workdir is not locked (a warning says so) and one
writer per workdir is the user's to ensure.
"""
import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time

from jaxgen.errors import UserError

FILENAME = 'train.lock'
_held: dict[str, list] = {}          # real path of a lock file -> [fd, depth] for the locks this process holds


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def check_directory(workdir: str, flag: str = '--workdir') -> None:
  """A workdir that exists must be a directory (one line otherwise, before anything is read or written)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'{flag}={workdir} is a file, not a directory: give a directory (a new one, or a jaxgen run)')


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      info = json.loads(f.read() or 'null')
    return f'pid {info["pid"]} on host {info["host"]}, started {info["started"]}'
  except (OSError, ValueError, TypeError, KeyError):
    return 'a process that is still starting'


def _acquire(workdir: str) -> str:
  check_directory(workdir)
  path = os.path.realpath(lock_path(workdir))
  if path in _held:
    _held[path][1] += 1
    return path
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)   # no truncation: the holder's line stays as it is
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise
    raise UserError(f'{workdir} is being trained by another run ({_holder(path)}; lock {path}): wait for it '
                    'to finish or stop it, or use another --workdir; sample.py and jaxgen.eval may read it '
                    'meanwhile') from None
  info = dict(host=socket.gethostname(), pid=os.getpid(), started=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
  _held[path] = [fd, 1]
  return path


def _release(path: str) -> None:
  entry = _held[path]
  entry[1] -= 1
  if entry[1] == 0:
    del _held[path]
    os.ftruncate(entry[0], 0)         # no holder any more (the file itself stays: see the module docstring)
    os.close(entry[0])                # closing releases the flock


@contextlib.contextmanager
def hold(workdir: str):
  """Hold the workdir's lock (process 0) for the block; a UserError naming the holder if another run has it.
  Every process of a multi-host job calls this together; the others learn whether process 0 got it."""
  import jax
  from jaxgen import files
  if not files.is_local(workdir):
    if jax.process_index() == 0:
      print(f'warning: {workdir} is not on a local file system, so it is not locked against a second train.py: '
            'run one writer per workdir', file=sys.stderr)
    yield
    return
  workdir = os.path.abspath(workdir)
  path, refused = None, None
  if jax.process_index() == 0:
    try:
      path = _acquire(workdir)
    except UserError as e:
      refused = e
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils
    if int(multihost_utils.broadcast_one_to_all(np.int32(refused is not None))) and refused is None:
      refused = UserError(f'process 0 could not lock {lock_path(workdir)}: see its error')
  if refused is not None:
    raise refused
  try:
    yield
  finally:
    if path is not None:
      _release(path)
