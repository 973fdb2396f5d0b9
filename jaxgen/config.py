"""The config keys every jaxgen config has (as in the Flax examples); families add theirs in `model`."""
import importlib.util
import os

import ml_collections


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

  c.model = ml_collections.ConfigDict()
  c.model.dtype = 'float32'         # compute dtype; parameters stay float32

  c.data = ml_collections.ConfigDict()
  c.data.modality = 'image'         # the source kind, jaxgen.data.MODALITIES: image | text | sentences
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


def sibling_config(config_file: str, name: str, preset: str) -> ml_collections.ConfigDict:
  """get_config(preset) of the config `name`.py in the folder of `config_file` (a config built on another)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'jaxgen_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)
