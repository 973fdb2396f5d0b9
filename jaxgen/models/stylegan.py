"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"): a mapping network,
a style-modulated synthesis network with skip (toRGB) outputs, and a residual discriminator.

Generator, with w_dim-vectors w and num_ws = 2 (n + 1) styles for n resolution doublings:
  mapping     z (B, Z) -> w = MLP([z / rms(z), e(y) / rms(e(y))]) (B, w_dim), e(y) a class embedding
              (StyleGAN2-ADA's conditioning; unconditional: no e(y)); every layer lr_mul = 0.01
  truncation  w' = psi w + (1 - psi) w_avg, w_avg the running mean of w (updated in training mode,
              w_avg <- mean_B(w) + 0.995 (w_avg - mean_B(w)))
  synthesis   a learned constant at the smallest side, then per resolution two style layers and a toRGB:
                x <- lrelu(demod(conv(x * s, W)) + noise * strength + b) * sqrt(2),   s = A(w) (bias init 1)
                image <- upsample(image) + conv_1x1(x * s', W') + b'   (no demodulation)
  modulation + demodulation (the paper's eq. 1-3, computed as StyleGAN2-ADA's non-fused path):
                y_o = d_o sum_{i,k} W_{k,i,o} s_i x_{k,i},   d_o = 1 / sqrt(sum_{i,k} (s_i W_{k,i,o})^2 + 1e-8)
              so a unit-variance input gives unit-variance outputs whatever the styles.
  style mixing (training, jaxgen.families.gan.style_mixing): with some probability, styles ws[:, c:] come from
              a second z, c ~ U{1..num_ws-1} (mix_styles, mixing_cutoff).

Discriminator (residual): fromRGB, then per resolution x <- (skip(x) + conv_down(conv(x))) / sqrt(2), then
minibatch standard deviation (group 4), conv, dense, and a logit (conditional: the projection
<dense(h), e(y) / rms(e(y))> / sqrt(dim), StyleGAN2-ADA's cmap).

Equalised learning rate: every weight is stored at unit scale N(0, 1) (divided by lr_mul, as StyleGAN2) and
multiplied at run time by lr_mul / sqrt(fan_in); biases are stored divided by lr_mul and multiplied by it.
Activations are leaky ReLU(0.2) times sqrt(2). Resampling uses StyleGAN2's [1, 3, 3, 1] FIR filter
(upfirdn2d: zero-insertion up x2 with gain 4, padding (2, 1); down x2 with padding (1, 1)), applied per image
axis as shifted slices; convolutions that change resolution are StyleGAN2's blur + stride-2 conv (down) and
stride-2 transposed conv + blur (up, computed as a sub-pixel conv on the input grid).

Spatial plan as DCGAN's (jaxgen.models.dcgan.num_resolutions): 28 -> 14 -> 7 (constant 7x7), 64 -> ... -> 4.
Channels at resolution level j (j halvings below the image): min(features * 2^j, max_features).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.dcgan import num_resolutions

FIR = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0      # StyleGAN2's resampling filter, separable, sums to 1 per axis
SQRT2 = math.sqrt(2.0)


def _normal(key, shape, dtype=jnp.float32):
  """N(0, 1), drawn flat and reshaped (XLA:CPU compiles an N-d draw of a small kernel shape slowly)."""
  return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def lrelu(x):
  """Leaky ReLU(0.2) with StyleGAN's gain sqrt(2), which keeps unit second moments."""
  return nn.leaky_relu(x, 0.2) * SQRT2


def normalize_2nd_moment(x, eps: float = 1e-8):
  """x / sqrt(mean(x^2) + eps) over the last axis."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + eps)


# ------------------------------------------------------------------------------------------- resampling

def _fir(x, axis: int, pad: tuple[int, int], step: int = 1, gain: float = 1.0):
  """upfirdn along `axis` (without the up part): out[k] = gain sum_t f[t] xp[step k + t], xp = x zero-padded by
  pad = (before, after); f = FIR, symmetric, so correlation and convolution agree."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = pad
  xp = jnp.pad(x, widths)
  n = (xp.shape[axis] - len(FIR)) // step + 1
  taps = [jax.lax.slice_in_dim(xp, t, t + step * (n - 1) + 1, step, axis) for t in range(len(FIR))]
  return sum((gain * float(f)) * tap for f, tap in zip(FIR, taps))


def _blur(x, pad: tuple[int, int], gain: float = 1.0):
  """The separable 2-D filter f f^T over H and W (gain per axis)."""
  return _fir(_fir(x, 1, pad, gain=gain), 2, pad, gain=gain)


def _zero_insert(x, axis: int):
  """u[2i] = x[i], u[2i + 1] = 0 along `axis`."""
  u = jnp.stack([x, jnp.zeros_like(x)], axis + 1)
  return u.reshape(*x.shape[:axis], 2 * x.shape[axis], *x.shape[axis + 1:])


def upsample(x):
  """(B, H, W, C) -> (B, 2H, 2W, C), StyleGAN2's upsample2d: zero insertion, then the filter with padding (2, 1)
  and gain 2 per axis (bilinear interpolation at half-pixel centres, zeros outside)."""
  return _blur(_zero_insert(_zero_insert(x, 1), 2), (2, 1), gain=2.0)


def downsample(x):
  """(B, H, W, C) -> (B, H/2, W/2, C), StyleGAN2's downsample2d: out[k] = sum_t f[t] x[2k + t - 1] per axis."""
  return _fir(_fir(x, 1, (1, 1), 2), 2, (1, 1), 2)


def _conv(x, kernel, stride: int = 1, pad: bool = True):
  """Convolution, 'SAME' by explicit padding (XLA:CPU's kernel gradient is slow when the conv pads itself)."""
  p = kernel.shape[0] // 2 if pad else 0
  if p:
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv_down(x, kernel):
  """StyleGAN2's conv with down=2: blur with padding (2, 2) ((4 - 2) + (3 - 1) = 4 for the 4-tap filter and
  3-tap kernel, split evenly), then a VALID stride-2 3x3 conv: (B, H, W, I) -> (B, H/2, W/2, O), equal to
  downsample(conv_same(x, k)) up to the borders at a quarter of its cost."""
  return _conv(_blur(x, (2, 2)), kernel, stride=2, pad=False)


# 1-D taps of a stride-2 transposed 3-tap kernel on the input grid: output phase a at input offset s uses tap
# _PHASE_TAP[s][a] (3: none), from out[2i + a] = sum_p k[p] u[2i + a + p - 1] with u[2i] = x[i].
_PHASE_TAP = np.array([[1, 0], [3, 2]])


def conv_up(x, kernel):
  """StyleGAN2's conv with up=2: a stride-2 transposed 3x3 conv (zero insertion then the 'SAME' conv),
  computed per output phase as one 2x2 conv on the input to 4 O channels (sub-pixel, as
  jaxgen.models.layers.ConvTranspose2x), then the filter with padding (2, 1) and gain 2 per axis;
  (B, H, W, I) -> (B, 2H, 2W, O) = conv_same(upsample(x), k) up to the borders."""
  b, h, w, _ = x.shape
  o = kernel.shape[-1]
  k = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))                # tap 3 = 0
  k = k[_PHASE_TAP[:, :, None, None], _PHASE_TAP[None, None]]          # (s, a, s', a', I, O)
  k = k.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, -1, 4 * o)           # (s, s', I, a a' O)
  y = _conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))), k, pad=False)   # (B, H, W, 4 O)
  y = y.reshape(b, h, w, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, o)
  return _blur(y, (2, 1), gain=2.0)


# --------------------------------------------------------------------------------------------- layers

class Dense(nn.Module):
  """y = x (W lr_mul / sqrt(fan_in)) + b lr_mul [then lrelu]; W stored ~ N(0, 1 / lr_mul^2), b = bias_init / lr_mul."""
  features: int
  lr_mul: float = 1.0
  bias_init: float = 0.0
  activation: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', lambda k, s: _normal(k, s) / self.lr_mul, (x.shape[-1], self.features))
    bias = self.param('bias', lambda k, s: jnp.full(s, self.bias_init / self.lr_mul, jnp.float32), (self.features,))
    y = x.astype(self.dtype) @ (kernel * (self.lr_mul / math.sqrt(x.shape[-1]))).astype(self.dtype)
    y = y + (bias * self.lr_mul).astype(self.dtype)
    return lrelu(y) if self.activation else y


class Conv(nn.Module):
  """Equalised-lr convolution: conv(x, W / sqrt(fan_in)) [conv_down / downsample then 1x1] + b [then lrelu]."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  activation: bool = True
  down: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', _normal, (k, k, cin, self.features)) / math.sqrt(cin * k * k)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.down:                                               # a 1x1 conv commutes exactly with resampling
      y = _conv(downsample(x), kernel) if k == 1 else conv_down(x, kernel)
    else:
      y = _conv(x, kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return lrelu(y) if self.activation else y


class ModulatedConv(nn.Module):
  """x (B, H, W, I), w (B, w_dim) -> (B, H', W', O): y = d * conv(x * s, W / sqrt(I k k)), s = A(w) (bias 1),
  d_o = rsqrt(sum_{k, i} (s_i W_{k,i,o} / sqrt(I k k))^2 + 1e-8) with demodulate, else 1 (toRGB)."""
  features: int
  kernel_size: int = 3
  demodulate: bool = True
  up: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, w):
    k, cin = self.kernel_size, x.shape[-1]
    styles = Dense(cin, bias_init=1.0, dtype=self.dtype, name='affine')(w)              # (B, I)
    kernel = self.param('kernel', _normal, (k, k, cin, self.features)) / math.sqrt(cin * k * k)
    x = x.astype(self.dtype) * styles[:, None, None, :]
    y = (conv_up if self.up else _conv)(x, kernel.astype(self.dtype))                    # (B, H', W', O)
    if self.demodulate:
      d = jax.lax.rsqrt(jnp.square(styles) @ jnp.sum(jnp.square(kernel), (0, 1)).astype(self.dtype) + 1e-8)
      y = y * d[:, None, None, :]                                                        # (B, O)
    return y


class StyleLayer(nn.Module):
  """lrelu(ModulatedConv(x, w) + noise * strength + b): noise (B or 1, H, W, 1) ~ N(0, 1) from the 'noise' rng,
  strength a learned scalar initialised at 0."""
  features: int
  up: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, w, shared_noise: bool = False):
    y = ModulatedConv(self.features, 3, up=self.up, dtype=self.dtype, name='conv')(x, w)
    b, h, wd, _ = y.shape
    noise = _normal(self.make_rng('noise'), (1 if shared_noise else b, h, wd, 1), self.dtype)
    y = y + noise * self.param('noise_strength', nn.initializers.zeros, ()).astype(self.dtype)
    return lrelu(y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype))


class ToRGB(nn.Module):
  """ModulatedConv 1x1 without demodulation, + bias: the image of one resolution."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, w):
    y = ModulatedConv(self.channels, 1, demodulate=False, dtype=self.dtype, name='conv')(x, w)
    return y + self.param('bias', nn.initializers.zeros, (self.channels,)).astype(self.dtype)


def minibatch_stddev(x, group_size: int = 4):
  """Append the std over groups of min(group_size, B) examples (examples i, i + B/G, ...), averaged over
  features and pixels, as one channel: (B, H, W, C) -> (B, H, W, C + 1) (Karras et al. 2018)."""
  b, h, w, c = x.shape
  g = min(group_size, b)
  if b % g:
    raise ValueError(f'minibatch stddev: batch {b} is not a multiple of the group size {g}')
  y = x.astype(jnp.float32).reshape(g, b // g, h, w, c)
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)                       # (B/G, H, W, C)
  y = jnp.tile(jnp.mean(y, (1, 2, 3)), g)                       # (B,): example i gets group i % (B/G)
  return jnp.concatenate([x, jnp.broadcast_to(y[:, None, None, None], (b, h, w, 1)).astype(x.dtype)], -1)


# --------------------------------------------------------------------------------------- style algebra

def truncate(ws, w_avg, psi):
  """Truncation trick: psi w + (1 - psi) w_avg (psi = 1: ws exactly; psi = 0: w_avg exactly)."""
  return psi * ws + (1.0 - psi) * w_avg


def mix_styles(ws, ws2, cutoff):
  """Style mixing: layer l takes ws[:, l] for l < cutoff and ws2[:, l] from cutoff on; (B, num_ws, w_dim)."""
  return jnp.where((jnp.arange(ws.shape[1]) < cutoff)[None, :, None], ws, ws2)


def mixing_cutoff(rng, num_ws: int, prob: float):
  """The crossover layer of a style-mixing batch: U{1, ..., num_ws - 1} with probability `prob`, else num_ws
  (no mixing)."""
  p_rng, c_rng = jax.random.split(rng)
  return jnp.where(jax.random.uniform(p_rng) < prob, jax.random.randint(c_rng, (), 1, num_ws), num_ws)


# ------------------------------------------------------------------------------------------- networks

def _widths(features: int, max_features: int, n: int) -> list[int]:
  """Channels of resolution levels 0 (the image) .. n (the smallest side)."""
  return [min(features * 2 ** j, max_features) for j in range(n + 1)]


class Mapping(nn.Module):
  """z (B, Z) [, labels (B,)] -> ws (B, num_ws, w_dim), truncated towards the running mean w_avg."""
  num_ws: int
  w_dim: int = 512
  num_layers: int = 8
  num_classes: int = 0
  lr_mul: float = 0.01
  w_avg_beta: float = 0.995
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, labels=None, *, train: bool = False, truncation=1.0):
    x = normalize_2nd_moment(z.astype(jnp.float32))
    if self.num_classes:                                        # StyleGAN2-ADA: embed(c), normalised, concatenated
      e = Dense(self.w_dim, name='embed')(jax.nn.one_hot(labels, self.num_classes))
      x = jnp.concatenate([x, normalize_2nd_moment(e)], -1)
    for i in range(self.num_layers):
      x = Dense(self.w_dim, self.lr_mul, activation=True, dtype=self.dtype, name=f'fc{i}')(x)
    w = x.astype(jnp.float32)                                   # (B, w_dim)
    w_avg = self.variable('batch_stats', 'w_avg', jnp.zeros, (self.w_dim,))
    if train and not self.is_initializing():
      mean = jnp.mean(w, 0)
      w_avg.value = mean + self.w_avg_beta * (w_avg.value - mean)
    ws = jnp.broadcast_to(w[:, None], (w.shape[0], self.num_ws, self.w_dim))
    return truncate(ws, w_avg.value, truncation)


class Synthesis(nn.Module):
  """ws (B, num_ws, w_dim) -> images (B, H, W, C), about [-1, 1] (no output nonlinearity)."""
  image_shape: tuple[int, int, int]
  features: int = 64                # channels at the image resolution; doubling per halving
  max_features: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ws, shared_noise: bool = False):
    h, w, c = self.image_shape
    n = num_resolutions(h, w)
    widths = _widths(self.features, self.max_features, n)
    const = self.param('const', _normal, (h >> n, w >> n, widths[n]))
    x = jnp.broadcast_to(const.astype(self.dtype), (ws.shape[0], *const.shape))
    x = StyleLayer(widths[n], dtype=self.dtype, name=f'b{h >> n}_conv1')(x, ws[:, 0], shared_noise)
    image = ToRGB(c, self.dtype, name=f'b{h >> n}_torgb')(x, ws[:, 1])
    for i, level in enumerate(reversed(range(n))):              # levels n-1 .. 0: sides 2x larger each
      name = f'b{h >> level}'
      x = StyleLayer(widths[level], up=True, dtype=self.dtype, name=f'{name}_conv0')(x, ws[:, 2 * i + 1], shared_noise)
      x = StyleLayer(widths[level], dtype=self.dtype, name=f'{name}_conv1')(x, ws[:, 2 * i + 2], shared_noise)
      image = upsample(image) + ToRGB(c, self.dtype, name=f'{name}_torgb')(x, ws[:, 2 * i + 3])
    return image.astype(jnp.float32)


class Generator(nn.Module):
  """z (B, latent_dim) [, labels (B,)] -> images (B, H, W, C) = synthesis(mapping(z)), noise from rng 'noise'
  (style mixing is the family's: it calls mapping and synthesis itself). Also holds pl_mean, the running mean
  of path lengths that the family's path-length regulariser keeps (with w_avg, in 'batch_stats')."""
  image_shape: tuple[int, int, int]
  w_dim: int = 512
  mapping_layers: int = 8
  features: int = 64
  max_features: int = 512
  num_classes: int = 0
  lr_mul: float = 0.01
  dtype: Any = jnp.float32

  @property
  def num_ws(self) -> int:
    return 2 * (num_resolutions(*self.image_shape[:2]) + 1)

  def setup(self):
    self.mapping_net = Mapping(self.num_ws, self.w_dim, self.mapping_layers, self.num_classes, self.lr_mul,
                               dtype=self.dtype)
    self.synthesis_net = Synthesis(tuple(self.image_shape), self.features, self.max_features, self.dtype)
    self.pl_mean = self.variable('batch_stats', 'pl_mean', jnp.zeros, ())

  def mapping(self, z, labels=None, *, train: bool = False, truncation=1.0):
    return self.mapping_net(z, labels, train=train, truncation=truncation)

  def synthesis(self, ws, shared_noise: bool = False):
    return self.synthesis_net(ws, shared_noise)

  def __call__(self, z, labels=None, *, train: bool, truncation=1.0):
    return self.synthesis(self.mapping(z, labels, train=train, truncation=truncation))


class Discriminator(nn.Module):
  """images (B, H, W, C) [, labels (B,)] -> logits (B,); no normalisation layers (train is unused)."""
  features: int = 64                # channels at the image resolution; doubling per halving
  max_features: int = 512
  num_classes: int = 0
  mbstd_group: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool = False):
    del train
    n = num_resolutions(*x.shape[1:3])
    widths = _widths(self.features, self.max_features, n)
    x = Conv(widths[0], 1, dtype=self.dtype, name='fromrgb')(x)
    for level in range(n):
      name = f'b{x.shape[1]}'
      skip = Conv(widths[level + 1], 1, use_bias=False, activation=False, down=True, dtype=self.dtype,
                  name=f'{name}_skip')(x)
      y = Conv(widths[level], dtype=self.dtype, name=f'{name}_conv0')(x)
      y = Conv(widths[level + 1], down=True, dtype=self.dtype, name=f'{name}_conv1')(y)
      x = (skip + y) * math.sqrt(0.5)
    x = minibatch_stddev(x, self.mbstd_group)
    x = Conv(widths[n], dtype=self.dtype, name='epilogue_conv')(x)
    x = Dense(widths[n], activation=True, dtype=self.dtype, name='epilogue_fc')(x.reshape(x.shape[0], -1))
    if self.num_classes:                                        # projection onto the class embedding
      cmap = normalize_2nd_moment(Dense(widths[n], name='embed')(jax.nn.one_hot(labels, self.num_classes)))
      out = jnp.sum(Dense(widths[n], dtype=self.dtype, name='out')(x) * cmap, -1) / math.sqrt(widths[n])
    else:
      out = Dense(1, dtype=self.dtype, name='out')(x)[:, 0]
    return out.astype(jnp.float32)
