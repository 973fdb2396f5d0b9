"""The family/data seam: an acyclic import graph, specs instead of config writes, batch checks, sample writers,
one update rule, one preset mechanism."""
import ast
import importlib
import os
import re
import wave

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import data, families, samples
from jaxgen.errors import UserError
from jaxgen.families.base import Feature
from jaxgen.train import optim, trainer
from tests.conftest import ROOT

PACKAGE = os.path.join(ROOT, 'jaxgen')


def _module_names() -> dict[str, str]:
  """jaxgen module name -> file."""
  names = {}
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(folder, f)
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        names['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return names


def import_graph() -> dict[str, set[str]]:
  """module -> the jaxgen modules it imports: `import`/`from` statements anywhere in it (top level and inside
  functions), importlib.import_module of string literals, and the registries' lazy imports."""
  modules = _module_names()
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    for node in ast.walk(ast.parse(open(path).read())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        targets = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules else node.module
                   for a in node.names]
      elif (isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'import_module'
            and node.args and isinstance(node.args[0], ast.Constant)):
        targets = [node.args[0].value]
      graph[module] |= {t for t in targets if t in modules and t != module}
  graph['jaxgen.families'] |= set(families.FAMILIES.values())
  graph['jaxgen.data'] |= set(data.MODALITIES.values())
  return graph


def find_cycle(graph) -> list[str] | None:
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == 'open':
        return stack[stack.index(n):] + [n]
      if n not in state and (cycle := visit(n)):
        return cycle
    state[m] = 'done'
    stack.pop()
    return None

  for m in sorted(graph):
    if m not in state and (cycle := visit(m)):
      return cycle
  return None


def test_import_graph_is_acyclic():
  graph = import_graph()
  assert len(graph) > 30 and graph['jaxgen.train.trainer'] >= {'jaxgen.families', 'jaxgen.data'}
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_find_cycle_finds_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_data_and_models_import_no_trainer_family_or_package_root():
  forbidden = ('jaxgen', 'jaxgen.train', 'jaxgen.families', 'jaxgen.stages')
  for module, imports in import_graph().items():
    if module.startswith(('jaxgen.data', 'jaxgen.models')):
      bad = {i for i in imports if i in forbidden or i.startswith(('jaxgen.train.', 'jaxgen.families.'))}
      assert not bad, (module, bad)


def test_generic_tools_name_no_family_and_no_dataset():
  """bench, eval, the writers, sample.py, data dispatch and the trainer go through Family and Dataset only."""
  names = set(families.FAMILIES) | {'fashion_mnist', 'mnist', 'cifar10', 'tiny_shakespeare', 'autoencoder', 'gpt2'}
  for path in ('jaxgen/bench.py', 'jaxgen/eval.py', 'jaxgen/train/writers.py', 'jaxgen/train/trainer.py',
               'jaxgen/data/__init__.py', 'jaxgen/sample.py'):
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & names, (path, strings & names)
    assert not re.search(r'isinstance\((preview|out|samples)\b', open(os.path.join(ROOT, path)).read()), path


# ------------------------------------------------------------------------------------------ specs, batches

def test_batch_that_does_not_match_the_family_is_one_line_error():
  spec = {'image': Feature((28, 28, 1), np.float32), 'label': Feature((), np.int32)}
  trainer.check_batch(spec, {'image': np.zeros((4, 28, 28, 1), np.float32), 'label': np.zeros(4, np.int32)}, 4)
  with pytest.raises(UserError, match=r"the data gives batches \{tokens: int32 \(4, 9\)\} but the family reads "
                                      r"\{image: float32 \(4, 28, 28, 1\), label: int32 \(4,\)\}"):
    trainer.check_batch(spec, {'tokens': np.zeros((4, 9), np.int32)}, 4)


def test_synthetic_batches_follow_the_batch_spec():
  feature = Feature((3,), np.int32, 5, 9)
  x = feature.synthetic(np.random.default_rng(0), 1000)
  assert x.shape == (1000, 3) and x.dtype == np.int32 and x.min() == 5 and x.max() == 8
  y = Feature((2,), np.float32, -1.0, 1.0).synthetic(np.random.default_rng(0), 1000)
  assert y.dtype == np.float32 and -1 <= y.min() < -0.99 and 0.99 < y.max() <= 1


def test_specs_round_trip_through_json_and_are_frozen():
  spec = data.make_spec(modality='image', image_shape=(28, 28, 1), stages={'a': {'step': 3}})
  again = data.spec_from_json(data.spec_to_json(spec))
  assert again == spec and again.image_shape == (28, 28, 1) and again.stages.a.step == 3
  with pytest.raises((AttributeError, TypeError, ValueError)):
    spec.image_shape = (1, 1, 1)


def test_unknown_modality_is_a_user_error():
  from jaxgen.config import base_config
  config = base_config()
  config.data.modality = 'smell'
  with pytest.raises(UserError, match=r"unknown data.modality 'smell'; choose one of \['audio', 'captioned', 'image', 'sentences', 'text'\]"):
    data.load(config, '/unused')


# ------------------------------------------------------------------------------------------ sample kinds

def test_audio_kind_writes_a_16_bit_wav_and_a_spectrogram_grid(tmp_path):
  rate = 8000
  t = np.arange(rate // 2) / rate
  clips = np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in (440.0, 880.0)]).astype(np.float32)
  kind = samples.Audio(rate, gap_s=0.1)
  paths = kind.save(str(tmp_path / 'notes.wav'), clips)
  assert paths == [str(tmp_path / 'notes.wav'), str(tmp_path / 'notes.png')]
  with wave.open(paths[0]) as w:
    assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (rate, 2, 1)
    pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
  assert len(pcm) == 2 * len(t) + int(0.1 * rate)                     # clip, gap, clip
  np.testing.assert_allclose(pcm[:len(t)] / 32767, clips[0], atol=1 / 32767)
  assert not pcm[len(t):len(t) + 800].any()
  spec = kind.spectrograms(clips)                                      # the peak bin follows the pitch
  peak_rows = spec[..., 0].mean(axis=2).argmax(axis=1)
  assert peak_rows[0] > peak_rows[1]                                   # 880 Hz nearer the top (low freq at bottom)


def test_image_and_text_kinds(tmp_path):
  grid_path = samples.Images().save(str(tmp_path / 'g.png'), np.zeros((4, 5, 5, 1), np.uint8))[0]
  from PIL import Image
  assert Image.open(grid_path).size == (2 * 7 + 2, 2 * 7 + 2)
  texts = samples.Texts()
  texts.save(str(tmp_path / 't.txt'), ['a', 'b'])
  assert open(tmp_path / 't.txt').read() == 'a' + samples.TEXT_RULE + 'b\n' and texts.text(['a']) == 'a'


# ------------------------------------------------------------------------------------------ update rule

def test_updater_applies_optax_then_the_ema_with_optional_warmup():
  params = {'w': jnp.ones(3)}
  grads = {'w': jnp.full(3, 2.0)}
  for warmup, decay in ((False, 0.9), (True, min(0.9, 1 / 10))):
    updater = optim.Updater(optax.sgd(0.5), ema_decay=0.9, ema_warmup=warmup)
    opt_state, ema = updater.init(params)
    new, _, new_ema = updater.apply(grads, params, opt_state, ema, jnp.int32(0))
    np.testing.assert_allclose(new['w'], 0.0)                          # 1 - 0.5 * 2
    np.testing.assert_allclose(new_ema['w'], decay * 1.0 + (1 - decay) * 0.0, rtol=1e-6)
  assert optim.ema_decay_at(0.999, True, 990) == pytest.approx(991 / 1000)
  assert optim.Updater(optax.sgd(1.0)).init(params)[1] is None


def test_ema_decay_outside_unit_interval_is_refused():
  from jaxgen.config import base_config
  config = base_config()
  config.optim.ema_decay = 1.0
  with pytest.raises(UserError, match=r'optim.ema_decay=1.0 must be in \[0, 1\)'):
    optim.make_updater(1e-3, config.optim, 10)


# ------------------------------------------------------------------------------------------ configs

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_has_the_shared_presets_and_keys(name):
  module = importlib.import_module(f'configs.{name}')
  smoke = module.get_config('smoke')
  assert smoke.batch_size == 8 and smoke.log_every_steps == 2 and smoke.data.eval_examples == 16
  assert smoke.eval_every_steps == smoke.num_train_steps <= 6
  default = module.get_config('default')
  assert default.family in families.FAMILIES and default.data.modality in data.MODALITIES
  assert 'sample' not in default and not {'image_shape', 'num_classes'} & set(default.data)
  assert 'vocab_size' not in default.model
  with pytest.raises(ValueError, match=r"unknown preset 'nope'; choose one of \['default'"):
    module.get_config('nope')


def test_a_workdir_from_before_data_specs_gets_one_line_saying_how_to_retrain(tmp_path):
  import json
  import jaxgen
  (tmp_path / 'config.json').write_text(json.dumps({'family': 'vae', 'batch_size': 8, 'model': {}, 'data': {'image_shape': [28, 28, 1]}}))
  with pytest.raises(UserError, match=r'has no spec.json: it was written by a jaxgen before data specs; retrain it '
                                      r'in a new --workdir'):
    jaxgen.load_sampler(str(tmp_path))
