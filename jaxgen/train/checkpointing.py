"""Orbax checkpoints of (train state, Grain iterator position), the run's config.json and spec.json.

DIR/checkpoints/<step>/{state,data}: the state as a sharded pytree (restorable onto any mesh), the data
iterator through grain.checkpoint. Saves are async and atomic (Orbax writes to a tmp dir and renames).
DIR/config.json is the config as given; DIR/spec.json the data spec its data source (or stage) derived.
Local or gs://... workdirs: the JSON files, listings and moves go through jaxgen.files / etils.epath.
"""
import hashlib
import json
import os
import sys

import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxgen import files
from jaxgen.data import base
from jaxgen.errors import UserError
from jaxgen.train import sharding, state as train_state

# Config sub-trees that fix the shapes of a checkpoint: a run may change anything else when resumed.
STRUCTURAL_KEYS = ('family', 'model')


def config_path(workdir: str) -> str:
  return os.path.join(workdir, 'config.json')


def _read_json(path: str, what: str):
  """The JSON in `path`; a damaged file (truncated, not UTF-8, not JSON, unreadable) is one UserError."""
  try:
    return json.loads(files.read_text(path))
  except (ValueError, OSError) as e:     # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise UserError(f'{path} cannot be read as JSON ({_first_line(e)}): the {what} is damaged; restore it from a '
                    'copy, or use a new --workdir') from None


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = config_path(workdir)
  if not files.exists(path):
    raise UserError(f'{workdir} has no config.json: not a jaxgen workdir (train one with train.py --workdir)')
  plain = _read_json(path, 'run\'s config')
  missing = [k for k in ('family', 'batch_size', 'model', 'data') if not isinstance(plain, dict) or k not in plain]
  if missing or not isinstance(plain['family'], str) or not all(isinstance(plain[k], dict) for k in ('model', 'data')):
    raise UserError(f'{path} is not a jaxgen config (no {", ".join(repr(k) for k in missing) or "valid family/model/data"}'
                    '): another program wrote it; use a new --workdir')
  return ml_collections.ConfigDict(plain)


def _as_plain(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _flat(d, prefix=''):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flat(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


def check_config(workdir: str, config) -> None:
  """Refuse (reading only) if the workdir holds a run whose structural keys differ, or a damaged config.json."""
  new = _as_plain(config)
  if files.exists(config_path(workdir)):
    old = _as_plain(load_config(workdir))
    old_flat, new_flat = dict(_flat(old)), dict(_flat(new))
    changed = sorted(k for k in old_flat.keys() | new_flat.keys()
                     if k.split('.')[0] in STRUCTURAL_KEYS and old_flat.get(k) != new_flat.get(k))
    if changed:
      diffs = ', '.join(f'{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}' for k in changed[:5])
      raise UserError(f'{workdir} holds a run of a different model ({diffs}); '
                      'use a new --workdir or the original config')


def save_config(workdir: str, config) -> None:
  """Write config.json (atomically); refuse if the workdir holds a run whose structural keys differ."""
  check_config(workdir, config)
  if jax.process_index() == 0:
    _write_atomic(config_path(workdir), json.dumps(_as_plain(config), indent=2))


def spec_path(workdir: str) -> str:
  return os.path.join(workdir, 'spec.json')


def _write_atomic(path: str, text: str) -> None:
  files.write_atomic(path, text)


def load_spec(workdir: str) -> ml_collections.FrozenConfigDict:
  path = spec_path(workdir)
  if not files.exists(path):
    raise UserError(f'{workdir} has no spec.json: it was written by a jaxgen before data specs; retrain it in a '
                    'new --workdir (python train.py --config ... --workdir NEW)')
  plain = _read_json(path, 'run\'s data spec')
  if not isinstance(plain, dict) or not isinstance(plain.get('modality'), str):
    raise UserError(f"{path} is not a jaxgen data spec (no 'modality'): another program wrote it; "
                    'use a new --workdir')
  return base.spec_from_json(json.dumps(plain))


def check_spec(workdir: str, spec) -> None:
  """Refuse (reading only) if the workdir holds a run on other data (another vocabulary, image shape, ...)."""
  if files.exists(spec_path(workdir)):
    old, new = json.loads(base.spec_to_json(load_spec(workdir))), json.loads(base.spec_to_json(spec))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
      raise UserError(f'{workdir} holds a run on other data ({", ".join(changed[:5])} differ); '
                      'use a new --workdir or the original data')


def save_spec(workdir: str, spec) -> None:
  """Write spec.json (atomically); refuse if the workdir holds a run on other data."""
  check_spec(workdir, spec)
  if jax.process_index() == 0:
    _write_atomic(spec_path(workdir), base.spec_to_json(spec))


def fingerprint(tree) -> str:
  """sha256 of a pytree's leaf paths and bytes (16 hex digits): which trained state a later stage depends on."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    digest.update(jax.tree_util.keystr(path).encode() + np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def restore_run(workdir: str, build, step: int | None = None):
  """(config, spec, family, state) of a trained workdir at its latest (or the given) checkpoint, on the local
  devices; `build(config, spec) -> Family` (jaxgen.families.build, or one family's build)."""
  config = load_config(workdir)
  spec = load_spec(workdir)
  family = build(config, spec)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  mngr = manager(workdir, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise UserError(f'{workdir} has no checkpoint yet: train first (python train.py --workdir {workdir} ...)')
  if step not in mngr.all_steps():
    raise UserError(f'{workdir} has no checkpoint {step}; it has {sorted(mngr.all_steps())}')
  try:
    state = restore(mngr, step, train_state.abstract_state(family, mesh, config.seed))
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (damaged or deleted checkpoint files)
    raise UserError(f'checkpoint {mngr.directory}/{step} cannot be read ({_first_line(e)}): pick an older one '
                    f'of {sorted(mngr.all_steps())}, or rerun train.py (it moves a damaged one aside)') from e
  return config, spec, family, state


_RESTORED = {}   # (workdir, step) -> (restore_run, fingerprint): one restore per process


def _restore_once(workdir: str, step: int, build):
  """(restore_run, fingerprint) of a checkpoint, once per process however often the stage layer and families
  ask, whichever `build` they pass (the registry's or the stage family's own build, the same Family)."""
  key = (os.path.realpath(workdir), step)
  if key not in _RESTORED:
    run = restore_run(workdir, build, step)
    _RESTORED[key] = run, fingerprint(run[3])
  return _RESTORED[key]


def restore_stage(workdir: str, step: int, expected_fingerprint: str | None, build, name: str = 'autoencoder'):
  """restore_run of a stage `name` a later run depends on, checked: the workdir and checkpoint exist and the
  state's fingerprint is the one recorded (when one is). Returns ((config, spec, family, state), fingerprint)."""
  if not files.exists(config_path(workdir)):
    raise UserError(f'the stage {workdir} this run depends on is missing: restore it, or train a new run '
                    f'(--config.{name}_workdir=DIR names a trained one)')
  if step not in manager(workdir, read_only=True).all_steps():
    raise UserError(f'the stage {workdir} no longer has checkpoint {step}, which this run was trained with: '
                    'restore it (and raise that run\'s keep_checkpoints), or train a new run')
  try:
    run, digest = _restore_once(workdir, step, build)
  except Exception as e:  # pylint: disable=broad-except  (files of the stage deleted or damaged)
    raise UserError(f'the stage {workdir} this run depends on cannot be read at checkpoint {step} '
                    f'({_first_line(e)}): restore its files, or train a new run') from e
  if expected_fingerprint is not None and digest != expected_fingerprint:
    raise UserError(f'the stage {workdir} at step {step} is not the one this run was trained with (fingerprint '
                    f'{digest}, recorded {expected_fingerprint}): restore it, or train a new run on it')
  return run, digest


def stage_run(record, build, name: str = 'autoencoder'):
  """(config, spec, family, state) of stage `name` as a run's spec records it: restore_stage of its workdir at its
  step, checked by its fingerprint; or, recorded without a workdir (the synthetic spec bench makes for a run whose
  stages are untrained, jaxgen.stages.spec), the recorded config's family on the recorded spec, freshly
  initialised."""
  if record.workdir is not None:
    return restore_stage(record.workdir, record.step, record.fingerprint, build, name)[0]
  config = record.config.as_configdict()
  family = build(config, record.spec)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  return config, record.spec, family, train_state.create_state(family, mesh, config.seed)[0]


def manager(workdir: str, keep: int | None = None, read_only: bool = False) -> ocp.CheckpointManager:
  """The workdir's CheckpointManager. The writer's (the run holding jaxgen.train.lock) removes the
  `<step>.orbax-checkpoint-tmp` directories a killed save left (Orbax's cleanup_tmp_directories: safe, as no
  other writer can be saving); readers never list them (Orbax steps are finished, renamed directories)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only, enable_async_checkpointing=True,
      cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(os.path.join(files.absolute(workdir), 'checkpoints'), options=options,
                               item_names=('state', 'data'))


def finished_steps(workdir: str) -> list[int]:
  """The steps of the complete checkpoints in the workdir (what a resumed run may restore), ascending."""
  directory = epath.Path(workdir, 'checkpoints')
  return sorted(int(d.name) for d in (directory.iterdir() if directory.is_dir() else ()) if d.name.isdigit())


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  """Start an async save of step `step`; Orbax finishes it in the background."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
  """Restore the state (onto the shardings in `abstract_state`) and, if given, the iterator in place."""
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  positions = os.path.join(mngr.directory, str(step), 'data')
  own_position = os.path.join(positions, f'process_{jax.process_index()}-of-{jax.process_count()}.json')
  if data_iterator is not None and files.exists(own_position):
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError) as e:
    raise UserError(f'checkpoint {mngr.directory}/{step} does not match this model ({_first_line(e)}); '
                    'use a new --workdir or the config it was trained with') from e
  if data_iterator is not None and 'data' not in items:
    # Written by another number of processes. Every process's position is the same (all read their rows
    # of the same global batches), so process 0's continues the run here.
    written = sorted(epath.Path(positions).glob('process_0-of-*.json'))
    if not written:
      raise UserError(f'checkpoint {step} holds no data-iterator position; use a new --workdir')
    data_iterator.set_state(json.loads(written[0].read_text()))
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
        epath.Path(mngr.directory, str(bad)).rename(aside)
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
