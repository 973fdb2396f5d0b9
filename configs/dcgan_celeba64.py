"""DCGAN on CelebA faces at 64x64 (Radford et al. 2015's face setting: batch 128, Adam lr 2e-4, beta1 0.5,
z of 100, 64 -> 32 -> 16 -> 8 -> 4 with 64..512 channels). TFDS celeb_a: the aligned 178x218 faces,
center-cropped to 148x148 and resized to 64x64; offline, --config.data.manual_dir=DIR holding TFDS's
downloads (img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt,
list_landmarks_align_celeba.txt, identity_CelebA.txt)."""
from jaxgen.config import set_schedule, sibling_config


def get_config(preset: str = 'default'):
  c = sibling_config(__file__, 'gan_fashion_mnist', preset)   # Radford et al.'s recipe, its presets
  c.data.name = 'celeb_a'
  c.data.center_crop = 148           # the central 148x148 square of the 178x218 faces (0: no crop)
  c.data.image_size = 64             # resized to 64x64 (0: keep): G 4x4x512 -> ... -> 64x64x3, D the mirror
  c.model.conditional = False        # celeb_a has no class labels
  if preset == 'default':
    set_schedule(c, 30_000, log=100, eval=5_000, checkpoint=5_000, sample=1_000)   # ~24 epochs of 162,770 faces
    c.data.num_workers = 4           # JPEG decoding and resizing run in Grain worker processes
  elif preset == 'cpu':
    c.model.latent_dim = 100
    c.model.g_features = 16
    c.model.d_features = 16
    c.batch_size = 32
    set_schedule(c, 2_000, log=100, eval=1_000, checkpoint=500, sample=250)
    c.data.eval_examples = 512
  return c
