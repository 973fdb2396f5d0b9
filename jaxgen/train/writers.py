"""Where a run's numbers and samples go: metrics.jsonl, TensorBoard events, samples/ (process 0 only)."""
import json
import os
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter

from jaxgen import images


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

  def samples(self, step: int, preview) -> str | None:
    """Write an image grid (H, W, C) uint8 as PNG, or a list of texts as .txt; return the path."""
    if not self.active:
      return None
    if isinstance(preview, list):
      path = os.path.join(self.workdir, 'samples', f'step_{step:06d}.txt')
      text = '\n\n----------\n\n'.join(preview)
      with open(path, 'w') as f:
        f.write(text)
      self.tb.add_text('samples', text, step)
    else:
      grid = np.asarray(preview)
      path = os.path.join(self.workdir, 'samples', f'step_{step:06d}.png')
      images.save_png(path, grid)
      self.tb.add_image('samples', grid, step, dataformats='HWC')
    return path

  def close(self) -> None:
    if self.active:
      self.tb.close()
      self.jsonl.close()
