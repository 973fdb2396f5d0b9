"""StyleGAN2 on Fashion-MNIST (Karras et al. 2020 config F math, sized for 28x28: constant 7x7 -> 14 -> 28).

Adam lr 0.0025, betas (0, 0.99) and the half-life EMA of StyleGAN2-ADA's small-data configs; non-saturating
logistic loss, lazy R1 every 16 steps, path length every 4, style mixing 0.9 as the paper.
"""
from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'gan'
  c.data.name = 'fashion_mnist'
  c.data.pixel_range = (-1.0, 1.0)
  c.model.arch = 'stylegan2'          # dcgan | stylegan2
  c.model.latent_dim = 512            # z
  c.model.w_dim = 512
  c.model.mapping_layers = 8          # MLP depth, learning-rate multiplier 0.01
  c.model.g_features = 128            # channels at 28x28, doubling per halving up to max_features
  c.model.d_features = 128
  c.model.max_features = 256
  c.model.d_norm = 'none'             # unused by stylegan2 (no normalisation layers)
  c.model.conditional = False         # True: class embedding into the mapping network, projection D
  c.gan = dict(
      loss='non_saturating',          # the logistic loss of StyleGAN2
      n_critic=1,
      r1_gamma=0.05,                   # R1 weight gamma (gamma/2 E||grad_x D(x)||^2)
      r1_every=16,                    # lazy R1: every 16 steps, scaled by 16
      pl_weight=2.0,                  # path-length regularisation weight; 0 disables
      pl_every=4,                     # lazy: every 4 steps, scaled by 4
      pl_batch_shrink=2,              # on batch_size / 2 samples
      pl_decay=0.01,                  # running mean a <- a + 0.01 (mean length - a)
      style_mixing_prob=0.9,
      ema_kimg=10.0,                  # G_ema half-life in thousands of images
      ema_rampup=0.05,                # half-life at most 0.05 * images seen
      diffaugment='',                 # e.g. 'color,translation,cutout' for small data
  )
  c.optim.name = 'adam'
  c.optim.b1 = 0.0
  c.optim.b2 = 0.99
  c.optim.eps = 1e-8
  c.optim.ema_decay = 0.0             # the half-life EMA (gan.ema_kimg) replaces it
  c.learning_rate = 0.0025
  c.batch_size = 32
  set_schedule(c, 40_000, log=100, eval=5_000, checkpoint=5_000, sample=1_000)   # ~21 epochs
  c.data.eval_examples = 2_048

  def cpu(c):
    c.model.latent_dim = 64
    c.model.w_dim = 64
    c.model.mapping_layers = 2
    c.model.g_features = 16           # 28x28: 16, 14x14: 32, 7x7: 64 channels
    c.model.d_features = 16
    c.model.max_features = 64
    c.gan.pl_weight = 0.0             # the double backward costs more than it gives in minutes on CPU
    c.gan.ema_kimg = 5.0
    c.batch_size = 32
    set_schedule(c, 1_600, log=50, eval=800, checkpoint=400, sample=200)   # ~18 min at 0.67 s/step on 2 cores
    c.data.eval_examples = 1_024

  def smoke_(c):
    c.model.latent_dim = 8
    c.model.w_dim = 8
    c.model.mapping_layers = 2
    c.model.g_features = 4
    c.model.d_features = 4
    c.model.max_features = 8
    c.gan.r1_every = 2
    c.gan.pl_every = 2
    smoke(c, sample=3, num_preview=16)

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
