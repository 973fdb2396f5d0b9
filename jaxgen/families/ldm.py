"""Latent diffusion (Rombach et al. 2022): DDPM on the scaled latents s z of a trained, frozen VAE.

The diffusion math, training step, EMA, guidance and samplers are jaxgen.families.ddpm's, applied to
vectors z in R^D with a residual-MLP denoiser (the VAE's latents are vectors, not grids). A sample is
x = E[p(x | z / s)] for z drawn by DDIM or ancestral sampling: latent sampling and VAE decoding run in one
jitted function. The latents, s and the autoencoder (workdir, step, fingerprint) come from the stage layer
(jaxgen.stages) through the spec; the VAE's parameters are not part of the train state, so stage two never
changes them.
"""
import functools

import jax.numpy as jnp
import numpy as np

from jaxgen import evaluators, images, samples
from jaxgen.errors import UserError
from jaxgen.families import ddpm, vae
from jaxgen.families.base import Family, Feature
from jaxgen.models.mlp_denoiser import MLPDenoiser
from jaxgen.models.vae import VAE
from jaxgen.train import checkpointing


def load_autoencoder(spec):
  """(VAE config, VAE spec, sampling params) of the stage the spec records, checked by its fingerprint."""
  ae_config, ae_spec, _, state = checkpointing.stage_run(spec.stages.autoencoder, vae.build)
  if ae_config.family != 'vae':
    raise UserError(f'{spec.stages.autoencoder.workdir} holds a {ae_config.family} run; latent diffusion decodes '
                    'with a vae')
  return ae_config, ae_spec, state.sampling_params()


def build(config, spec) -> Family:
  mc = config.model
  if 'stages' not in spec:
    raise UserError('latent diffusion trains on the latents of an autoencoder: give the config an `autoencoder` '
                    '(configs/ldm_fashion_mnist.py) and train with train.py')
  ae_config, ae_spec, ae_params = load_autoencoder(spec)
  vae_model = vae.make_model(ae_config, ae_spec)
  (latent_dim,) = spec.features.latent
  denoiser = MLPDenoiser(out_dim=latent_dim, width=mc.width, num_blocks=mc.num_blocks, dropout=mc.dropout,
                         num_classes=mc.num_classes, dtype=jnp.dtype(mc.dtype))

  def decode(vae_params, scaled_z):
    """s z -> uint8 images E[p(x | z)] through the VAE decoder."""
    decoded = vae_model.apply({'params': vae_params}, scaled_z / spec.latent_scale, method=VAE.decode)
    return images.to_uint8(vae.decoder_mean(decoded, ae_config.model.likelihood), ae_config.data.pixel_range)

  batch_spec = {'latent': Feature((latent_dim,), np.float32, -3.0, 3.0),
                'label': Feature((), np.int32, 0, spec.num_classes)}
  image_quality = functools.partial(evaluators.image_quality, dataset=ae_spec.name)
  return ddpm.diffusion_family(config, denoiser, (latent_dim,), batch_key='latent', batch_spec=batch_spec,
                               sample_kind=samples.Images(), evaluators={'image_quality': image_quality},
                               decode=decode, decode_params=ae_params)
