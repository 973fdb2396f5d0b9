"""KL autoencoder: the first stage of latent diffusion (Rombach et al. 2022; Stable Diffusion's AutoencoderKL).

A conv encoder gives q(z|x) = N(mean, diag(exp(logvar))) on a latent grid (B, H/f, W/f, z_channels); a conv
decoder maps z back to pixels (jaxgen.models.autoencoder_kl). Loss, per example, with z ~ q(z|x) reparameterised:
  L = sum_pixels rec(x, D(z)) + kl_weight * KL(q(z|x) || N(0, I)),  KL = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar)
rec = |x - D(z)| (model.reconstruction='l1', SD's) or (x - D(z))^2 ('l2'). Both terms are sums as in SD's
LPIPSWithDiscriminator, so kl_weight is SD's (1e-6 for its kl-f4 / kl-f8 models): q(z|x) stays nearly
deterministic and the latents keep the image's detail; their scale is fixed later by s = 1/std(z) (jaxgen.stages).
SD's perceptual (LPIPS) and adversarial terms are left out (docs/t2i.md).

There is no useful prior to sample: previews and the sampler are reconstructions; make_encoder gives the posterior
means, what latent diffusion trains on.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import evaluators, samples, timing
from jaxgen.errors import UserError
from jaxgen.families import vae
from jaxgen.families.base import Family, Feature
from jaxgen.images import make_grid, to_uint8
from jaxgen.models.autoencoder_kl import AutoencoderKL
from jaxgen.train import optim
from jaxgen.train.state import TrainState


def kl_divergence(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) summed over the latent grid: (B, h, w, c) -> (B,)."""
  return jnp.sum(vae.gaussian_kl_per_dim(mean, logvar), axis=(1, 2, 3))


def make_model(config, spec) -> AutoencoderKL:
  m = config.model
  return AutoencoderKL(out_channels=spec.image_shape[-1], z_channels=m.z_channels, ch=m.ch, ch_mult=tuple(m.ch_mult),
                       num_res_blocks=m.num_res_blocks, norm_groups=m.norm_groups, dtype=jnp.dtype(m.dtype))


def reconstruction(ctx: evaluators.Context) -> dict:
  """Mean |x - D(mean)| per pixel, PSNR of D(mean) and the KL per example over the config's test split."""
  r = ctx.test_metrics(ctx.config)
  return dict(l1=r['l1'], psnr=r['psnr'], kl=r['kl'], test_examples=ctx.config.data.eval_examples)


def build(config, spec) -> Family:
  m = config.model
  if m.reconstruction not in ('l1', 'l2'):
    raise UserError(f'unknown model.reconstruction {m.reconstruction!r}; use l1 or l2')
  if spec.modality != 'image':
    raise UserError(f'the autoencoder_kl family reads images; set --config.data.modality=image (not {spec.modality})')
  levels = len(m.ch_mult) - 1
  if spec.image_shape[0] % 2**levels or spec.image_shape[1] % 2**levels:
    raise UserError(f'image size {tuple(spec.image_shape[:2])} is not divisible by f = 2^{levels} for model.ch_mult='
                    f'{tuple(m.ch_mult)}; use fewer levels')
  model = make_model(config, spec)
  updater = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps)
  lo, hi = config.data.pixel_range
  latent_shape = (spec.image_shape[0] // 2**levels, spec.image_shape[1] // 2**levels, m.z_channels)
  rec = jnp.abs if m.reconstruction == 'l1' else jnp.square

  def terms(params, x, rng):
    """Per example: sum_pixels rec(x, D(z)) with z ~ q(z|x), and the KL."""
    mean, logvar = model.apply({'params': params}, x, method=AutoencoderKL.encode)
    x_hat = model.apply({'params': params}, vae.reparameterize(rng, mean, logvar), method=AutoencoderKL.decode)
    return jnp.sum(rec(x - x_hat), axis=(1, 2, 3)), kl_divergence(mean, logvar)

  def init(rng):
    params = model.init(rng, jnp.zeros((1, *spec.image_shape)), jnp.zeros((1, *latent_shape)))['params']
    return TrainState.create(params, updater)

  def train_step(state, batch, rng):
    def loss_fn(params):
      rec_sum, kl = terms(params, batch['image'], rng)
      return jnp.mean(rec_sum + m.kl_weight * kl), (rec_sum, kl)

    (loss, (rec_sum, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(loss=loss, rec=rec_sum.mean() / np.prod(spec.image_shape), kl=kl.mean(),
                   grad_norm=optax.tree.norm(grads))
    return state.apply_gradients(grads, updater), metrics

  @jax.jit
  def reconstruct(params, x):
    """D(E[q(z|x)]) in the pixel range."""
    mean, _ = model.apply({'params': params}, x, method=AutoencoderKL.encode)
    return model.apply({'params': params}, mean, method=AutoencoderKL.decode)

  def eval_step(state, batch, rng):
    params, x = state.sampling_params(), batch['image']
    rec_sum, kl = terms(params, x, rng)
    x_hat = jnp.clip(reconstruct(params, x), lo, hi)
    return dict(loss=jnp.mean(rec_sum + m.kl_weight * kl), kl=kl.mean(), l1=jnp.mean(jnp.abs(x_hat - x)),
                psnr=10 * jnp.log10((hi - lo) ** 2 / jnp.mean(jnp.square(x_hat - x))))

  def make_sampler(state):
    params = state.sampling_params()

    def sampler(rng, num: int | None = None, images=None):
      """Reconstructions D(E[q(z|x)]) of the first num images (uint8, or floats in data.pixel_range; (N, H, W, C))
      as uint8."""
      del rng
      if images is None:
        raise UserError('the KL autoencoder has no prior to sample from: its previews (DIR/samples) are '
                        'reconstructions; from Python, sampler(rng, images=x) reconstructs images x')
      x = np.asarray(images)[:num]
      x = x if x.dtype.kind == 'f' else lo + x.astype(np.float32) / 255 * (hi - lo)
      return to_uint8(reconstruct(params, x), config.data.pixel_range)
    return sampler

  def preview(state, batch, rng):
    """Two rows: 8 inputs of the batch and their reconstructions."""
    del rng
    x = jax.device_get(batch['image'])[:8]
    recon = reconstruct(state.sampling_params(), x)
    return make_grid(to_uint8(jnp.concatenate([x, recon]), config.data.pixel_range), ncols=len(x))

  encode_mean = jax.jit(lambda params, x: model.apply({'params': params}, x, method=AutoencoderKL.encode)[0])

  def make_encoder(state):
    """batch -> E[q(z|x)] (B, H/f, W/f, z_channels): the latents latent diffusion trains on."""
    params = state.sampling_params()
    return lambda batch: encode_mean(params, batch['image'])

  def bench_sampler(state, num: int | None, repeats: int, **options):
    """Reconstruction of num (default 64) random images."""
    del options
    num = num or 64
    x = np.random.default_rng(0).uniform(lo, hi, (num, *spec.image_shape)).astype(np.float32)
    first, ms = timing.time_calls(lambda: reconstruct(state.sampling_params(), x), repeats)
    yield timing.sampler_record('reconstruct', num, first, ms, samples_per_s=num / (ms['median'] / 1e3))

  batch_spec = {'image': Feature(tuple(spec.image_shape), np.float32, lo, hi)}
  if spec.num_classes:
    batch_spec['label'] = Feature((), np.int32, 0, spec.num_classes)
  return Family(init, train_step, eval_step, make_sampler, preview, batch_spec, samples.Images(),
                {'reconstruction': reconstruction}, make_encoder=make_encoder, bench_sampler=bench_sampler)
