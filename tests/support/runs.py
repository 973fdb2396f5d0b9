"""Training runs the tests share, on mocked TFDS data in tmp_path/tfds."""
import os
import signal

import pytest

from jaxgen import stages
from jaxgen.data import base
from jaxgen.train import trainer
from tests.support.mock_tfds import mock_images


def _term_at(iterator, at: int):
  """`iterator`, made to send this process SIGTERM as it gives batch number `at`: a preemption during that step
  (the trainer finishes it, checkpoints and stops). Its class is swapped for a subclass, so that it stays what
  grain.checkpoint saves and restores."""
  class TermAt(type(iterator)):
    def __next__(self):
      self.batches_given = getattr(self, 'batches_given', 0) + 1
      if self.batches_given == at:
        os.kill(os.getpid(), signal.SIGTERM)
      return super().__next__()

  iterator.__class__ = TermAt
  return iterator


def preempted(config, workdir, stop_at: int) -> None:
  """Train `config` in a fresh `workdir` (stages.train_and_evaluate), preempted by SIGTERM during step stop_at:
  the run stops there with a checkpoint, and a rerun of the same config resumes it."""
  real_train = trainer.train

  def train_preempted(config, workdir, dataset):       # a fresh workdir: batch number stop_at is step stop_at's
    wire = dataset.wire or base.Wire(dataset.train_iterator, None)
    preempting = wire._replace(train_iterator=lambda: _term_at(wire.train_iterator(), stop_at))
    return real_train(config, workdir, dataset._replace(wire=preempting))

  with pytest.MonkeyPatch.context() as patch, pytest.raises(trainer.Stopped):
    patch.setattr(trainer, 'train', train_preempted)
    stages.train_and_evaluate(config, str(workdir))


def train(make_config, tmp_path, workdir, steps: int, stop_at: int | None = None):
  """The final state of make_config() trained (or resumed) to `steps` steps in `workdir`; with stop_at, preempted
  there instead (preempted(); returns None)."""
  config = make_config()
  config.num_train_steps = steps
  config.data.data_dir = str(tmp_path / 'tfds')
  with mock_images():
    if stop_at is None:
      return stages.train_and_evaluate(config, str(workdir))
    preempted(config, workdir, stop_at)


def straight_and_resumed(make_config, tmp_path, steps: int, stop: int):
  """(straight, resumed) final states: `steps` steps in tmp_path/straight, and in tmp_path/resumed the same run
  preempted during step `stop`, then rerun: the same config throughout, so every jitted function is reused."""
  straight = train(make_config, tmp_path, tmp_path / 'straight', steps)
  train(make_config, tmp_path, tmp_path / 'resumed', steps, stop_at=stop)
  return straight, train(make_config, tmp_path, tmp_path / 'resumed', steps)
