"""Where a run's numbers and samples go (process 0 only): metrics.jsonl, TensorBoard events (scalars, samples,
the config as hparams), samples/, and optionally Weights & Biases (config.wandb.project).

The workdir may be local or a URL such as gs://... (jaxgen.files): a cloud store cannot append, so there
metrics.jsonl is rewritten whole at each log, and samples are written locally first and then copied.
"""
import hashlib
import json
import os
import tempfile
import time

import jax
from etils import epath
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams

from jaxgen import files
from jaxgen.errors import UserError


def check(config) -> None:
  """What the writers need is installed (before any work): wandb where config.wandb.project is set."""
  if _wandb_project(config):
    try:
      import wandb  # noqa: F401
    except ImportError:
      raise UserError('--config.wandb.project needs the wandb package: pip install wandb (or unset the key)') from None


def _wandb_project(config) -> str | None:
  return config.get('wandb', {}).get('project') if config is not None else None


def flat_hparams(config) -> dict[str, bool | str | float | int]:
  """The config's leaves by dotted key, as TensorBoard hparams take them (None and sequences as strings)."""
  def leaves(d, prefix=''):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from leaves(v, f'{prefix}{k}.')
      else:
        yield f'{prefix}{k}', v if isinstance(v, (bool, str, float, int)) else str(v)
  return dict(leaves(json.loads(config.to_json_best_effort())))


class RunWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars/samples to TensorBoard (and
  W&B); the config goes to TensorBoard's HParams tab, with the first logged step's metrics."""

  def __init__(self, workdir: str, resume_step: int = 0, config=None):
    """A run continuing from checkpoint `resume_step`: metrics.jsonl keeps only its rows up to that step (a
    killed run may have logged past its last checkpoint; those steps are logged again) and TensorBoard
    purges its later events (purge_step), so no step appears twice."""
    self.active = jax.process_index() == 0
    self.workdir, self.config = workdir, config
    self.start = time.time()
    if self.active:
      epath.Path(workdir, 'samples').mkdir(parents=True, exist_ok=True)
      self.path = os.path.join(workdir, 'metrics.jsonl')
      resuming = files.exists(self.path)
      self.rows = _rows_up_to(self.path, resume_step) if resuming else []
      self.tb = SummaryWriter(workdir, flush_secs=30, purge_step=resume_step + 1 if resuming else None)
      self.jsonl = None
      if files.is_local(workdir):
        self.jsonl, self.rows = open(self.path, 'a'), None
      self.hparams_written = config is None
      self.wandb = _start_wandb(config, workdir) if _wandb_project(config) else None

  def scalars(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    record = {'step': step, **{k: float(v) for k, v in metrics.items()}, 'wall_time': time.time() - self.start}
    line = json.dumps(record) + '\n'
    if self.jsonl is not None:
      self.jsonl.write(line)
      self.jsonl.flush()
    else:
      self.rows.append(line)
      files.write_atomic(self.path, ''.join(self.rows))
    if not self.hparams_written:      # the HParams tab lists these metrics against the config
      for summary in hparams(flat_hparams(self.config), {k: float(v) for k, v in metrics.items()}):
        self.tb._get_file_writer().add_summary(summary)   # the run's own event file
      self.hparams_written = True
    for k, v in metrics.items():
      self.tb.add_scalar(k, float(v), step)
    if self.wandb is not None:
      self.wandb.log({k: float(v) for k, v in metrics.items()}, step=step)

  def samples(self, step: int, kind, preview) -> list[str]:
    """Write the preview as samples/step_<N><kind.extension> (and what else the kind writes); the paths."""
    if not self.active:
      return []
    name = f'step_{step:06d}{kind.extension}'
    if files.is_local(self.workdir):
      paths = kind.save(os.path.join(self.workdir, 'samples', name), preview)
    else:                             # the kinds write local files (PIL, scipy): copy them up
      with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for local in kind.save(os.path.join(tmp, name), preview):
          paths.append(os.path.join(self.workdir, 'samples', os.path.basename(local)))
          files.write_atomic(paths[-1], files.read_bytes(local))
    kind.log(self.tb, step, preview)
    return paths

  def close(self) -> None:
    if self.active:
      self.tb.close()
      if self.jsonl is not None:
        self.jsonl.close()
      if self.wandb is not None:
        self.wandb.finish()


def _start_wandb(config, workdir: str):
  """One W&B run per workdir (its id is a hash of the workdir, so a resumed run continues it), with the config."""
  import wandb
  return wandb.init(project=config.wandb.project, entity=config.wandb.get('entity'),
                    name=config.wandb.get('name') or os.path.basename(workdir.rstrip('/')),
                    id=hashlib.sha256(workdir.encode()).hexdigest()[:16], resume='allow',
                    config=json.loads(config.to_json_best_effort()), dir=workdir if files.is_local(workdir) else None)


def _rows_up_to(path: str, step: int) -> list[str]:
  """metrics.jsonl's rows up to `step`, without any torn line a kill left; the file is rewritten (atomically)
  when rows were dropped."""
  kept, dropped = [], 0
  for line in files.read_text(path).splitlines(keepends=True):
    try:
      row = json.loads(line)
      keep = line.endswith('\n') and isinstance(row, dict) and row.get('step', 0) <= step
    except ValueError:
      keep = False
    if keep:
      kept.append(line)
    else:
      dropped += 1
  if dropped:
    files.write_atomic(path, ''.join(kept))
  return kept
