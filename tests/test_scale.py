"""Scale-out: 1 device == 8 devices (data parallel, FSDP) == 2 processes; checkpoints move between meshes.

Simulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) must be set before JAX starts, so the
multi-device checks run this file as a script in a subprocess (`python tests/test_scale.py MODE ...`, see
the bottom), which prints one JSON line for the tests to assert on; the multi-process checks run train.py.
"""
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = dict(vae='vae_fashion_mnist', gan='gan_fashion_mnist', ddpm='ddpm_fashion_mnist', gpt='gpt_shakespeare_char',
               bert='bert_shakespeare_char')
STEPS = 3


def _available(family: str) -> bool:
  return all(os.path.exists(os.path.join(ROOT, *p)) for p in
             (('jaxgen', 'families', f'{family}.py'), ('configs', f'{CONFIGS[family]}.py')))


def _skip_absent(family: str) -> None:
  if not _available(family):
    pytest.skip(f'the {family} family (jaxgen/families/{family}.py, configs/{CONFIGS[family]}.py) is not there yet')


def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT,
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {os.environ.get("XLA_FLAGS", "")}')


def _worker(devices: int, *args: str, timeout: int = 600) -> dict:
  """Run `python tests/test_scale.py ARGS` on `devices` simulated CPU devices; its last stdout line (JSON)."""
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], cwd=ROOT, env=_env(devices),
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode:
    raise AssertionError(f'worker {args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- 8 simulated devices

@pytest.fixture(scope='module')
def scale(tmp_path_factory):
  """One 8-device worker: data=8 runs of the VAE and GAN, data=2 x fsdp=4 runs of GPT and BERT (their data
  parallelism and FSDP in one program each), a GPT checkpoint moved between meshes, and the FSDP layout of the
  default GPT-2 and CIFAR-10 UNet."""
  workdir = tmp_path_factory.mktemp('scale')
  runs = [f'{f}:8:1' for f in ('vae', 'gan') if _available(f)]
  runs += [f'{f}:2:4' for f in ('gpt', 'bert') if _available(f)]
  return _worker(8, 'runs', str(workdir), *runs), str(workdir)


@pytest.mark.parametrize('family', ['vae', 'gan'])
def test_data_parallel_steps_equal_one_device_steps(scale, family):
  """K steps on a data=8 mesh (batch split 8 ways, state replicated) == K steps on one device."""
  _skip_absent(family)
  run = scale[0][f'{family}:8:1']
  assert run['error'] <= 1, run                                  # assert_allclose(rtol=1e-4, atol=1e-5) on the state
  np.testing.assert_allclose(run['losses'], run['reference_losses'], rtol=1e-5)
  assert run['batch_shard_rows'] == 1                             # smoke batch 8 over 8 devices
  assert run['sharded_bytes_fraction'] == 1.0                     # replicated: every device holds everything


@pytest.mark.slow  # ~22 s idle, minutes under load: the UNet step compiles slowly on CPU
def test_ddpm_data_parallel_and_fsdp_steps_equal_one_device_steps(tmp_path):
  """The UNet carries no logical axis annotations: under FSDP its leaves are sharded by the shape rule
  (here down to the smallest leaves, to shard the smoke model); both equal one device."""
  _skip_absent('ddpm')
  result = _worker(8, 'runs', str(tmp_path), 'ddpm:8:1', 'ddpm:1:8', '--fsdp_min_size=0')
  for run in (result['ddpm:8:1'], result['ddpm:1:8']):
    assert run['error'] <= 1, run
    np.testing.assert_allclose(run['losses'], run['reference_losses'], rtol=1e-5)
  assert result['ddpm:1:8']['sharded_bytes_fraction'] < 0.2     # 1/8 for all but a few odd-sized leaves


@pytest.mark.parametrize('family', ['gpt', 'bert'])
def test_fsdp_steps_equal_one_device_steps(scale, family):
  """data=2 x fsdp=4: the batch split over all 8 devices, the Transformer's weights 4 ways on their 'embed'
  dimension (BERT: GPT's blocks)."""
  _skip_absent(family)
  run = scale[0][f'{family}:2:4']
  assert run['error'] <= 1, run
  np.testing.assert_allclose(run['losses'], run['reference_losses'], rtol=1e-5)
  assert run['batch_shard_rows'] == 1                             # smoke batch 8 over ('data', 'fsdp')


def test_gpt_fsdp_shards_every_weight_and_its_adam_moments(scale):
  """On data=2 x fsdp=4 each device holds a quarter of every GPT weight (split on its 'embed' dimension)
  and of its AdamW moments: 1/4 of the state's bytes, not all of them."""
  _skip_absent('gpt')
  leaves = scale[0]['gpt:2:4']['leaves']
  weights = {path: v for path, v in leaves.items() if path.startswith('.params')}
  assert any('wte' in p for p in weights) and any('c_fc' in p for p in weights)
  for path, (shape, shard_shape) in weights.items():
    assert np.prod(shard_shape) * 4 == np.prod(shape), (path, shape, shard_shape)
    moments = [v for p, v in leaves.items() if p.startswith('.opt_state') and p.endswith(path[len('.params'):])]
    assert moments and all(v == [shape, shard_shape] for v in moments), (path, moments)
  assert weights[".params['wte']['embedding']"] == [[16, 32], [16, 8]]     # (vocab, embed / 4)
  assert scale[0]['gpt:2:4']['sharded_bytes_fraction'] == pytest.approx(0.25, abs=0.01)


def test_fsdp_rules_shard_the_big_default_models(scale):
  """Per-device share of parameter bytes on an fsdp=8 mesh: GPT-2 124M by its annotations, the CIFAR-10
  UNet (unannotated) by the shape rule; ~1/8 each (tiny norms and biases stay replicated)."""
  fractions = scale[0]['default_models']
  if 'gpt2_124m' in fractions:
    assert fractions['gpt2_124m'] == pytest.approx(1 / 8, abs=0.002)
  if 'ddpm_cifar10' in fractions:
    assert 1 / 8 <= fractions['ddpm_cifar10'] < 0.14
  assert fractions, 'neither configs/gpt2_124m.py nor configs/ddpm_cifar10.py is there yet'


def test_checkpoint_moves_between_meshes(scale):
  """Saved from data=2 x fsdp=4, restored onto 1 device, data=8 and fsdp=8 (each leaf on the new mesh's
  sharding); saved again from 1 device and restored onto fsdp=8: the same values every time."""
  _skip_absent('gpt')
  restores = scale[0]['checkpoint']
  assert set(restores) == {'1 device', 'data=8', 'fsdp=8', '1 device -> fsdp=8'}
  for name, r in restores.items():
    assert r['error'] == 0 and r['on_target_sharding'], (name, r)


def test_checkpoint_from_eight_devices_loads_in_this_process(scale):
  """jaxgen.load_state here (pytest's CPU device) reads the FSDP-sharded checkpoint of the 8-device worker."""
  _skip_absent('gpt')
  import jax
  import jaxgen
  _, workdir = scale
  _, _, state = jaxgen.load_state(workdir, step=1)
  saved = np.load(os.path.join(workdir, 'params.npz'))
  params = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
  assert sorted(params) == sorted(saved.files)
  for path, value in params.items():
    np.testing.assert_array_equal(value, saved[path])


# ------------------------------------------------------------------------------------ several real processes

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _train(workdir, args, processes: int, devices: int, launcher=()) -> list[str]:
  """train.py in `processes` processes of `devices` CPU devices each (jax.distributed on localhost);
  returns each process's output."""
  coordinator = f'127.0.0.1:{_free_port()}'
  logs = [f'{workdir}.{i}.log' for i in range(processes)]
  procs = []
  for i, log in enumerate(logs):
    distributed = ['--coordinator', coordinator, '--num_processes', str(processes), '--process_id', str(i)]
    with open(log, 'w') as out:
      procs.append(subprocess.Popen(
          [sys.executable, *launcher, 'train.py', *args, '--workdir', str(workdir), *(distributed * (processes > 1))],
          cwd=ROOT, env=_env(devices), stdout=out, stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  outputs = [open(log).read() for log in logs]
  assert codes == [0] * processes, '\n'.join(f'--- process {i}:\n{o[-3000:]}' for i, o in enumerate(outputs))
  return outputs


def _metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def _assert_same_run(one, two, rtol=1e-5, steps=(2, 4, 6)) -> None:
  """Process 0's metrics.jsonl records of `steps` in the 2-process run == the 1-process run's (each written
  once); so are the final parameters."""
  import jax
  import jaxgen
  a, b = ([r for r in _metrics(w) if r['step'] in steps] for w in (one, two))
  assert [sorted(r) for r in a] == [sorted(r) for r in b] and len(a) == len(steps) + 1     # + eval at 6
  for ra, rb in zip(a, b):
    for k in ra.keys() - {'wall_time', 'steps_per_sec', 'examples_per_sec', 'tokens_per_sec', 'mfu'}:
      assert rb[k] == pytest.approx(ra[k], rel=rtol), (ra['step'], k)
  for x, y in zip(jax.tree.leaves(jaxgen.load_state(str(one))[2].params),
                  jax.tree.leaves(jaxgen.load_state(str(two))[2].params)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-5)


def _assert_cooperative_checkpoints(workdir, steps) -> None:
  """Both processes wrote their part of each checkpoint: the state's shards and their iterator positions."""
  assert sorted(os.listdir(workdir / 'checkpoints')) == steps
  for step in steps:
    ckpt = workdir / 'checkpoints' / step
    assert {'ocdbt.process_0', 'ocdbt.process_1'} <= set(os.listdir(ckpt / 'state'))
    assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(ckpt / 'data'))


def _eval_lines(output: str) -> list[str]:
  return re.findall(r'step \d+: eval/.*', output)


def test_two_processes_with_fsdp_train_gpt_like_one_process(tmp_path):
  """2 processes x 2 devices with the parameters sharded over all 4 (fsdp=4) == 1 process x 4 devices
  (data=4). Process p reads text windows p, p + 2, ... so the global batches hold the same windows, in
  another row order (hence no dropout: its masks follow rows)."""
  _skip_absent('gpt')
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('the quick brown fox jumps over the lazy dog.\n' * 200)
  args = ['--config', 'configs/gpt_shakespeare_char.py:smoke', f'--config.data.text_file={corpus}',
          '--config.model.dropout=0.0', '--config.sampling.max_new_tokens=8']
  _train(tmp_path / 'one', args, processes=1, devices=4)
  outputs = _train(tmp_path / 'two', [*args, '--config.mesh.fsdp=4'], processes=2, devices=2)
  _assert_same_run(tmp_path / 'one', tmp_path / 'two')
  _assert_cooperative_checkpoints(tmp_path / 'two', ['3', '6'])
  assert _eval_lines(outputs[0]) == _eval_lines(outputs[1]) != []   # both processes computed the same eval
  assert os.listdir(tmp_path / 'two' / 'samples') == ['step_000006.txt']


@pytest.mark.slow  # ~20 s idle, minutes under load: five TFDS-importing processes
def test_two_processes_train_and_resume_vae_like_one_process(tmp_path):
  """2 processes x 2 devices, stopped at step 3 and resumed (state and each process's iterator position)
  == 1 process x 4 devices in one go, on the mocked TFDS images: each process reads its rows of the same
  global batches, so the runs see the same examples in the same places. So does the step-3 checkpoint of
  the 2 processes resumed by 1 process."""
  _skip_absent('vae')
  args = ['--config', 'configs/vae_fashion_mnist.py:smoke', f'--config.data.data_dir={tmp_path}/tfds']
  launcher = (os.path.join(ROOT, 'tests', 'support', 'mock_tfds.py'),)
  _train(tmp_path / 'one', args, processes=1, devices=4, launcher=launcher)
  _train(tmp_path / 'two', [*args, '--config.num_train_steps=3'], processes=2, devices=2, launcher=launcher)
  shutil.copytree(tmp_path / 'two', tmp_path / 'two_then_one')
  outputs = _train(tmp_path / 'two', args, processes=2, devices=2, launcher=launcher)
  _assert_same_run(tmp_path / 'one', tmp_path / 'two', rtol=1e-4, steps=[6])
  _train(tmp_path / 'two_then_one', args, processes=1, devices=4, launcher=launcher)
  _assert_same_run(tmp_path / 'one', tmp_path / 'two_then_one', rtol=1e-4, steps=[6])
  _assert_cooperative_checkpoints(tmp_path / 'two', ['3', '6'])
  assert _eval_lines(outputs[0]) == _eval_lines(outputs[1]) != []
  assert sorted(os.listdir(tmp_path / 'two' / 'samples')) == ['step_000003.png', 'step_000006.png']


# ----------------------------------------------------------------------------------- in-process unit checks

def test_fsdp_shape_rule_shards_the_largest_divisible_dimension(monkeypatch):
  from jax.sharding import PartitionSpec as P
  from jaxgen.train import sharding
  monkeypatch.setattr(sharding, 'FSDP_MIN_SIZE', 1024)
  assert sharding.fsdp_spec((3, 3, 128, 256), 8) == P(None, None, None, 'fsdp')
  assert sharding.fsdp_spec((3, 3, 256, 12), 8) == P(None, None, 'fsdp', None)
  assert sharding.fsdp_spec((3, 3, 100, 100), 8) == P()                  # nothing divisible
  assert sharding.fsdp_spec((16, 16), 8) == P()                          # too small to be worth it
  assert sharding.fsdp_spec((3, 3, 128, 256), 1) == P()                  # no fsdp axis


def test_cluster_is_detected_by_jax_and_not_for_a_single_slurm_task(monkeypatch):
  """No flags: jax.distributed.initialize() with no arguments (JAX's own detection), except for a single SLURM
  task (it would hide all GPUs but one); outside a cluster its 'coordinator_address should be defined' means
  one process, any other ValueError is one line."""
  import jax
  from jaxgen import cli
  from jaxgen.errors import UserError
  calls, error = [], []

  def initialize(*args, **kwargs):
    calls.append((args, kwargs))
    if error and not args:
      raise error[0]
  monkeypatch.setattr(jax.distributed, 'initialize', initialize)
  for var in ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID',
              'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(var, raising=False)
  error.append(ValueError('coordinator_address should be defined.'))
  cli.init_distributed(None, None, None)                      # no cluster: one process
  assert calls == [((), {})]
  error[0] = ValueError('Number of processes must be defined.')
  with pytest.raises(UserError, match='found a cluster but not all of it'):
    cli.init_distributed(None, None, None)
  error.clear()
  calls.clear()
  slurm = dict(SLURM_JOB_ID='7', SLURM_STEP_NODELIST='node[1-2]', SLURM_PROCID='0', SLURM_LOCALID='0')
  for var, value in slurm.items():
    monkeypatch.setenv(var, value)
  monkeypatch.setenv('SLURM_NTASKS', '1')
  cli.init_distributed(None, None, None)
  assert calls == []
  monkeypatch.setenv('SLURM_NTASKS', '2')
  cli.init_distributed(None, None, None)
  assert calls == [((), {})]
  cli.init_distributed('10.0.0.1:1234', 2, 1)
  assert calls[-1] == (('10.0.0.1:1234', 2, 1), {})
  assert 'jax._src' not in open(os.path.join(ROOT, 'jaxgen', 'cli.py')).read()


# ------------------------------------------------------------------------- what the subprocesses run

def _smoke_config(family: str):
  return importlib.import_module(f'configs.{CONFIGS[family]}').get_config('smoke')


def _smoke_spec(family: str):
  """What the data would derive: the mocked images, or 16 characters (BERT's after its 4 special tokens)."""
  from tests.support import specs
  if family == 'bert':
    from jaxgen import data
    from jaxgen.data import tokenizers
    tokenizer = tokenizers.CharTokenizer('abcdefghijklmnop', ('[PAD]', '[CLS]', '[SEP]', '[MASK]'))
    return data.make_spec(modality='text', source='synthetic', vocab_size=tokenizer.vocab_size,
                          tokenizer=json.dumps(tokenizer.to_json()))
  return specs.text(16) if family == 'gpt' else specs.FASHION_MNIST


def _batches(config) -> list[dict]:
  """STEPS synthetic global batches in the family's layout."""
  rng, b = np.random.default_rng(0), config.batch_size
  if config.family == 'gpt':
    return [{'tokens': rng.integers(0, 16, (b, config.model.block_size + 1), dtype=np.int32)} for _ in range(STEPS)]
  if config.family == 'bert':   # text windows of block_size - 2 tokens, ids after the special tokens
    return [{'tokens': rng.integers(4, 20, (b, config.model.block_size - 2), dtype=np.int32)} for _ in range(STEPS)]
  lo, hi = config.data.pixel_range
  return [{'image': rng.uniform(lo, hi, (b, 28, 28, 1)).astype(np.float32),
           'label': rng.integers(0, 10, b, dtype=np.int32)} for _ in range(STEPS)]


def _mesh(data: int, fsdp: int):
  import jax
  import ml_collections
  from jaxgen.train import sharding
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)), jax.devices()[:data * fsdp])


def _train_steps(family, config, mesh):
  """The trainer's jitted step, STEPS times, with its (seed, step) keys; returns (state, losses)."""
  import jax
  from jaxgen.train import sharding, trainer
  state, shardings = trainer.create_state(family, mesh, config.seed)
  train_step = trainer.jit_train_step(family, shardings, mesh)
  keys, losses = trainer.run_keys(config.seed), []
  for step, batch in enumerate(_batches(config)):
    batch = sharding.global_batch(batch, sharding.batch_sharding(mesh))
    state, metrics = train_step(state, batch, keys['train'], np.uint32(step))
    losses.append(float(metrics['loss']))
  return state, losses, batch


def _error(a, b, rtol=1e-4, atol=1e-5) -> float:
  """max over leaves of |a - b| / (atol + rtol |b|): <= 1 where np.testing.assert_allclose passes."""
  import jax
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)) / (atol + rtol * np.abs(np.asarray(y))),
                       initial=0.0))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.issubdtype(x.dtype, np.number))


def _layout(state) -> tuple[dict, float]:
  """{leaf path: [shape, shard shape]} and the share of the state's bytes that one device holds."""
  import jax
  leaves = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state)
            if np.issubdtype(x.dtype, np.number)}
  shards = {p: x.sharding.shard_shape(x.shape) for p, x in leaves.items()}
  total = sum(x.size * x.dtype.itemsize for x in leaves.values())
  per_device = sum(int(np.prod(shards[p])) * x.dtype.itemsize for p, x in leaves.items())
  return {p: [list(x.shape), list(shards[p])] for p, x in leaves.items() if x.ndim}, per_device / total


def _checkpoint_round_trip(family, config, state, workdir) -> dict:
  """Save `state`, restore it onto other meshes; save from 1 device and restore onto fsdp=8."""
  import grain
  import jax
  from jaxgen.train import checkpointing, trainer
  checkpointing.save_config(workdir, config)
  checkpointing.save_spec(workdir, _smoke_spec('gpt'))
  mngr = checkpointing.manager(workdir)
  data_iterator = iter(grain.MapDataset.range(4).to_iter_dataset())

  def restore(step, mesh, expected):
    target = trainer.abstract_state(family, mesh, config.seed)
    restored = checkpointing.restore(mngr, step, target)
    on_target = all(x.sharding.is_equivalent_to(t.sharding, x.ndim)
                    for x, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target)))
    return restored, dict(error=_error(restored, expected, rtol=0, atol=1e-30), on_target_sharding=on_target)

  checkpointing.save(mngr, 1, state, data_iterator)
  mngr.wait_until_finished()
  results = {}
  on_one, results['1 device'] = restore(1, _mesh(1, 1), state)
  _, results['data=8'] = restore(1, _mesh(8, 1), state)
  _, results['fsdp=8'] = restore(1, _mesh(1, 8), state)
  checkpointing.save(mngr, 2, on_one, data_iterator)
  mngr.wait_until_finished()
  _, results['1 device -> fsdp=8'] = restore(2, _mesh(1, 8), state)
  mngr.close()
  np.savez(os.path.join(workdir, 'params.npz'),
           **{jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state.params)})
  return results


def _default_model_fractions() -> dict:
  """Per-device share of parameter bytes on an fsdp=8 mesh, from shapes only (jax.eval_shape)."""
  import flax.linen as nn
  import jax
  from jaxgen import families
  from jaxgen.train import sharding
  fractions = {}
  for name in ('gpt2_124m', 'ddpm_cifar10'):
    if not os.path.exists(os.path.join(ROOT, 'configs', f'{name}.py')):
      continue
    config = importlib.import_module(f'configs.{name}').get_config('default')
    from jaxgen import data
    boxed = jax.eval_shape(families.build(config, data.synthetic_spec(config)).init, jax.random.key(0))
    shardings = sharding.state_shardings(boxed, _mesh(1, 8))
    params, param_shardings = jax.tree.leaves(nn.meta.unbox(boxed).params), jax.tree.leaves(shardings.params)
    fractions[name] = (sum(int(np.prod(s.shard_shape(x.shape))) for x, s in zip(params, param_shardings)) /
                       sum(x.size for x in params))
  return fractions


def _rows_per_device(batch) -> int:
  x = next(iter(batch.values()))
  return x.sharding.shard_shape(x.shape)[0]


def _runs(workdir: str, *specs: str) -> dict:
  """specs 'family:data:fsdp': STEPS steps on that mesh vs on one device; the GPT FSDP state's checkpoint."""
  from jaxgen import families
  results, references = {}, {}
  for spec in specs:
    name, data, fsdp = spec.split(':')
    config = _smoke_config(name)
    family = families.build(config, _smoke_spec(name))
    if name not in references:
      references[name] = _train_steps(family, config, _mesh(1, 1))[:2]
    reference, reference_losses = references[name]
    state, losses, batch = _train_steps(family, config, _mesh(int(data), int(fsdp)))
    leaves, fraction = _layout(state)
    results[spec] = dict(error=_error(state, reference), losses=losses, reference_losses=reference_losses,
                         leaves=leaves, sharded_bytes_fraction=fraction,
                         batch_shard_rows=_rows_per_device(batch))
    if spec == 'gpt:2:4':
      results['checkpoint'] = _checkpoint_round_trip(family, config, state, workdir)
  results['default_models'] = _default_model_fractions()
  return results


def _main(argv: list[str]) -> None:
  mode, args = argv[0], argv[1:]
  if mode == 'runs':
    from jaxgen.train import sharding
    for a in [a for a in args if a.startswith('--fsdp_min_size=')]:
      sharding.FSDP_MIN_SIZE = int(a.split('=')[1])
      args.remove(a)
    print(json.dumps(_runs(*args)))
  else:
    raise SystemExit(f'unknown mode {mode!r}')


if __name__ == '__main__':
  _main(sys.argv[1:])
