"""Where a run's numbers and samples go: metrics.jsonl, TensorBoard events, samples/ (process 0 only)."""
import json
import os
import time

import jax
from tensorboardX import SummaryWriter


class RunWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars/samples to TensorBoard."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.start = time.time()
    if self.active:
      os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
      self.tb = SummaryWriter(workdir, flush_secs=30)
      self.jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

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
