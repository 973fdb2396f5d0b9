"""Orbax checkpoints of (train state, Grain iterator position) and the run's config.json.

DIR/checkpoints/<step>/{state,data}: the state as a sharded pytree (restorable onto any mesh), the data
iterator through grain.checkpoint. Saves are async and atomic (Orbax writes to a tmp dir and renames).
"""
import glob
import json
import os
import sys

import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from jaxgen.errors import UserError

# Config sub-trees that fix the shapes of a checkpoint: a run may change anything else when resumed.
STRUCTURAL_KEYS = ('family', 'model')


def config_path(workdir: str) -> str:
  return os.path.join(workdir, 'config.json')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = config_path(workdir)
  if not os.path.exists(path):
    raise UserError(f'{workdir} has no config.json: not a jaxgen workdir (train one with train.py --workdir)')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _as_plain(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _flat(d, prefix=''):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flat(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


def save_config(workdir: str, config) -> None:
  """Write config.json; refuse if the workdir holds a run whose structural keys differ."""
  new = _as_plain(config)
  if os.path.exists(config_path(workdir)):
    old = _as_plain(load_config(workdir))
    old_flat, new_flat = dict(_flat(old)), dict(_flat(new))
    changed = sorted(k for k in old_flat.keys() | new_flat.keys()
                     if k.split('.')[0] in STRUCTURAL_KEYS and old_flat.get(k) != new_flat.get(k))
    if changed:
      diffs = ', '.join(f'{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}' for k in changed[:5])
      raise UserError(f'{workdir} holds a run of a different model ({diffs}); '
                      'use a new --workdir or the original config')
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = config_path(workdir) + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(new, f, indent=2)
    os.replace(tmp, config_path(workdir))


def manager(workdir: str, keep: int | None = None, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only, enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                               item_names=('state', 'data'))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  """Start an async save of step `step`; Orbax finishes it in the background."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
  """Restore the state (onto the shardings in `abstract_state`) and, if given, the iterator in place."""
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  positions = os.path.join(mngr.directory, str(step), 'data')
  own_position = os.path.join(positions, f'process_{jax.process_index()}-of-{jax.process_count()}.json')
  if data_iterator is not None and os.path.exists(own_position):
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError) as e:
    raise UserError(f'checkpoint {mngr.directory}/{step} does not match this model ({_first_line(e)}); '
                    'use a new --workdir or the config it was trained with') from e
  if data_iterator is not None and 'data' not in items:
    # Written by another number of processes. Every process's position is the same (all read their rows
    # of the same global batches), so process 0's continues the run here.
    written = glob.glob(os.path.join(positions, 'process_0-of-*.json'))
    if not written:
      raise UserError(f'checkpoint {step} holds no data-iterator position; use a new --workdir')
    with open(written[0]) as f:
      data_iterator.set_state(json.load(f))
  return restored.state


def restore_newest_intact(mngr: ocp.CheckpointManager, abstract_state, data_iterator):
  """(step, state) from the newest checkpoint that restores; unreadable newer ones are renamed aside.

  A checkpoint cut off mid-write never appears (Orbax renames a finished save into place); one damaged
  later (truncated, deleted files) fails to restore: it is moved to `<step>.corrupt` with a warning and
  the previous one is used. If none restores, the newest error is raised as a UserError.
  """
  first_error = None
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      state = restore(mngr, step, abstract_state, data_iterator)
    except Exception as e:  # pylint: disable=broad-except  (any failure to read means: try an older one)
      first_error = first_error or e
      continue
    bad_steps = [s for s in steps if s > step]
    if bad_steps and jax.process_index() == 0:     # one process moves them; the others wait for it
      for bad in bad_steps:
        aside = os.path.join(mngr.directory, f'{bad}.corrupt')
        os.replace(os.path.join(mngr.directory, str(bad)), aside)
        print(f'warning: checkpoint {bad} could not be restored ({_first_line(first_error)}); '
              f'moved it to {aside} and resumed from {step}', file=sys.stderr)
    if bad_steps:
      multihost_utils.sync_global_devices('jaxgen: damaged checkpoints moved aside')
    mngr.reload()
    return step, state
  if isinstance(first_error, UserError):
    raise first_error
  raise UserError(f'no checkpoint in {mngr.directory} can be restored ({_first_line(first_error)}); '
                  'use a new --workdir') from first_error


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
