"""Training runs the tests share, on mocked TFDS data in tmp_path/tfds."""
from jaxgen import stages
from tests.support.mock_tfds import mock_images


def train(make_config, tmp_path, workdir, steps: int):
  """The final state of make_config() trained (or resumed) to `steps` steps in `workdir`."""
  config = make_config()
  config.num_train_steps = steps
  config.data.data_dir = str(tmp_path / 'tfds')
  with mock_images():
    return stages.train_and_evaluate(config, str(workdir))


def straight_and_resumed(make_config, tmp_path, steps: int, stop: int):
  """(straight, resumed) final states: `steps` steps in tmp_path/straight, and `stop` steps then a rerun to
  `steps` in tmp_path/resumed."""
  straight = train(make_config, tmp_path, tmp_path / 'straight', steps)
  train(make_config, tmp_path, tmp_path / 'resumed', stop)
  return straight, train(make_config, tmp_path, tmp_path / 'resumed', steps)
