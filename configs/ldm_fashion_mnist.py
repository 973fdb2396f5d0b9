"""Latent diffusion on Fashion-MNIST: DDPM on the 16-d latents of a jaxgen VAE, class-conditional with CFG.

python train.py --config configs/ldm_fashion_mnist.py:cpu --workdir runs/ldm      # trains the VAE first
python train.py --config configs/ldm_fashion_mnist.py:cpu --workdir runs/ldm --config.autoencoder_workdir=runs/vae
python sample.py --workdir runs/ldm --label 3 --guidance 2 --out grid.png
"""
import ml_collections

from jaxgen.config import base_config, sibling_config

PRESETS = ('default', 'cpu', 'smoke')
placeholder = ml_collections.config_dict.placeholder


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose one of {PRESETS}')
  c = base_config()
  c.family = 'ldm'
  c.autoencoder = sibling_config(__file__, 'vae_fashion_mnist', preset)   # stage one, trained when autoencoder_workdir has no run
  c.autoencoder_workdir = placeholder(str)              # a trained VAE workdir (None: <workdir>/autoencoder)
  c.data.name = 'fashion_mnist'                         # the autoencoder's dataset (set from it)
  c.data.pixel_range = (0.0, 1.0)

  c.batch_size = 256
  c.num_train_steps = 50_000
  c.learning_rate = 1e-3
  c.log_every_steps = 100
  c.eval_every_steps = 5_000
  c.checkpoint_every_steps = 5_000
  c.sample_every_steps = 5_000
  c.data.eval_examples = 2_048
  c.num_preview = 100                # 10 per class
  c.optim.name = 'adam'
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 500
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.999

  m = c.model                        # denoiser and diffusion process (both fix the checkpoint)
  m.width = 512
  m.num_blocks = 4
  m.dropout = 0.0
  m.num_classes = 10                 # > 0: class-conditional, with classifier-free guidance
  m.p_uncond = 0.1
  m.timesteps = 1000
  m.beta_schedule = 'linear'         # linear | cosine
  m.prediction = 'eps'               # eps | v
  # Set by the latents setup from the autoencoder (recorded in config.json; a run refuses another autoencoder):
  m.autoencoder_step = placeholder(int)
  m.autoencoder_fingerprint = placeholder(str)
  m.latent_scale = placeholder(float)   # s = 1 / std(z) over the training latents
  m.latent_dim = placeholder(int)

  s = c.sampling = ml_collections.ConfigDict()   # defaults of the sampler; sample.py flags override
  s.steps = 50
  s.sampler = 'ddim'
  s.eta = 0.0
  s.guidance = 1.0
  s.sigma = 'beta'

  if preset == 'cpu':
    c.num_train_steps = 6_000
    c.eval_every_steps = 2_000
    c.checkpoint_every_steps = 2_000
    c.sample_every_steps = 2_000
    m.width = 256
    m.num_blocks = 3
  elif preset == 'smoke':
    c.batch_size = 8
    c.num_train_steps = 4
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 2
    c.sample_every_steps = 4
    c.num_preview = 10
    c.data.eval_examples = 16
    c.optim.warmup_steps = 0
    m.width = 16
    m.num_blocks = 1
    s.steps = 5
  return c
