"""Latent diffusion (Rombach et al. 2022): DDPM on the scaled latents s z of a trained, frozen VAE.

The diffusion math, training step, EMA, guidance and samplers are jaxgen.families.ddpm's, applied to
vectors z in R^D with a residual-MLP denoiser (the VAE's latents are vectors, not grids). A sample is
x = E[p(x | z / s)] for z drawn by DDIM or ancestral sampling: latent sampling and VAE decoding run in one
jitted function. The VAE's parameters are not part of the train state, so stage two never changes them.
"""
import jax.numpy as jnp

from jaxgen import families, images
from jaxgen.data import latents
from jaxgen.families import ddpm, vae
from jaxgen.models.mlp_denoiser import MLPDenoiser
from jaxgen.models.vae import VAE


def build(config, workdir: str) -> families.Family:
  del workdir
  mc = config.model
  ae_config, ae_params = latents.load_autoencoder(config)   # checks it is the autoencoder the run recorded
  vae_model = vae.make_model(ae_config)
  denoiser = MLPDenoiser(out_dim=mc.latent_dim, width=mc.width, num_blocks=mc.num_blocks, dropout=mc.dropout,
                         num_classes=mc.num_classes, dtype=jnp.dtype(mc.dtype))

  def decode(vae_params, scaled_z):
    """s z -> uint8 images E[p(x | z)] through the VAE decoder."""
    decoded = vae_model.apply({'params': vae_params}, scaled_z / mc.latent_scale, method=VAE.decode)
    return images.to_uint8(vae.decoder_mean(decoded, ae_config.model.likelihood), ae_config.data.pixel_range)

  return ddpm.diffusion_family(config, denoiser, (mc.latent_dim,), batch_key='latent', decode=decode,
                               decode_params=ae_params)
