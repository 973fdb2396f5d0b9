"""DCGAN on CelebA faces at 64x64 (Radford et al. 2015's face setting: batch 128, Adam lr 2e-4, beta1 0.5,
z of 100, 64 -> 32 -> 16 -> 8 -> 4 with 64..512 channels). TFDS celeb_a: the aligned 178x218 faces,
center-cropped to 148x148 and resized to 64x64; offline, --config.data.manual_dir=DIR holding TFDS's
downloads (img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt,
list_landmarks_align_celeba.txt, identity_CelebA.txt)."""
from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'gan'
  c.data.name = 'celeb_a'
  c.data.center_crop = 148           # the central 148x148 square of the 178x218 faces (0: no crop)
  c.data.image_size = 64             # resized to 64x64 (0: keep)
  c.data.pixel_range = (-1.0, 1.0)   # the generator ends in tanh
  c.model.arch = 'dcgan'             # dcgan | stylegan2
  c.model.latent_dim = 100
  c.model.g_features = 64            # generator: Dense -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x3
  c.model.d_features = 64            # discriminator: the mirror image
  c.model.d_norm = 'batch'           # batch | spectral | none
  c.model.conditional = False        # celeb_a has no class labels
  c.gan = dict(
      loss='non_saturating',         # non_saturating | saturating | hinge
      n_critic=1,
      r1_gamma=0.0,                  # R1 weight; 0 disables
      r1_every=1,                    # lazy R1: every k steps, scaled by k
      ema_kimg=0.0,                  # > 0: StyleGAN's half-life EMA instead of optim.ema_decay
      ema_rampup=0.0,
      diffaugment='',                # e.g. 'color,translation,cutout'
  )
  c.optim.name = 'adam'
  c.optim.b1 = 0.5
  c.optim.ema_decay = 0.999
  c.learning_rate = 2e-4
  c.batch_size = 128
  set_schedule(c, 30_000, log=100, eval=5_000, checkpoint=5_000, sample=1_000)   # ~24 epochs of 162,770 faces
  c.data.eval_examples = 2_048
  c.data.num_workers = 4             # JPEG decoding and resizing run in Grain worker processes

  def cpu(c):
    c.model.g_features = 16
    c.model.d_features = 16
    c.batch_size = 32
    set_schedule(c, 2_000, log=100, eval=1_000, checkpoint=500, sample=250)
    c.data.eval_examples = 512
    c.data.num_workers = 0

  def smoke_(c):
    c.model.latent_dim = 8
    c.model.g_features = 4
    c.model.d_features = 4
    c.data.num_workers = 0
    smoke(c, sample=3, num_preview=16)

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
