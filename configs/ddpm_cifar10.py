"""DDPM on CIFAR-10 (32x32x3), Ho et al. 2020's setting: 35.7M-parameter UNet, T = 1000, 800k steps at batch 128.

python train.py --config configs/ddpm_cifar10.py --workdir runs/ddpm_cifar10   # accelerator; bf16 via
  --config.model.dtype=bfloat16
"""
import ml_collections

from jaxgen.config import base_config

PRESETS = ('default', 'smoke')


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose one of {PRESETS}')
  c = base_config()
  c.family = 'ddpm'
  c.data.name = 'cifar10'
  c.data.image_shape = (32, 32, 3)
  c.data.pixel_range = (-1.0, 1.0)

  c.batch_size = 128
  c.num_train_steps = 800_000
  c.learning_rate = 2e-4
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 10_000
  c.data.eval_examples = 10_000
  c.optim.name = 'adam'
  c.optim.warmup_steps = 5_000
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.9999

  m = c.model
  m.ch = 128
  m.ch_mult = (1, 2, 2, 2)           # 32 -> 16 -> 8 -> 4
  m.num_res_blocks = 2
  m.attn_resolutions = (16,)
  m.dropout = 0.1
  m.num_heads = 1
  m.norm_groups = 32
  m.num_classes = 0
  m.p_uncond = 0.1
  m.random_flip = True               # the paper trains CIFAR-10 with random horizontal flips
  m.timesteps = 1000
  m.beta_schedule = 'linear'
  m.prediction = 'eps'

  s = c.sampling = ml_collections.ConfigDict()
  s.steps = ml_collections.config_dict.placeholder(int)      # None: model.timesteps (ancestral)
  s.sampler = ml_collections.config_dict.placeholder(str)
  s.eta = 0.0
  s.guidance = 0.0
  s.sigma = 'beta'                   # the paper's CIFAR-10 samples use sigma_t^2 = beta_t
  s.clip_x0 = True

  if preset == 'smoke':
    c.batch_size = 8
    c.num_train_steps = 4
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 4
    c.sample_every_steps = 4
    c.num_preview = 8
    c.data.eval_examples = 16
    c.optim.warmup_steps = 0
    m.ch = 16
    m.ch_mult = (1, 2)
    m.num_res_blocks = 1
    m.dropout = 0.0
    m.norm_groups = 8
    s.steps = 5
  return c
