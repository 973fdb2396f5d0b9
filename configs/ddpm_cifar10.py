"""DDPM on CIFAR-10 (32x32x3), Ho et al. 2020's setting: 35.7M-parameter UNet, T = 1000, 800k steps at batch 128.

python train.py --config configs/ddpm_cifar10.py --workdir runs/ddpm_cifar10   # accelerator; bf16 via
  --config.model.dtype=bfloat16
"""
import ml_collections

from jaxgen.config import apply_preset, set_schedule, sibling_config, smoke


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = sibling_config(__file__, 'ddpm_fashion_mnist', 'default')   # the same UNet and diffusion keys
  c.data.name = 'cifar10'
  set_schedule(c, 800_000, log=100, eval=10_000, checkpoint=10_000, sample=10_000)
  c.data.eval_examples = 10_000
  m = c.model
  m.ch = 128
  m.ch_mult = (1, 2, 2, 2)           # 32 -> 16 -> 8 -> 4
  m.attn_resolutions = (16,)
  m.random_flip = True               # the paper trains CIFAR-10 with random horizontal flips

  def smoke_(c):
    smoke(c, steps=4, checkpoint=4)
    c.optim.warmup_steps = 0
    m.ch = 16
    m.ch_mult = (1, 2)
    m.num_res_blocks = 1
    m.dropout = 0.0
    m.norm_groups = 8
    m.timesteps = 20                 # the ancestral sampler's 20 steps, not 1000, in a CPU check
    c.sampling.steps = 5

  return apply_preset(c, preset, smoke=smoke_)
