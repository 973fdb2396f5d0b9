"""The generic trainer: any Family, any data source, one mesh. No family-specific code lives here.

Randomness: keys derive from (seed, step) only, and the data iterator's position is checkpointed, so a
run resumed at any checkpoint equals an uninterrupted one bit for bit (same devices).
"""
import os
import signal
import time

import flax.linen as nn
import jax
import numpy as np
from tqdm import tqdm

from jaxgen import data, families
from jaxgen.errors import UserError
from jaxgen.train import checkpointing, sharding
from jaxgen.train.writers import RunWriter


def run_keys(seed: int) -> dict[str, jax.Array]:
  """Independent key streams of a run; the step is folded in at use: fold_in(keys[kind], step)."""
  return dict(zip(('init', 'train', 'eval', 'sample'), jax.random.split(jax.random.key(seed), 4)))


def abstract_state(family: families.Family, mesh, seed: int):
  """ShapeDtypeStructs, with their NamedShardings on `mesh`, of the state `family.init` makes."""
  boxed = jax.eval_shape(family.init, run_keys(seed)['init'])
  shardings = sharding.state_shardings(boxed, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.meta.unbox(boxed), shardings)


def create_state(family: families.Family, mesh, seed: int):
  """Initialise the state directly into its shardings; returns (state, shardings)."""
  shardings = jax.tree.map(lambda x: x.sharding, abstract_state(family, mesh, seed))
  state = jax.jit(lambda k: nn.meta.unbox(family.init(k)), out_shardings=shardings)(run_keys(seed)['init'])
  return state, shardings


def jit_train_step(family: families.Family, state_shardings, mesh):
  return jax.jit(family.train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh), None),
                 out_shardings=(state_shardings, None), donate_argnums=0)


def jit_eval_step(family: families.Family, state_shardings, mesh):
  return jax.jit(family.eval_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh), None))


def evaluate(eval_step, state, config, workdir, mesh, key) -> dict[str, float]:
  """Mean of the family's eval metrics over the test batches."""
  bsharding = sharding.batch_sharding(mesh)
  totals, n = {}, 0
  for i, local_batch in enumerate(data.eval_batches(config, workdir)):
    metrics = eval_step(state, sharding.global_batch(local_batch, bsharding), jax.random.fold_in(key, i))
    totals = jax.tree.map(lambda a, b: a + b, totals, metrics) if totals else metrics
    n += 1
  if not n:
    raise UserError(f'the test split has fewer than batch_size={config.batch_size} examples; '
                    'lower --config.batch_size or raise --config.data.eval_examples')
  return {f'eval/{k}': float(v) / n for k, v in jax.device_get(totals).items()}


class _StopRequest:
  """First SIGTERM/SIGINT: finish the step, checkpoint, exit. Second: the default behaviour (exit now)."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, sig, frame):
    self.signal = sig
    signal.signal(sig, self._previous[sig])

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _check_finite(step: int, metrics: dict[str, float]) -> None:
  bad = [k for k, v in metrics.items() if not np.isfinite(v)]
  if bad:
    raise UserError(f'non-finite {bad[0]}={metrics[bad[0]]} at step {step}; stopped without saving '
                    '(the last checkpoint is intact): lower --config.learning_rate or set --config.optim.grad_clip')


def train_and_evaluate(config, workdir: str):
  """Train `config` in `workdir`, resuming from its latest checkpoint; returns the final state."""
  workdir = os.path.abspath(workdir)
  data.setup(config, workdir)                       # may fill derived keys (image shape, vocab size)
  checkpointing.save_config(workdir, config)
  family = families.build(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(config.batch_size, mesh)
  keys = run_keys(config.seed)

  state, state_shardings = create_state(family, mesh, config.seed)
  train_iter = data.train_iterator(config, workdir)
  mngr = checkpointing.manager(workdir, keep=config.keep_checkpoints)
  step = mngr.latest_step() or 0
  if step:
    state = checkpointing.restore(mngr, step, abstract_state(family, mesh, config.seed), train_iter)
    print(f'resumed from {workdir}/checkpoints/{step}')
  if step >= config.num_train_steps:
    print(f'{workdir} is already trained to step {step} (num_train_steps={config.num_train_steps})')
    return state

  train_step = jit_train_step(family, state_shardings, mesh)
  eval_step = jit_eval_step(family, state_shardings, mesh)
  bsharding = sharding.batch_sharding(mesh)
  writer = RunWriter(workdir)
  pending, last_log_step, last_log_time, first_step_of_run = [], step, time.perf_counter(), True
  bar = tqdm(initial=step, total=config.num_train_steps, disable=jax.process_index() != 0,
             dynamic_ncols=True, mininterval=1.0, unit='step')
  try:
    with _StopRequest() as stop:
      while step < config.num_train_steps:
        batch = sharding.global_batch(next(train_iter), bsharding)
        state, metrics = train_step(state, batch, jax.random.fold_in(keys['train'], step))
        step += 1
        bar.update(1)
        if first_step_of_run:                      # keep compilation out of the throughput figures
          jax.block_until_ready(metrics)
          last_log_step, last_log_time, first_step_of_run = step, time.perf_counter(), False
        else:
          pending.append(metrics)
        is_last = step == config.num_train_steps
        stopping = stop.signal is not None

        if step % config.log_every_steps == 0 or is_last or stopping:
          means = {k: float(v) for k, v in jax.device_get(jax.tree.map(lambda *xs: np.mean(xs), *(pending or [metrics]))).items()}
          _check_finite(step, means)
          if step > last_log_step:
            steps_per_sec = (step - last_log_step) / (time.perf_counter() - last_log_time)
            means.update(steps_per_sec=steps_per_sec, examples_per_sec=steps_per_sec * config.batch_size)
          writer.scalars(step, means)
          bar.set_postfix(loss=f"{means['loss']:.4f}", ex_per_s=f'{means.get("examples_per_sec", 0):.0f}')
          pending, last_log_step, last_log_time = [], step, time.perf_counter()
        if step % config.eval_every_steps == 0 or is_last:
          eval_metrics = evaluate(eval_step, state, config, workdir, mesh, jax.random.fold_in(keys['eval'], step))
          writer.scalars(step, eval_metrics)
          bar.write(f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in eval_metrics.items()))
        if step % config.sample_every_steps == 0 or is_last:
          writer.samples(step, family.preview(state, batch, jax.random.fold_in(keys['sample'], step)))
        if step % config.checkpoint_every_steps == 0 or is_last or stopping:
          _check_finite(step, {'loss': float(metrics['loss'])})
          checkpointing.save(mngr, step, state, train_iter)
        if stopping:
          break
  finally:
    mngr.wait_until_finished()      # an in-flight save of a good state completes even on errors
    mngr.close()
    bar.close()
    writer.close()
  if stop.signal is not None:
    raise UserError(f'stopped by {signal.Signals(stop.signal).name} after step {step}; checkpoint saved. '
                    'Run the same command again to resume')
  return state
