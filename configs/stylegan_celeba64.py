"""StyleGAN2 on CelebA faces at 64x64 (constant 4x4 -> 8 -> 16 -> 32 -> 64): StyleGAN2-ADA's small-resolution
recipe (Adam lr 0.0025, betas (0, 0.99), half-life EMA, R1 gamma 0.0002 res^2 / batch) with the paper's
path-length regularisation and style mixing. Data as configs/dcgan_celeba64.py: TFDS celeb_a, 178x218 ->
central 148x148 -> 64x64; offline through --config.data.manual_dir."""
from jaxgen.config import set_schedule, sibling_config


def get_config(preset: str = 'default'):
  c = sibling_config(__file__, 'stylegan_fashion_mnist', preset)   # the StyleGAN2 recipe, its presets
  c.data.name = 'celeb_a'
  c.data.center_crop = 148            # the central 148x148 square of the 178x218 faces
  c.data.image_size = 64              # constant 4x4 -> 8 -> 16 -> 32 -> 64
  c.model.conditional = False         # celeb_a has no class labels
  if preset == 'default':
    c.model.max_features = 512        # 64x64: 128, 32x32: 256, 16x16 and below: 512 channels
    c.gan.r1_gamma = 0.025            # 0.0002 * 64^2 / 32
    set_schedule(c, 150_000, log=100, eval=10_000, checkpoint=5_000, sample=2_000)   # 4.8M images, ~30 epochs
    c.data.num_workers = 4            # JPEG decoding and resizing in Grain worker processes
  elif preset == 'cpu':
    c.model.g_features = 8            # 64: 8, 32: 16, 16: 32, 8 and 4: 64 channels
    c.model.d_features = 8
    set_schedule(c, 1_000, log=50, eval=500, checkpoint=250, sample=250)
    c.data.eval_examples = 512
  return c
