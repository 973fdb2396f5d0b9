"""The generic trainer: any Family, any Dataset, one mesh. No family-specific code lives here.

Randomness: keys derive from (seed, step) only, and the data iterator's position is checkpointed, so a
run resumed at any checkpoint equals an uninterrupted one bit for bit (same devices). Stages and data are
resolved before (jaxgen.stages.train_and_evaluate); the trainer gets the Dataset. A fresh run with
config.init_from starts from the family's seed_state (a pretrained checkpoint) instead of its random init.

The log (metrics.jsonl, TensorBoard, W&B) has steps/s and examples/s, tokens/s for language models and
MFU = 6 N T tokens/s / peak FLOP/s of the devices where the family counts its model FLOPs and the device's
peak is known (jaxgen.timing.PEAK_FLOPS; none for CPUs). config.profile_steps = (first, last) traces steps
first..last with jax.profiler into DIR/plugins/profile (TensorBoard's Profile tab).
"""
import errno
import functools
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxgen import config as config_lib, data, families, files, timing
from jaxgen.errors import UserError
from jaxgen.train import checkpointing, lock, sharding, writers
from jaxgen.train.state import abstract_state, create_state, run_keys
from jaxgen.train.writers import RunWriter


class Stopped(UserError):
  """Training stopped early on request (SIGTERM/SIGINT) after saving a checkpoint."""


def all_finite(tree) -> jax.Array:
  """True iff every floating-point leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def state_is_finite(state) -> bool:
  """True iff every floating-point value of `state` is finite, on every process. Checked on the host, shard by
  shard (one replica of each): on CPU the shards are read in place, on an accelerator it is one device-to-host
  copy per checkpoint; a device program would reduce each leaf in its own kernel, and compiling that costs
  seconds on XLA:CPU, more than a short run's steps."""
  ok = all(np.isfinite(np.asarray(shard.data)).all()
           for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)
           for shard in x.addressable_shards if shard.replica_id == 0)
  if jax.process_count() > 1:
    ok = bool(np.all(multihost_utils.process_allgather(np.bool_(ok))))
  return bool(ok)


def mean_metrics(pending: list[dict]) -> dict[str, float]:
  """The mean of each metric over the steps since the last log, NaNs (skipped steps) left out; on the host, so
  that a log costs one device-to-host copy and no device programs."""
  pending = jax.device_get(pending)
  means = {}
  for k in pending[0]:
    values = np.array([m[k] for m in pending], np.float32)
    values = values[~np.isnan(values)]
    means[k] = float(values.mean()) if values.size else float('nan')
  return means


@functools.lru_cache(maxsize=8)     # one wrapper per step function: jax.jit's caches see the same function
def _skipping_nonfinite(train_step):
  def step_fn(state, batch, rng):
    new_state, metrics = train_step(state, batch, rng)
    ok = all_finite(metrics) & all_finite(new_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    metrics = jax.tree.map(lambda m: jnp.where(ok, m, jnp.nan), metrics)
    return new_state, {**metrics, 'skipped': 1.0 - ok.astype(jnp.float32)}
  return step_fn


@functools.lru_cache(maxsize=8)     # one wrapper per step function: jax.jit's caches see the same function
def _keyed(step_fn, to_model=None):
  """step_fn with the step's key fold_in(key, step) made inside the program, not by a dispatch per step, and
  the batch mapped by to_model there (a data Wire's: uint8 pixels to the model's floats on the device)."""
  @functools.wraps(step_fn)
  def keyed(state, batch, key, step):
    return step_fn(state, batch if to_model is None else to_model(batch), jax.random.fold_in(key, step))
  return keyed


def jit_train_step(family, state_shardings, mesh, skip_nonfinite: bool = False, to_model=None):
  """The family's step, jitted on the mesh, as fn(state, batch, key, step) -> (state, metrics) with the
  family's rng = fold_in(key, step) and batch to_model(batch) (None: as given). With skip_nonfinite, a step
  whose metrics or new state are not finite leaves the state unchanged, reports skipped=1 and NaN for its other
  metrics (left out of the means)."""
  step_fn = _skipping_nonfinite(family.train_step) if skip_nonfinite else family.train_step
  return jax.jit(_keyed(step_fn, to_model),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh), None, None),
                 out_shardings=(state_shardings, None), donate_argnums=0)


def jit_eval_step(family, state_shardings, mesh):
  return jax.jit(family.eval_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh), None))


def evaluate(eval_step, state, config, batches, mesh, key) -> dict[str, float]:
  """Mean of the family's eval metrics over the test batches (this process's rows of each)."""
  bsharding = sharding.batch_sharding(mesh)
  totals, n = {}, 0
  for i, local_batch in enumerate(batches):
    metrics = eval_step(state, sharding.global_batch(local_batch, bsharding), jax.random.fold_in(key, i))
    totals = jax.tree.map(lambda a, b: a + b, totals, metrics) if totals else metrics
    n += 1
  if not n:
    raise UserError(f'the test split has fewer than batch_size={config.batch_size} examples; '
                    'lower --config.batch_size or raise --config.data.eval_examples')
  return {f'eval/{k}': float(v) / n for k, v in jax.device_get(totals).items()}


class StopRequest:
  """First SIGTERM/SIGINT: finish the step, checkpoint, exit. A second one: the default behaviour (exit now)."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, sig, frame):
    del frame
    self.signal = sig
    signal.signal(sig, self._previous[sig])

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_batch(batch_spec, local_batch, rows: int) -> None:
  """The data source's batch (arrays, or their jax.ShapeDtypeStructs) has the names, per-example shapes and dtypes
  the family declared."""
  got = {k: (tuple(np.shape(v)), np.dtype(v.dtype)) for k, v in local_batch.items()}
  want = {k: ((rows, *f.shape), np.dtype(f.dtype)) for k, f in batch_spec.items()}
  if got != want:
    show = lambda d: ', '.join(f'{k}: {t} {s}' for k, (s, t) in sorted(d.items()))
    raise UserError(f'the data gives batches {{{show(got)}}} but the family reads {{{show(want)}}}: check '
                    'data.modality and the data keys of the config')


def check_finite(step: int, metrics: dict[str, float]) -> None:
  bad = [k for k, v in metrics.items() if not np.isfinite(v)]
  if bad:
    raise UserError(f'non-finite {bad[0]}={metrics[bad[0]]} at step {step}; stopped without saving (the last '
                    'checkpoint is intact): lower --config.learning_rate, set --config.optim.grad_clip, or '
                    '--config.skip_nonfinite=True')


class _Throughput:
  """Steps/s, examples/s, tokens/s (tokens_per_example given) and MFU (model FLOPs per example and the devices'
  peak FLOP/s given) between log points, with compilation (the run's first step) left out."""

  def __init__(self, step: int, batch_size: int, tokens_per_example: int | None = None,
               flops_per_example: float | None = None, peak_flops_per_s: float | None = None):
    self.batch_size, self.step, self.time, self.warm = batch_size, step, None, False
    self.tokens_per_example, self.flops_per_example = tokens_per_example, flops_per_example
    self.peak_flops_per_s = peak_flops_per_s

  def started(self, step: int, metrics) -> None:
    if not self.warm:
      jax.block_until_ready(metrics)
      self.step, self.time, self.warm = step, time.perf_counter(), True

  def rates(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    rates = {}
    if self.time is not None and step > self.step:
      steps_per_sec = (step - self.step) / (now - self.time)
      rates = dict(steps_per_sec=steps_per_sec, examples_per_sec=steps_per_sec * self.batch_size)
      if self.tokens_per_example:
        rates['tokens_per_sec'] = rates['examples_per_sec'] * self.tokens_per_example
      if self.flops_per_example and self.peak_flops_per_s:
        rates['mfu'] = rates['examples_per_sec'] * self.flops_per_example / self.peak_flops_per_s
    self.step, self.time = step, now
    return rates


class _Profiler:
  """jax.profiler.trace of steps first..last (config.profile_steps = (first, last), or (step,)) into
  DIR/plugins/profile; no steps: nothing."""

  def __init__(self, steps, workdir: str):
    steps = tuple(steps or ())
    self.first, self.last = (min(steps), max(steps)) if steps else (None, None)
    self.workdir, self.on = workdir, False

  def before(self, step: int) -> None:
    """Called before step `step` (1-based, as logged) runs."""
    if step == self.first and jax.process_index() == 0:
      jax.profiler.start_trace(self.workdir)
      self.on = True

  def after(self, step: int, outputs) -> None:
    if self.on and step >= self.last:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    if self.on:
      jax.profiler.stop_trace()
      self.on = False


def train(config, workdir: str, dataset: data.Dataset):
  """Train `config` in `workdir` on `dataset`, resuming from its newest intact checkpoint; the final state.
  config.json gets the config as given, spec.json the dataset's spec.

  Everything that can be refused is refused before anything is written (one UserError line): values out of
  range (jaxgen.config.validate), a workdir that is a file, a mesh or batch size the devices cannot take, a
  model the family cannot build on this data, a workdir of another model or other data, damaged
  config.json / spec.json, and a workdir another run is training (jaxgen.train.lock)."""
  workdir = files.absolute(workdir)
  config_lib.validate(config, jax.device_count())
  lock.check_directory(workdir)
  writers.check(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(config.batch_size, mesh)
  family = families.build(config, dataset.spec)
  if config.get('init_from') and family.seed_state is None:
    raise UserError(f'the {config.family} family cannot start from a pretrained checkpoint: unset '
                    '--config.init_from')
  checkpointing.check_config(workdir, config)
  checkpointing.check_spec(workdir, dataset.spec)
  with lock.hold(workdir):
    try:
      return _train(config, workdir, dataset, family, mesh)
    except Exception as e:  # pylint: disable=broad-except
      full = _disk_full(e)
      if full is None:
        raise
      steps = checkpointing.finished_steps(workdir)
      raise UserError(f'no space left on device writing {full}; training stopped and the last complete checkpoint '
                      f'({steps[-1] if steps else "none yet"}) is intact: free space and run the same command again '
                      'to resume') from e


def _disk_full(e: BaseException) -> str | None:
  """The file (or 'the workdir') a write failed on for lack of space (ENOSPC, EDQUOT), anywhere in e's chain."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return e.filename or 'the workdir'
    if 'No space left on device' in str(e) or 'Disk quota exceeded' in str(e):   # wrapped by Orbax/TensorStore
      return 'the workdir'
    e = e.__cause__ or e.__context__
  return None


def _train(config, workdir: str, dataset: data.Dataset, family, mesh):
  checkpointing.save_config(workdir, config)
  checkpointing.save_spec(workdir, dataset.spec)
  keys = run_keys(config.seed)

  wire = dataset.wire or data.Wire(dataset.train_iterator, None)
  train_iter = wire.train_iterator()
  to_model = wire.to_model or (lambda batch: batch)
  mngr = checkpointing.manager(workdir, keep=config.keep_checkpoints)
  step = 0
  if mngr.latest_step() is not None:              # restored straight into its shardings: no init is compiled
    abstract = abstract_state(family, mesh, config.seed)
    state_shardings = jax.tree.map(lambda x: x.sharding, abstract)
    step, state = checkpointing.restore_newest_intact(mngr, abstract, train_iter)
    print(f'resumed from {workdir}/checkpoints/{step}')
  else:
    state, state_shardings = create_state(family, mesh, config.seed)
    if config.get('init_from'):
      state = family.seed_state(state)
      print(f'initialised from the pretrained {config.init_from}')
  if step >= config.num_train_steps:
    mngr.close()
    print(f'{workdir} is already trained to step {step} (num_train_steps={config.num_train_steps})')
    return state

  train_step = jit_train_step(family, state_shardings, mesh, config.skip_nonfinite, wire.to_model)
  eval_step = jit_eval_step(family, state_shardings, mesh)
  bsharding = sharding.batch_sharding(mesh)
  writer = RunWriter(workdir, resume_step=step, config=config)   # rows past the restored step are dropped
  peak = timing.peak_flops_per_device(jax.devices()[0])
  throughput = _Throughput(
      step, config.batch_size, family.tokens_per_example,
      family.model_flops_per_example and family.model_flops_per_example(state.params),
      peak and peak * jax.device_count())
  profiler = _Profiler(config.get('profile_steps'), workdir)
  pending = []                                      # metrics (on device) since the last log
  bar = tqdm(initial=step, total=config.num_train_steps, disable=jax.process_index() != 0,
             dynamic_ncols=True, mininterval=1.0, unit='step')

  saved = []

  def save(step):
    if not state_is_finite(state):                  # never save a state that went non-finite
      check_finite(step, {'state': float('nan')})
    checkpointing.save(mngr, step, state, train_iter)
    saved.append(step)

  try:
    with StopRequest() as stop:
      while step < config.num_train_steps and stop.signal is None:
        local_batch = next(train_iter)              # this process's numpy share of the global batch
        if not pending:
          check_batch(family.batch_spec, local_batch if wire.to_model is None else
                      jax.eval_shape(wire.to_model, local_batch), config.batch_size // jax.process_count())
        profiler.before(step + 1)
        state, metrics = train_step(state, sharding.global_batch(local_batch, bsharding), keys['train'],
                                    np.uint32(step))
        step += 1
        profiler.after(step, metrics)
        bar.update(1)
        throughput.started(step, metrics)
        pending.append(metrics)
        done = step == config.num_train_steps or stop.signal is not None

        if step % config.log_every_steps == 0 or done:
          # skipped steps (skip_nonfinite) are left out of the means; otherwise a non-finite value stops the run
          means = mean_metrics(pending)
          if not config.skip_nonfinite:
            check_finite(step, means)
          means.update(throughput.rates(step))
          writer.scalars(step, means)
          bar.set_postfix(loss=f"{means['loss']:.4f}", ex_per_s=f"{means.get('examples_per_sec', 0):.0f}",
                          **{k: f'{means[k]:.3g}' for k in ('tokens_per_sec', 'mfu') if k in means})
          pending = []
        if step % config.eval_every_steps == 0 or step == config.num_train_steps:
          eval_metrics = evaluate(eval_step, state, config, dataset.eval_batches(), mesh,
                                  jax.random.fold_in(keys['eval'], step))
          writer.scalars(step, eval_metrics)
          bar.write(f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in eval_metrics.items()))
        if step % config.sample_every_steps == 0 or step == config.num_train_steps:
          paths = writer.samples(step, family.sample_kind,
                                 family.preview(state, to_model(local_batch), jax.random.fold_in(keys['sample'], step)))
          if paths:
            bar.write(f'step {step}: samples in {", ".join(paths)}')
        if step % config.checkpoint_every_steps == 0 or done:
          save(step)
      if stop.signal is not None and saved[-1:] != [step]:   # the signal came after this step's checks
        save(step)
  finally:
    profiler.stop()
    try:
      mngr.wait_until_finished()    # an in-flight save of a good state completes even when stopping on errors
      mngr.close()
    finally:
      bar.close()
      writer.close()
  if stop.signal is not None:
    raise Stopped(f'stopped by {signal.Signals(stop.signal).name} at step {step} with a checkpoint saved; '
                  'run the same command again to resume')
  return state
