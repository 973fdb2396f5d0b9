"""StyleGAN2 on CelebA faces at 64x64 (constant 4x4 -> 8 -> 16 -> 32 -> 64): StyleGAN2-ADA's small-resolution
recipe (Adam lr 0.0025, betas (0, 0.99), half-life EMA, R1 gamma 0.0002 res^2 / batch) with the paper's
path-length regularisation and style mixing. Data as configs/dcgan_celeba64.py: TFDS celeb_a, 178x218 ->
central 148x148 -> 64x64; offline through --config.data.manual_dir."""
from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'gan'
  c.data.name = 'celeb_a'
  c.data.center_crop = 148
  c.data.image_size = 64
  c.data.pixel_range = (-1.0, 1.0)
  c.model.arch = 'stylegan2'
  c.model.latent_dim = 512
  c.model.w_dim = 512
  c.model.mapping_layers = 8
  c.model.g_features = 128            # 64x64: 128, 32x32: 256, 16x16 and below: 512 channels
  c.model.d_features = 128
  c.model.max_features = 512
  c.model.d_norm = 'none'             # unused by stylegan2
  c.model.conditional = False         # celeb_a has no class labels
  c.gan = dict(
      loss='non_saturating',
      n_critic=1,
      r1_gamma=0.025,                 # 0.0002 * 64^2 / 32
      r1_every=16,
      pl_weight=2.0,
      pl_every=4,
      pl_batch_shrink=2,
      pl_decay=0.01,
      style_mixing_prob=0.9,
      ema_kimg=10.0,
      ema_rampup=0.05,
      diffaugment='',
  )
  c.optim.name = 'adam'
  c.optim.b1 = 0.0
  c.optim.b2 = 0.99
  c.optim.eps = 1e-8
  c.optim.ema_decay = 0.0             # the half-life EMA (gan.ema_kimg) replaces it
  c.learning_rate = 0.0025
  c.batch_size = 32
  set_schedule(c, 150_000, log=100, eval=10_000, checkpoint=5_000, sample=2_000)   # 4.8M images, ~30 epochs
  c.data.eval_examples = 2_048
  c.data.num_workers = 4

  def cpu(c):
    c.model.latent_dim = 64
    c.model.w_dim = 64
    c.model.mapping_layers = 2
    c.model.g_features = 8            # 64: 8, 32: 16, 16: 32, 8 and 4: 64 channels
    c.model.d_features = 8
    c.model.max_features = 64
    c.gan.pl_weight = 0.0
    c.gan.ema_kimg = 5.0
    set_schedule(c, 1_000, log=50, eval=500, checkpoint=250, sample=250)
    c.data.eval_examples = 512
    c.data.num_workers = 0

  def smoke_(c):
    c.model.latent_dim = 8
    c.model.w_dim = 8
    c.model.mapping_layers = 2
    c.model.g_features = 4
    c.model.d_features = 4
    c.model.max_features = 8
    c.gan.r1_every = 2
    c.gan.pl_every = 2
    c.data.num_workers = 0
    smoke(c, sample=3, num_preview=16)

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
