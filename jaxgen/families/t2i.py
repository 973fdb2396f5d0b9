"""Text-to-image latent diffusion (Rombach et al. 2022, Stable Diffusion's architecture): prompt in, image out.

Stages (jaxgen.stages): a KL autoencoder (jaxgen.families.autoencoder_kl) maps images x to latent grids z
(32x32x3 -> 8x8x4 at f = 4); the train split is encoded once (posterior means) and scaled by s = 1/std(z). The
text encoder tau maps a prompt's tokens [CLS] y [SEP] [PAD].. (T = its block_size) to features (B, T, C) with
their padding mask: a jaxgen BERT trained on the captions as its own stage and frozen (model.text_encoder='bert';
frozen as Imagen's T5; its parameters ride in the train state's `frozen`, never updated), or the same Transformer
trained from scratch with the UNet by this loss ('joint', as LDM's text-to-image model).
The denoiser is the DDPM UNet with SpatialTransformers whose cross-attention reads tau(y)
(jaxgen.models.unet, model.transformer_resolutions); loss, EMA and samplers are jaxgen.families.ddpm's, with the
prompt as its Condition:
  L = E_{z, y, t, eps} ||eps - eps_theta(sqrt(abar_t) s z + sqrt(1 - abar_t) eps, t, tau(y))||^2,
y replaced by the empty prompt '' ([CLS] [SEP]) with probability model.p_uncond. Sampling (SD's guidance scale w):
  eps~ = eps(x_t, tau(neg)) + w (eps(x_t, tau(y)) - eps(x_t, tau(neg))),  neg the negative prompt (default ''),
so w = 1 is the conditional model and w = 0 the unconditional one (DDPM's weight is w - 1). One jitted function
encodes the prompts, runs DDIM (or ancestral) sampling in latent space and decodes x = D(z / s).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import images, samples, scene_eval, timing
from jaxgen.data import tokenizers
from jaxgen.errors import UserError
from jaxgen.families import autoencoder_kl, bert, ddpm
from jaxgen.families.base import Family, Feature
from jaxgen.models.autoencoder_kl import AutoencoderKL
from jaxgen.models.unet import TextUNet
from jaxgen.train import checkpointing


def as_texts(value, num: int, what: str) -> list[str]:
  """A text or a list of 1 or num texts -> num texts."""
  value = [value] if isinstance(value, str) else list(value)
  if len(value) not in (1, num) or not all(isinstance(v, str) for v in value):
    raise UserError(f'{what} must be a text or a list of 1 or num={num} texts, got {value!r}')
  return value * (num // len(value))


def make_model(config, latent_shape, text_config, vocab_size: int) -> TextUNet:
  """The denoiser on latents (H, W, C): the UNet with transformer blocks, and inside it the text encoder's
  Transformer where that is trained jointly (model.text_encoder='joint')."""
  mc = config.model
  unet = ddpm.make_unet(mc, latent_shape, 'the latent grid', transformer_resolutions=tuple(mc.transformer_resolutions),
                        transformer_depth=mc.transformer_depth, transformer_heads=mc.transformer_heads)
  return TextUNet(unet, bert.make_model(text_config, vocab_size) if mc.text_encoder == 'joint' else None)


def build(config, spec) -> Family:
  mc = config.model
  if 'stages' not in spec:
    raise UserError('text-to-image trains on the latents of an autoencoder and a text encoder: give the config '
                    '`autoencoder` and `text_encoder` (configs/t2i_fashion_scenes.py) and train with train.py')
  if mc.text_encoder not in ('bert', 'joint'):
    raise UserError(f'unknown model.text_encoder {mc.text_encoder!r}; use bert (a frozen stage) or joint')
  ae_config, ae_spec, _, ae_state = checkpointing.stage_run(spec.stages.autoencoder, autoencoder_kl.build)
  if ae_config.family != 'autoencoder_kl':
    raise UserError(f'{spec.stages.autoencoder.workdir} holds a {ae_config.family} run; text-to-image decodes with '
                    'an autoencoder_kl')
  ae_model = autoencoder_kl.make_model(ae_config, ae_spec)
  frozen = mc.text_encoder == 'bert'
  if frozen:
    text_config, text_spec, text_family, text_state = checkpointing.stage_run(spec.stages.text_encoder, bert.build,
                                                                              'text_encoder')
    text = text_family.make_encoder(text_state)
  else:
    text_config, text_spec = config.text_encoder, spec.text
  T, width = text_config.model.block_size, text_config.model.embed_dim
  tokenize = bert.make_tokenize(tokenizers.from_json(json.loads(text_spec.tokenizer)), T)
  latent_shape = tuple(spec.features.latent)
  model = make_model(config, latent_shape, text_config, text_spec.vocab_size)

  def encode(params, frozen_params, raw):
    """(tokens, mask) -> (tau(tokens) (B, T, C) float32, mask): the frozen BERT's, or the joint encoder's."""
    tokens, mask = raw
    if frozen:
      return text.apply(frozen_params, tokens, mask), mask
    return model.apply({'params': params}, tokens, mask, method=TextUNet.encode)

  empty = tuple(jnp.asarray(a) for a in tokenize(['']))                 # [CLS] [SEP] [PAD].. (1, T)
  condition = ddpm.Condition(raw=lambda batch: (batch['tokens'], batch['mask']), null=empty,
                             example=(jnp.zeros((1, T, width)), empty[1]), encode=encode,
                             frozen=text.params if frozen else None)

  def decode(ae_params, scaled_z):
    """s z -> uint8 images D(z) through the frozen autoencoder's decoder."""
    x = ae_model.apply({'params': ae_params}, scaled_z / spec.latent_scale, method=AutoencoderKL.decode)
    return images.to_uint8(x, ae_config.data.pixel_range)

  batch_spec = {'latent': Feature(latent_shape, np.float32, -3.0, 3.0),
                'tokens': Feature((T,), np.int32, 0, text_spec.vocab_size), 'mask': Feature((T,), np.bool_)}
  evaluators = {'text_to_image_quality': scene_eval.text_to_image_quality} if spec.name == scene_eval.DATASET else {}
  family = ddpm.diffusion_family(config, model, latent_shape, batch_key='latent', batch_spec=batch_spec,
                                 sample_kind=samples.Images(), evaluators=evaluators, decode=decode,
                                 decode_params=ae_state.sampling_params(), condition=condition)

  def make_sampler(state):
    latents = family.make_sampler(state)

    def sampler(rng, prompt=None, num: int | None = None, *, guidance=None, steps=None, negative_prompt=None,
                sampler=None, eta=None):
      """uint8 (num, H, W, C) images of `prompt`: a text, or a list of 1 text (repeated num times) or of num texts
      (one image each; num defaults to the list's length); guidance: SD's scale w (default sampling.guidance);
      negative_prompt: like prompt (default: the empty prompt); steps, sampler, eta: the DDPM sampler's."""
      if prompt is None:
        raise UserError('give a prompt: sample.py --prompt "a red sneaker on the left" (or prompt=[...])')
      num = (1 if isinstance(prompt, str) else len(prompt)) if num is None else num
      if not isinstance(num, (int, np.integer)) or num < 1:
        raise UserError(f'num must be a positive integer, got {num!r}')
      w = config.sampling.guidance if guidance is None else guidance
      if w != 1 and not mc.p_uncond > 0:
        raise UserError(f'guidance={w} needs a model trained with prompt dropout (model.p_uncond > 0); use 1')
      label = tuple(jnp.asarray(a) for a in tokenize(as_texts(prompt, num, 'prompt')))
      null = None if negative_prompt is None else tuple(
          jnp.asarray(a) for a in tokenize(as_texts(negative_prompt, num, 'negative_prompt')))
      return latents(rng, num, steps=steps, sampler=sampler, eta=eta, label=label, guidance=w - 1, null=null)

    return sampler

  def preview(state, batch, rng):
    """One image per prompt of the first num_preview recorded test captions (repeated as needed), 8 a row."""
    del batch
    prompts = list(spec.prompts) * -(-config.num_preview // len(spec.prompts))
    return images.make_grid(make_sampler(state)(rng, prompts[:config.num_preview]), ncols=8)

  def bench_sampler(state, num: int | None, repeats: int, ddim_steps: int = 50, **options):
    """Prompt encoding, DDIM over ddim_steps with guidance (num samples, default 64) and decoding, one call."""
    del options
    sampler, num = make_sampler(state), num or 64
    first, ms = timing.time_calls(lambda: sampler(jax.random.key(0), spec.prompts[0], num, steps=ddim_steps),
                                  repeats)
    yield timing.sampler_record('ddim', num, first, ms, ddim_steps, samples_per_s=num / (ms['median'] / 1e3))

  return family._replace(make_sampler=make_sampler, preview=preview, bench_sampler=bench_sampler)
