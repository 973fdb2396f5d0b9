"""DDPM on Fashion-MNIST (28x28x1): a Ho et al. UNet scaled to the dataset, T = 1000 linear schedule.

python train.py --config configs/ddpm_fashion_mnist.py:cpu --workdir runs/ddpm_fmnist
python sample.py --workdir runs/ddpm_fmnist --steps 50 --out grid.png
"""
import ml_collections

from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = base_config()
  c.family = 'ddpm'
  c.data.name = 'fashion_mnist'
  c.data.pixel_range = (-1.0, 1.0)

  c.batch_size = 128
  c.learning_rate = 2e-4
  set_schedule(c, 100_000, log=100, eval=5_000, checkpoint=5_000, sample=5_000)
  c.data.eval_examples = 2_048
  c.optim.name = 'adam'
  c.optim.warmup_steps = 5_000
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = True          # min(decay, (1 + n) / (10 + n)): short runs get a useful EMA

  m = c.model                        # UNet and diffusion process (both fix the checkpoint)
  m.ch = 64
  m.ch_mult = (1, 2, 2)              # 28 -> 14 -> 7
  m.num_res_blocks = 2
  m.attn_resolutions = (14,)
  m.dropout = 0.1
  m.num_heads = 1
  m.norm_groups = 32
  m.num_classes = 0                  # > 0: class-conditional, with classifier-free guidance
  m.p_uncond = 0.1                   # label dropout probability when conditional
  m.random_flip = False
  m.timesteps = 1000
  m.beta_schedule = 'linear'         # linear | cosine
  m.prediction = 'eps'               # eps | v

  s = c.sampling = ml_collections.ConfigDict()   # defaults of the sampler; sample.py flags override
  s.steps = ml_collections.config_dict.placeholder(int)      # None: model.timesteps
  s.sampler = ml_collections.config_dict.placeholder(str)    # None: ancestral at T steps, else ddim
  s.eta = 0.0
  s.guidance = 0.0
  s.sigma = 'beta'                   # ancestral variance: beta | beta_tilde
  s.clip_x0 = True

  def cpu(c):                        # ~1.4M parameters, most of them at 14x14 and 7x7 where convs are cheap
    c.batch_size = 64
    c.learning_rate = 1e-3
    set_schedule(c, 1_200, log=50, eval=400, checkpoint=400, sample=400)
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.995
    c.data.eval_examples = 1_024
    c.num_preview = 40               # 4 per class
    m.ch = 16
    m.ch_mult = (1, 3, 6)            # 16 @ 28x28, 48 @ 14x14, 96 @ 7x7
    m.num_res_blocks = 1
    m.attn_resolutions = ()          # self-attention only in the middle (7x7)
    m.dropout = 0.0
    m.norm_groups = 8
    m.num_classes = 10
    s.steps = 50
    s.guidance = 1.0

  def smoke_(c):
    smoke(c, steps=4, checkpoint=4)
    c.optim.warmup_steps = 0
    m.ch = 8
    m.ch_mult = (1, 2)
    m.num_res_blocks = 1
    m.dropout = 0.0
    m.norm_groups = 4
    m.num_classes = 10
    s.steps = 5
    s.guidance = 1.0

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
