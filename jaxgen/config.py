"""The config keys every jaxgen config has (as in the Flax examples); families add theirs in `model`."""
import importlib.util
import os

import ml_collections
import numpy as np


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.family = ''                     # key into jaxgen.families.FAMILIES
  c.seed = 0
  c.batch_size = 128                # global, over all devices and processes
  c.num_train_steps = 10_000
  c.learning_rate = 1e-3
  c.log_every_steps = 100
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 1_000
  c.sample_every_steps = 1_000
  c.keep_checkpoints = 3
  c.num_preview = 64                # samples drawn for samples/step_<N>.png (or .txt)
  c.skip_nonfinite = False          # True: skip steps with non-finite loss/gradients instead of stopping
  c.init_from = ml_collections.config_dict.placeholder(str)   # pretrained checkpoint for step 0 (gpt: HF GPT-2
                                    # folder or Hub name, e.g. gpt2); a resumed run restores its own checkpoint
  c.profile_steps = ()              # (first, last): jax.profiler trace of those steps into DIR/plugins/profile
  c.wandb = ml_collections.ConfigDict()
  c.wandb.project = ml_collections.config_dict.placeholder(str)   # set: log to Weights & Biases too (pip install wandb)
  c.wandb.entity = ml_collections.config_dict.placeholder(str)
  c.wandb.name = ml_collections.config_dict.placeholder(str)      # default: the workdir's name

  c.model = ml_collections.ConfigDict()
  c.model.dtype = 'float32'         # compute dtype; parameters stay float32

  c.data = ml_collections.ConfigDict()
  c.data.modality = 'image'         # the source kind, jaxgen.data.MODALITIES: image | text | sentences | audio
  c.data.name = 'fashion_mnist'     # TFDS name (or text_file, see jaxgen.data.text)
  c.data.data_dir = ml_collections.config_dict.placeholder(str)    # TFDS data_dir (None: TFDS default)
  c.data.manual_dir = ml_collections.config_dict.placeholder(str)  # local raw files for offline prepare
  c.data.pixel_range = (-1.0, 1.0)  # images are scaled to this range
  c.data.num_workers = 0            # Grain worker processes (0: read in the main process)
  c.data.prefetch = 2               # batches buffered ahead of the train step
  c.data.eval_examples = 10_000     # at most this many test examples per evaluation

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.schedule = 'constant'     # constant | cosine (decays to lr * min_lr_ratio)
  c.optim.warmup_steps = 0
  c.optim.min_lr_ratio = 0.1
  c.optim.grad_clip = 0.0           # global-norm clip; 0 disables
  c.optim.ema_decay = 0.0           # EMA of parameters for sampling/eval, in [0, 1); 0 disables
  c.optim.ema_warmup = False        # True: decay min(ema_decay, (1 + n) / (10 + n)) after n updates

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                  # -1: all devices not used by other axes
  c.mesh.fsdp = 1
  return c


def set_schedule(c, steps: int, *, log: int, eval: int, checkpoint: int, sample: int) -> None:  # noqa: A002
  """A run of `steps` steps logging, evaluating, checkpointing and writing samples every so many steps."""
  c.num_train_steps = steps
  c.log_every_steps, c.eval_every_steps = log, eval
  c.checkpoint_every_steps, c.sample_every_steps = checkpoint, sample


def smoke(c, steps: int = 6, checkpoint: int = 3, sample: int | None = None, num_preview: int = 8) -> None:
  """The `smoke` preset's run (seconds; tests): batch 8, log every 2 steps, eval (and by default samples)
  at the end, checkpoints every `checkpoint` steps, 16 test examples."""
  c.batch_size = 8
  set_schedule(c, steps, log=2, eval=steps, checkpoint=checkpoint, sample=sample or steps)
  c.num_preview = num_preview
  c.data.eval_examples = 16


def apply_preset(c, preset: str, **presets) -> ml_collections.ConfigDict:
  """`c` changed by presets[preset](c); 'default' is `c` as it is. An unknown preset is one error line."""
  if preset != 'default' and preset not in presets:
    raise ValueError(f'unknown preset {preset!r}; choose one of {["default", *presets]}')
  if preset != 'default':
    presets[preset](c)
  return c


def named_config_file(name: str) -> str:
  """The file of a config shipped with jaxgen, by name ('gpt_shakespeare_char'): jaxgen/configs/ where jaxgen is
  installed (pip install . ships the checkout's configs/ there), else the checkout's configs/ next to jaxgen/
  (a checkout, or an editable install)."""
  package = os.path.dirname(os.path.abspath(__file__))
  folder = os.path.join(package, 'configs')
  if not os.path.isdir(folder):
    folder = os.path.join(os.path.dirname(package), 'configs')
  path = os.path.join(folder, f'{name}.py')
  if not os.path.exists(path):
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith('.py') and not f.startswith('_'))
    from jaxgen.errors import UserError
    raise UserError(f'no config named {name!r}; choose one of {", ".join(names)} (or give a config file path)')
  return path


def config_from_file(path: str, preset: str) -> ml_collections.ConfigDict:
  """get_config(preset) of the config file at `path`."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f'jaxgen_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def sibling_config(config_file: str, name: str, preset: str) -> ml_collections.ConfigDict:
  """get_config(preset) of the config `name`.py in the folder of `config_file` (a config built on another)."""
  return config_from_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py'), preset)


# ------------------------------------------------------------------------------------------- value ranges

# (predicate on the key's last name, lowest, highest, lowest included, highest included), first match wins.
# Driven by key names, so a family's new keys follow the same rules when they are named like these.
_RANGES = (
    (lambda k: k == 'ema_decay', 0.0, 1.0, True, False),
    (lambda k: k == 'top_p', 0.0, 1.0, False, True),
    (lambda k: k in ('learning_rate', 'batch_size', 'num_train_steps', 'keep_checkpoints', 'grad_accum_steps',
                     'eval_examples', 'r1_every', 'pl_every', 'pl_batch_shrink') or k.endswith('_every_steps'),
     0.0, None, False, False),
    (lambda k: k in ('dropout', 'eta', 'min_lr_ratio') or k.endswith(('_dropout', '_rate', '_prob', '_probability'))
     or k.startswith('p_'), 0.0, 1.0, True, True),
    (lambda k: k in ('warmup_steps', 'weight_decay', 'grad_clip', 'num_workers', 'prefetch', 'free_bits',
                     'num_preview', 'r1_gamma', 'pl_weight', 'pl_decay', 'ema_kimg', 'ema_rampup', 'center_crop',
                     'image_size'), 0.0, None, True, False),
)


def _describe(lo, hi, lo_in, hi_in) -> str:
  if hi is None:
    return f'{">=" if lo_in else ">"} {lo:g}'
  return f'{"[" if lo_in else "("}{lo:g}, {hi:g}{"]" if hi_in else ")"}'


def _leaves(d, prefix=''):
  for k, v in d.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      yield from _leaves(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


def _as_dict(config) -> dict:
  return config.to_dict() if hasattr(config, 'to_dict') else dict(config)


def value_errors(config, device_count: int | None = None) -> list[str]:
  """Every config value that cannot be right, as '<key>=<value> ...; valid: <range> (set --config.<key>)'
  lines: non-positive rates, sizes, steps and intervals, probabilities outside [0, 1], optim.ema_decay
  outside [0, 1), mesh sizes that are not positive (or -1) and, given device_count, do not multiply to it.
  Sub-configs (a stage's config such as `autoencoder`) are checked by the same rules."""
  errors = []
  leaves = dict(_leaves(_as_dict(config)))
  for key, value in leaves.items():
    name = key.rsplit('.', 1)[-1]
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    for matches, lo, hi, lo_in, hi_in in _RANGES:
      if matches(name):
        ok = (value >= lo if lo_in else value > lo) and (hi is None or (value <= hi if hi_in else value < hi))
        if not ok:
          errors.append(f'{key}={value!r} is out of range; valid: {_describe(lo, hi, lo_in, hi_in)} '
                        f'(set --config.{key})')
        break
  for prefix in sorted({k[:-len('mesh.data')] for k in leaves if k.endswith('mesh.data')}):
    sizes = {a: leaves.get(f'{prefix}mesh.{a}') for a in ('data', 'fsdp')}
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes.values()):
      continue
    shown = ' x '.join(f'{prefix}mesh.{a}={s}' for a, s in sizes.items())
    if list(sizes.values()).count(-1) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
      errors.append(f'{shown} is out of range; valid: positive sizes, at most one -1 (all remaining devices) '
                    f'(set --config.{prefix}mesh.data=-1)')
    elif device_count is not None:
      known = int(np.prod([s for s in sizes.values() if s != -1]))
      fits = device_count % known == 0 if -1 in sizes.values() else known == device_count
      if not fits:
        errors.append(f'{shown} does not multiply to the {device_count} devices; valid: sizes whose product is '
                      f'{device_count}, or -1 for one of them (set --config.{prefix}mesh.data=-1)')
  return errors


def validate(config, device_count: int | None = None) -> None:
  """Raise a UserError naming the first value that cannot be right (see value_errors); before any work."""
  errors = value_errors(config, device_count)
  if errors:
    from jaxgen.errors import UserError
    raise UserError(errors[0])
