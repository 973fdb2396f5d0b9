"""Latent diffusion on Fashion-MNIST: DDPM on the 16-d latents of a jaxgen VAE, class-conditional with CFG.

python train.py --config configs/ldm_fashion_mnist.py:cpu --workdir runs/ldm      # trains the VAE first
python train.py --config configs/ldm_fashion_mnist.py:cpu --workdir runs/ldm --config.autoencoder_workdir=runs/vae
python sample.py --workdir runs/ldm --label 3 --guidance 2 --out grid.png
"""
import ml_collections

from jaxgen.config import apply_preset, base_config, set_schedule, sibling_config, smoke


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = base_config()
  c.family = 'ldm'
  # Stage one (jaxgen.stages): a trained VAE workdir, or this VAE config trained in <workdir>/autoencoder.
  c.autoencoder = sibling_config(__file__, 'vae_fashion_mnist', preset)
  c.autoencoder_workdir = ml_collections.config_dict.placeholder(str)
  c.data.name = 'fashion_mnist'                         # where the autoencoder's dataset is read (data_dir)

  c.batch_size = 256
  c.learning_rate = 1e-3
  set_schedule(c, 50_000, log=100, eval=5_000, checkpoint=5_000, sample=5_000)
  c.data.eval_examples = 2_048
  c.num_preview = 100                # 10 per class
  c.optim.name = 'adam'
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 500
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.999
  c.optim.ema_warmup = True

  m = c.model                        # denoiser and diffusion process (both fix the checkpoint)
  m.width = 512
  m.num_blocks = 4
  m.dropout = 0.0
  m.num_classes = 10                 # > 0: class-conditional, with classifier-free guidance
  m.p_uncond = 0.1
  m.timesteps = 1000
  m.beta_schedule = 'linear'         # linear | cosine
  m.prediction = 'eps'               # eps | v

  s = c.sampling = ml_collections.ConfigDict()   # defaults of the sampler; sample.py flags override
  s.steps = 50
  s.sampler = 'ddim'
  s.eta = 0.0
  s.guidance = 1.0
  s.sigma = 'beta'

  def cpu(c):
    set_schedule(c, 6_000, log=100, eval=2_000, checkpoint=2_000, sample=2_000)
    m.width = 256
    m.num_blocks = 3

  def smoke_(c):
    smoke(c, steps=4, checkpoint=2, num_preview=10)
    c.optim.warmup_steps = 0
    m.width = 16
    m.num_blocks = 1
    s.steps = 5

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
