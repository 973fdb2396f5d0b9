"""python -m jaxgen.bench: JSON lines with the documented keys and positive figures, on smoke configs."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxgen import bench, config as jaxgen_config, data, families
from jaxgen.train import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = {'bench', 'config', 'family', 'platform', 'device_kind', 'num_devices'}
TRAIN_KEYS = COMMON | {
    'batch_size', 'compile_s', 'steps', 'step_ms_median', 'step_ms_p10', 'step_ms_p90', 'examples_per_s',
    'tokens_per_s', 'num_params', 'flops_per_step', 'flops_per_s', 'peak_flops_per_s', 'mfu',
    'flops_per_step_6nt', 'mfu_6nt', 'peak_memory_bytes'}
IMAGE_SAMPLER_KEYS = COMMON | {'sampler', 'steps', 'num', 'first_call_s', 'call_ms_median', 'samples_per_s'}
GPT_SAMPLER_KEYS = COMMON | {'sampler', 'steps', 'num', 'first_call_s', 'call_ms_median', 'prompt_tokens',
                             'new_tokens', 'prefill_tokens_per_s', 'decode_tokens_per_s'}
# figures a backend or family may not have (null); every other figure must be a positive number
MAY_BE_NULL = {'tokens_per_s', 'peak_flops_per_s', 'mfu', 'flops_per_step_6nt', 'mfu_6nt', 'peak_memory_bytes',
               'steps'}


def load_config(name: str, preset: str = 'smoke'):
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  if not os.path.exists(path):
    pytest.skip(f'configs/{name}.py does not exist yet (its family has not landed)')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def run(name: str, **options) -> list[dict]:
  return run_on(load_config(name), **options)


def run_on(config, **options) -> list[dict]:
  lines = []
  records = bench.run_benchmarks(config, f'configs/{config.family}:smoke', emit=lines.append, **options)
  assert [json.loads(line) for line in lines] == records        # each record is emitted as one JSON line
  return records


def assert_positive_figures(record: dict) -> None:
  for key, value in record.items():
    if key in COMMON or key == 'sampler' or (value is None and key in MAY_BE_NULL):
      continue
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


@pytest.fixture(scope='module')
def vae_records():
  return run('vae_fashion_mnist', steps=2, warmup=1, sampler=True, num=8, repeats=1)


def test_vae_train_line_has_the_documented_keys_and_positive_figures(vae_records):
  train = vae_records[0]
  assert train['bench'] == 'train_step' and set(train) == TRAIN_KEYS
  assert_positive_figures(train)
  assert train['family'] == 'vae' and train['num_devices'] == jax.device_count()
  assert train['examples_per_s'] == pytest.approx(8 / (train['step_ms_median'] / 1e3))
  assert train['step_ms_p10'] <= train['step_ms_median'] <= train['step_ms_p90']
  if train['platform'] == 'cpu':
    assert train['mfu'] is None and train['tokens_per_s'] is None


def test_vae_sampler_line_reports_samples_per_second(vae_records):
  (sampler,) = vae_records[1:]
  assert set(sampler) == IMAGE_SAMPLER_KEYS and sampler['sampler'] == 'prior' and sampler['num'] == 8
  assert_positive_figures(sampler)


def test_table_has_a_row_per_record(vae_records):
  lines = bench.table(vae_records).splitlines()
  assert len(lines) == 1 + len(vae_records) and lines[1].startswith('train_step')


def test_gan_smoke_bench():
  train, sampler = run('gan_fashion_mnist', steps=2, warmup=1, sampler=True, num=8, repeats=1)
  assert set(train) == TRAIN_KEYS and set(sampler) == IMAGE_SAMPLER_KEYS
  assert_positive_figures(train)
  assert_positive_figures(sampler)


def test_gpu_suite_runs_gpt2_and_the_cifar10_ddpm_end_to_end_at_the_smoke_preset():
  """The suite's CPU path: every config of `--suite gpu` at its smoke preset, train step and samplers."""
  lines = []
  gpt2, ddpm = bench.run_suite('gpu', 'smoke', emit=lines.append)
  assert [json.loads(line) for line in lines] == gpt2 + ddpm
  assert [r['config'] for r in gpt2 + ddpm] == ['gpt2_124m:smoke'] * 3 + ['ddpm_cifar10:smoke'] * 3
  assert [r.get('sampler') for r in gpt2] == [None, 'kv_cache', 'no_kv_cache']
  config = load_config('ddpm_cifar10')
  (train, ddim, ancestral) = ddpm
  assert set(train) == TRAIN_KEYS and set(ddim) == set(ancestral) == IMAGE_SAMPLER_KEYS
  assert (ddim['sampler'], ddim['steps']) == ('ddim', 5)
  assert (ancestral['sampler'], ancestral['steps']) == ('ancestral', config.model.timesteps)
  for record in gpt2 + ddpm:
    assert_positive_figures(record)
  for config_name, preset, overrides, _ in bench.SUITES['gpu']:     # the real sizes are valid configs
    config = load_config(config_name, preset)
    config.update_from_flattened_dict(overrides)
    jaxgen_config.validate(config, 1)


def test_gpt_smoke_bench_reports_tokens_and_both_decoding_paths():
  config = load_config('gpt_shakespeare_char')
  train, cached, uncached = run('gpt_shakespeare_char', steps=2, warmup=1, sampler=True, num=2, repeats=1)
  assert set(train) == TRAIN_KEYS and set(cached) == set(uncached) == GPT_SAMPLER_KEYS
  tokens = config.batch_size * config.model.block_size
  assert train['tokens_per_s'] == pytest.approx(tokens / (train['step_ms_median'] / 1e3))
  assert 0 < train['flops_per_step_6nt'] < train['flops_per_step']   # 6NT leaves out attention and the head
  assert (cached['sampler'], uncached['sampler']) == ('kv_cache', 'no_kv_cache')
  for record in (train, cached, uncached):
    assert_positive_figures(record)


def test_flops_count_every_gradient_accumulation_micro_batch():
  config = load_config('gpt2_124m')                       # smoke: batch 8 in 2 micro-batches
  assert config.grad_accum_steps == 2
  mesh = sharding.make_mesh(config.mesh)
  spec = data.synthetic_spec(config)
  batch = sharding.global_batch(bench.synthetic_batch(families.build(config, spec), config.batch_size,
                                                      np.random.default_rng(0)), sharding.batch_sharding(mesh))

  def flops(config):
    return bench.compile_train_step(config, spec, families.build(config, spec), mesh, batch)[2]

  accumulated = flops(config)
  config.grad_accum_steps = 1
  assert accumulated == pytest.approx(flops(config), rel=0.05)   # the optimizer update is counted twice


def test_peak_flops_table_knows_accelerators_and_not_cpus():
  class Device:
    def __init__(self, platform, device_kind):
      self.platform, self.device_kind = platform, device_kind
  assert bench.peak_flops_per_device(Device('gpu', 'NVIDIA H100 80GB HBM3')) == 989e12
  assert bench.peak_flops_per_device(Device('gpu', 'NVIDIA A100-SXM4-40GB')) == 312e12
  assert bench.peak_flops_per_device(Device('tpu', 'TPU v5 lite')) == 197e12
  assert bench.peak_flops_per_device(Device('tpu', 'TPU v4')) == 275e12
  assert bench.peak_flops_per_device(Device('cpu', 'cpu')) is None


def test_cli_bad_preset_is_one_line_error(cli):
  proc = cli('-m', 'jaxgen.bench', '--config', 'configs/vae_fashion_mnist.py:nope', mock_data=False, check=False)
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'nope' in errors[0]


def test_importing_bench_and_eval_defines_no_flags():
  """Both CLIs define --num, --steps, --sampler...: only when run as programs, so they import side by side."""
  import absl.flags
  from jaxgen import eval as jaxgen_eval
  del jaxgen_eval
  assert not {'steps', 'sampler', 'num', 'config'} & set(absl.flags.FLAGS)


def test_data_bench_reads_the_real_pipeline(tmp_path):
  config = load_config('gpt_shakespeare_char')
  config.data.text_file = str(tmp_path / 'corpus.txt')
  (tmp_path / 'corpus.txt').write_text('to be or not to be, that is the question\n' * 200)
  (record,) = run_on(config, train=False, data_=True, steps=3, warmup=1)
  assert set(record) == COMMON | {'batch_size', 'batches', 'batch_ms_median', 'examples_per_s', 'tokens_per_s'}
  assert record['batches'] == 3 and record['batch_size'] == config.batch_size
  assert record['tokens_per_s'] == pytest.approx(record['examples_per_s'] * config.model.block_size)
  assert_positive_figures(record)


def test_jaxgen_keeps_cpu_convolutions_off_ynnpack_unless_the_user_chose():
  """Importing jaxgen appends the flag that keeps XLA:CPU convolutions on Eigen (twice YNNPACK's rate here), and
  leaves a user's own YNNPACK setting alone."""
  import jaxlib.version
  if tuple(int(p) for p in jaxlib.version.__version__.split('.')[:3]) < (0, 8, 2):
    pytest.skip('jaxlib < 0.8.2 has no YNNPACK convolutions')
  probe = ('import os, jaxgen, jax, jax.numpy as jnp\n'
           'conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", '
           'dimension_numbers=("NHWC", "HWIO", "NHWC")))\n'
           'hlo = conv.lower(jnp.ones((1, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()\n'
           'print(os.environ["XLA_FLAGS"]); print("__ynn_fusion" in hlo)')
  def probe_with(xla_flags):
    env = dict(os.environ, XLA_FLAGS=xla_flags)
    out = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split('\n')[:2]
  assert probe_with('') == ['--xla_cpu_experimental_ynn_fusion_type=-individual_convolution', 'False']
  users = '--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution'
  assert probe_with(users) == [users, 'True']
