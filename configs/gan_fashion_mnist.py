"""DCGAN on Fashion-MNIST (Radford et al. 2015 setting: batch 128, Adam lr 2e-4, beta1 0.5, pixels in [-1, 1])."""
from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'gan'
  c.data.name = 'fashion_mnist'
  c.data.pixel_range = (-1.0, 1.0)   # the generator ends in tanh
  c.model.latent_dim = 100
  c.model.g_features = 64            # generator: Dense -> 7x7x128 -> 14x14x64 -> 28x28x1
  c.model.d_features = 64            # discriminator: 28x28x1 -> 14x14x64 -> 7x7x128 -> logit
  c.model.d_norm = 'batch'           # batch | spectral | none
  c.model.conditional = False        # True: label embedding into G, projection discriminator
  c.gan = dict(
      loss='non_saturating',         # non_saturating | saturating | hinge
      n_critic=1,                    # discriminator updates per generator update
      r1_gamma=0.0,                  # R1 penalty weight gamma (gamma/2 E||grad_x D(x)||^2); 0 disables
  )
  c.optim.name = 'adam'
  c.optim.b1 = 0.5
  c.optim.ema_decay = 0.999          # sample from an EMA of the generator's weights
  c.learning_rate = 2e-4
  c.batch_size = 128
  set_schedule(c, 20_000, log=100, eval=5_000, checkpoint=5_000, sample=1_000)   # ~43 epochs
  c.data.eval_examples = 2_048

  def cpu(c):
    c.model.latent_dim = 64
    c.model.g_features = 32
    c.model.d_features = 32
    c.batch_size = 64
    set_schedule(c, 4_000, log=100, eval=2_000, checkpoint=1_000, sample=500)
    c.data.eval_examples = 1_024

  def smoke_(c):
    c.model.latent_dim = 8
    c.model.g_features = 4
    c.model.d_features = 4
    smoke(c, sample=3, num_preview=16)

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
