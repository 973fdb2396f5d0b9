"""Benchmarks: python -m jaxgen.bench --config configs/<name>.py[:preset] [--steps N] [--sampler] [--data],
or a fixed suite: python -m jaxgen.bench --suite gpu (GPT-2 124M and the CIFAR-10 DDPM on one GPU; SUITES).

Training and sampling run on synthetic batches drawn from the family's batch spec (no dataset needed; a
config with stages, such as latent diffusion, runs on randomly initialised stages unless every stage is given
trained, --config.autoencoder_workdir=DIR ..., jaxgen.stages.spec); --data
times the real input pipeline alone, so a user sees whether input or compute bounds training. Prints one JSON
line per measurement, then a table. Keys (stable; null where the backend or family has no such figure):

  every line   bench ('train_step' | 'sampler' | 'data'), config, family, platform, device_kind, num_devices
  train_step   batch_size, compile_s (lower + compile), steps, step_ms_median, step_ms_p10, step_ms_p90,
               examples_per_s, tokens_per_s (language models: batch_size * tokens per example), num_params,
               flops_per_step (XLA cost analysis of the compiled step, all devices), flops_per_s,
               peak_flops_per_s (bf16 dense peak of the devices), mfu = flops_per_s / peak_flops_per_s,
               flops_per_step_6nt and mfu_6nt (language models: 6 N T with N the non-embedding parameters),
               peak_memory_bytes
  sampler      what the family's bench_sampler measures: sampler ('prior' | 'ddim' | 'ancestral' |
               'kv_cache' | 'no_kv_cache'), steps (diffusion), num, first_call_s (compile + one call),
               call_ms_median, samples_per_s; GPT: prompt_tokens, new_tokens, prefill_tokens_per_s,
               decode_tokens_per_s
  data         batch_size, batches, batch_ms_median, examples_per_s, tokens_per_s (language models)

Notes. XLA counts a loop body once, so for GPT with grad_accum_steps = A the count is that of one
micro-batch step times A. 6 N T leaves out the attention scores (12 L C T per token) and the tied
output projection (6 C V per token), which the XLA count includes. MFU is against the bf16 dense peak
whatever the compute dtype; there is none for CPUs.
"""
import json
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxgen import cli, config as config_lib, families, stages, timing
from jaxgen.timing import PEAK_FLOPS, peak_flops_per_device  # noqa: F401 -- bench's names for them
from jaxgen.errors import UserError
from jaxgen.train import sharding, trainer

FLAGS = flags.FLAGS

def device_info() -> dict:
  d = jax.devices()[0]
  return dict(platform=d.platform, device_kind=d.device_kind, num_devices=jax.device_count())


def peak_memory_bytes() -> int | None:
  """Largest peak_bytes_in_use over the local devices; None where the backend keeps no statistics (CPU)."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  peaks = [s['peak_bytes_in_use'] for s in stats if s and 'peak_bytes_in_use' in s]
  return max(peaks) if peaks else None


def synthetic_batch(family, batch_size: int, rng: np.random.Generator) -> dict:
  """This process's share of a batch drawn from the family's batch spec."""
  n = batch_size // jax.process_count()
  return {k: feature.synthetic(rng, n) for k, feature in family.batch_spec.items()}


def _xla_flops(compiled) -> float | None:
  """Per-device FLOPs of a compiled executable (XLA's cost analysis of the partitioned program)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) if cost and cost.get('flops', 0) > 0 else None


def compile_train_step(config, spec, family, mesh, batch):
  """(the trainer's jitted step lowered on the abstract state and compiled, seconds taken, FLOPs per step).

  FLOPs: XLA's cost analysis of the partitioned (per-device) program times the devices. XLA counts a loop body
  once: with grad_accum_steps = A > 1 they are the micro-batch step's times A, and with model.scan_layers those
  of the same step with its layers unrolled (compiled once more, for the count only).
  """
  abstract = trainer.abstract_state(family, mesh, config.seed)
  step = trainer.jit_train_step(family, jax.tree.map(lambda x: x.sharding, abstract), mesh)
  t0 = time.perf_counter()
  compiled = step.lower(abstract, batch, trainer.run_keys(config.seed)['train'], np.uint32(0)).compile()
  compile_s = time.perf_counter() - t0
  flops = _xla_flops(compiled)
  flops = flops and flops * mesh.devices.size
  accum = config.get('grad_accum_steps', 1)
  if flops and accum > 1:
    micro = config.copy_and_resolve_references()
    micro.batch_size, micro.grad_accum_steps = config.batch_size // accum, 1
    micro_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((micro.batch_size, *x.shape[1:]), x.dtype,
                                                              sharding=x.sharding), batch)
    flops = compile_train_step(micro, spec, families.build(micro, spec), mesh, micro_batch)[2]
    flops = flops and flops * accum
  elif flops and config.model.get('scan_layers'):
    unrolled = config.copy_and_resolve_references()
    unrolled.model.scan_layers = False
    flops = compile_train_step(unrolled, spec, families.build(unrolled, spec), mesh, batch)[2]
  return compiled, compile_s, flops


def bench_train(config, spec, family, mesh, state, steps: int, warmup: int):
  """(record, final state): compile, then time `steps` steps after `warmup` on one synthetic batch."""
  batch = sharding.global_batch(synthetic_batch(family, config.batch_size, np.random.default_rng(0)),
                                sharding.batch_sharding(mesh))
  compiled, compile_s, flops = compile_train_step(config, spec, family, mesh, batch)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  train_keys = trainer.run_keys(config.seed)['train']
  times = []
  for step in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, train_keys, np.uint32(step))
    jax.block_until_ready((state, metrics))
    if step >= warmup:
      times.append(time.perf_counter() - t0)
  if not np.isfinite(float(metrics['loss'])):
    raise UserError(f'the train step gave loss={float(metrics["loss"])} on synthetic data')
  ms = timing.percentiles_ms(times)
  step_s = ms['median'] / 1e3
  peak = peak_flops_per_device(jax.devices()[0])
  peak = peak and peak * mesh.devices.size
  record = dict(bench='train_step', batch_size=config.batch_size, compile_s=compile_s, steps=steps,
                step_ms_median=ms['median'], step_ms_p10=ms['p10'], step_ms_p90=ms['p90'],
                examples_per_s=config.batch_size / step_s, tokens_per_s=None, num_params=num_params,
                flops_per_step=flops, flops_per_s=flops and flops / step_s, peak_flops_per_s=peak,
                mfu=flops and peak and flops / step_s / peak, flops_per_step_6nt=None, mfu_6nt=None,
                peak_memory_bytes=peak_memory_bytes())
  if family.tokens_per_example:
    record['tokens_per_s'] = config.batch_size * family.tokens_per_example / step_s
  if family.model_flops_per_example:
    flops_6nt = family.model_flops_per_example(state.params) * config.batch_size
    record.update(flops_per_step_6nt=flops_6nt, mfu_6nt=peak and flops_6nt / step_s / peak)
  return record, state


def bench_sampler(family, state, num: int | None, repeats: int, **options):
  """The family's sampler benchmarks, or sampler(rng, num) timed as 'prior'."""
  if family.bench_sampler is not None:
    yield from family.bench_sampler(state, num, repeats, **options)
    return
  sampler, num = family.make_sampler(state), num or 64
  first, ms = timing.time_calls(lambda: sampler(jax.random.key(0), num=num), repeats)
  yield timing.sampler_record('prior', num, first, ms, samples_per_s=num / (ms['median'] / 1e3))


def bench_data(config, family, steps: int, warmup: int) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    dataset = stages.resolve(config, workdir)
    batches = (dataset.wire or dataset).train_iterator()     # what the trainer reads
    for _ in range(warmup):
      next(batches)
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      next(batches)
      times.append(time.perf_counter() - t0)
  total_s = sum(times)
  n = config.batch_size // jax.process_count()
  record = dict(bench='data', batch_size=n, batches=steps, batch_ms_median=timing.percentiles_ms(times)['median'],
                examples_per_s=n * steps / total_s, tokens_per_s=None)
  if family.tokens_per_example:
    record['tokens_per_s'] = n * steps * family.tokens_per_example / total_s
  return record


def _fmt(x, unit='') -> str:
  if x is None:
    return '-'
  for scale, suffix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= scale:
      return f'{x / scale:.3g}{suffix}{unit}'
  return f'{x:.3g}{unit}'


def table(records: list[dict]) -> str:
  """One readable row per record: what, time, throughput, FLOP/s and MFU."""
  rows = [('bench', 'what', 'first/compile', 'median [p10, p90]', 'throughput', 'FLOP/s', 'MFU')]
  for r in records:
    if r['bench'] == 'train_step':
      what = f"batch {r['batch_size']}"
      first = f"{r['compile_s']:.2f} s"
      time_ = f"{r['step_ms_median']:.2f} ms [{r['step_ms_p10']:.2f}, {r['step_ms_p90']:.2f}]"
      speed = f"{_fmt(r['examples_per_s'])} ex/s" + (f", {_fmt(r['tokens_per_s'])} tok/s" if r['tokens_per_s'] else '')
      mfu = '-' if r['mfu'] is None else f"{100 * r['mfu']:.1f}%" + (
          f" (6NT {100 * r['mfu_6nt']:.1f}%)" if r['mfu_6nt'] is not None else '')
      rows.append(('train_step', what, first, time_, speed, _fmt(r['flops_per_s']), mfu))
    elif r['bench'] == 'sampler':
      what = r['sampler'] + (f" {r['steps']} steps" if r['steps'] else '') + f" x{r['num']}"
      speed = (f"{_fmt(r['samples_per_s'])} samples/s" if 'samples_per_s' in r else
               f"prefill {_fmt(r['prefill_tokens_per_s'])} tok/s, decode {_fmt(r['decode_tokens_per_s'])} tok/s")
      rows.append(('sampler', what, f"{r['first_call_s']:.2f} s", f"{r['call_ms_median']:.2f} ms", speed, '-', '-'))
    else:
      rows.append(('data', f"batch {r['batch_size']}", '-', f"{r['batch_ms_median']:.2f} ms",
                   f"{_fmt(r['examples_per_s'])} ex/s", '-', '-'))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def run_benchmarks(config, config_name: str, *, train=True, steps=20, warmup=2, sampler=False, data_=False,
                   num=None, repeats=3, emit=lambda line: print(line, flush=True), **sampler_options):
  """Runs the chosen benchmarks; emits each record as a JSON line as it is measured and returns them.
  sampler_options go to the family's bench_sampler (ddim_steps, ancestral_num, prompt_tokens, new_tokens)."""
  if steps < 1 or repeats < 1:
    raise UserError(f'--steps={steps} and --repeats={repeats} must be >= 1')
  with tempfile.TemporaryDirectory() as workdir:
    spec = stages.spec(config, workdir)
  family = families.build(config, spec)
  common = dict(config=config_name, family=config.family, **device_info())
  records = []

  def emit_record(record):
    record = {'bench': record['bench'], **common, **record}
    emit(json.dumps(record))
    records.append(record)

  if train or sampler:                            # one state for both: creating it compiles the init
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(config.batch_size, mesh)
    state, _ = trainer.create_state(family, mesh, config.seed)
  if train:
    record, state = bench_train(config, spec, family, mesh, state, steps, warmup)
    emit_record(record)
  if sampler:
    for record in bench_sampler(family, state, num, repeats, **sampler_options):
      emit_record(record)
  if data_:
    emit_record(bench_data(config, family, steps, warmup))
  return records


# --suite NAME: (config, preset, overrides, run_benchmarks options) in order. 'gpu' fits in 8 minutes on one
# H100/H200, compiles included: GPT-2 124M in bf16 at nanoGPT's micro-batch (12 x 1024; 16 here) with its
# KV-cache sampler, and Ho et al.'s CIFAR-10 UNet (35.7M) in bf16 with DDIM-50 and ancestral sampling.
SUITES = {
    'gpu': (
        ('gpt2_124m', 'default', {'batch_size': 16, 'grad_accum_steps': 1},
         dict(steps=20, sampler=True, num=8, prompt_tokens=128, new_tokens=256)),
        ('ddpm_cifar10', 'default', {'model.dtype': 'bfloat16'},
         dict(steps=20, sampler=True, num=256, ddim_steps=50, ancestral_num=16, repeats=2)),
    ),
}


def run_suite(name: str, preset: str | None = None, emit=lambda line: print(line, flush=True)) -> list[list[dict]]:
  """The records of every config of SUITES[name], a list per config; preset replaces the suite's presets and
  sizes (smoke: the suite end to end on CPU, 2 timed steps)."""
  if name not in SUITES:
    raise UserError(f'unknown --suite {name!r}; choose one of {sorted(SUITES)}')
  records = []
  for config_name, suite_preset, overrides, options in SUITES[name]:
    config = config_lib.config_from_file(config_lib.named_config_file(config_name), preset or suite_preset)
    config.update_from_flattened_dict({} if preset else overrides)
    options = dict(steps=2, repeats=1, sampler=True, num=4, ddim_steps=5, ancestral_num=1) if preset else options
    records.append(run_benchmarks(config, f'{config_name}:{preset or suite_preset}', emit=emit, **options))
  return records


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'configs/<name>.py[:preset]', lock_config=True)
  flags.DEFINE_string('suite', None, f'run a suite of benchmarks instead of --config: {", ".join(SUITES)}')
  flags.DEFINE_string('suite_preset', None, 'run the suite at this preset of each config (smoke: a CPU check)')
  flags.DEFINE_integer('steps', 20, 'timed train steps (and data batches)')
  flags.DEFINE_integer('warmup', 2, 'untimed steps after compilation')
  flags.DEFINE_bool('train', True, 'benchmark the train step (--notrain to skip)')
  flags.DEFINE_bool('sampler', False, 'benchmark the sampler')
  flags.DEFINE_bool('data', False, 'benchmark the input pipeline (prepares the dataset if needed)')
  flags.DEFINE_integer('repeats', 3, 'timed sampler calls per measurement')
  flags.DEFINE_integer('num', None, 'samples per sampler call (default: 64 images, 8 GPT sequences)')
  flags.DEFINE_integer('ddim_steps', 50, 'diffusion: DDIM steps')
  flags.DEFINE_integer('ancestral_num', 8, 'diffusion: samples per ancestral call (all training timesteps)')
  flags.DEFINE_integer('prompt_tokens', None, 'GPT: prompt length (default block_size // 2)')
  flags.DEFINE_integer('new_tokens', None, 'GPT: generated tokens (default block_size - prompt_tokens)')
  flags.register_multi_flags_validator(('config', 'suite'), lambda f: f['config'] is not None or f['suite'],
                                       'give --config (or --suite)')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.suite:
    for records in run_suite(FLAGS.suite, FLAGS.suite_preset):
      print(f'\n{records[0]["config"]}\n{table(records)}')
    return
  config_name = FLAGS['config'].serialize().split('=', 1)[1]
  records = run_benchmarks(
      FLAGS.config, config_name, train=FLAGS.train, steps=FLAGS.steps, warmup=FLAGS.warmup,
      sampler=FLAGS.sampler, data_=FLAGS.data, num=FLAGS.num, repeats=FLAGS.repeats,
      ddim_steps=FLAGS.ddim_steps, ancestral_num=FLAGS.ancestral_num, prompt_tokens=FLAGS.prompt_tokens,
      new_tokens=FLAGS.new_tokens)
  print()
  print(table(records))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
