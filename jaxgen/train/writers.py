"""Where a run's numbers and samples go: metrics.jsonl, TensorBoard events, samples/ (process 0 only)."""
import json
import os
import time

import jax
from tensorboardX import SummaryWriter


class RunWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars/samples to TensorBoard."""

  def __init__(self, workdir: str, resume_step: int = 0):
    """A run continuing from checkpoint `resume_step`: metrics.jsonl keeps only its rows up to that step (a
    killed run may have logged past its last checkpoint; those steps are logged again) and TensorBoard
    purges its later events (purge_step), so no step appears twice."""
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.start = time.time()
    if self.active:
      os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
      path = os.path.join(workdir, 'metrics.jsonl')
      resuming = os.path.exists(path)
      if resuming:
        _keep_rows_up_to(path, resume_step)
      self.tb = SummaryWriter(workdir, flush_secs=30, purge_step=resume_step + 1 if resuming else None)
      self.jsonl = open(path, 'a')

  def scalars(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    record = {'step': step, **{k: float(v) for k, v in metrics.items()}, 'wall_time': time.time() - self.start}
    self.jsonl.write(json.dumps(record) + '\n')
    self.jsonl.flush()
    for k, v in metrics.items():
      self.tb.add_scalar(k, float(v), step)

  def samples(self, step: int, kind, preview) -> list[str]:
    """Write the preview as samples/step_<N><kind.extension> (and what else the kind writes); the paths."""
    if not self.active:
      return []
    paths = kind.save(os.path.join(self.workdir, 'samples', f'step_{step:06d}{kind.extension}'), preview)
    kind.log(self.tb, step, preview)
    return paths

  def close(self) -> None:
    if self.active:
      self.tb.close()
      self.jsonl.close()


def _keep_rows_up_to(path: str, step: int) -> None:
  """Rewrite metrics.jsonl (atomically) without its rows past `step` and any torn line a kill left."""
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
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
    with open(path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(path + '.tmp', path)
