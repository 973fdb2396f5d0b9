"""jaxgen: GANs, VAEs, diffusion and language models as pure JAX functions.

    sampler = jaxgen.load_sampler('runs/vae')
    images = sampler(jax.random.key(0), num=16)      # uint8 (16, H, W, C)
    encode, tokenizer = jaxgen.load_encoder('runs/bert')
    features, mask = encode(['To be, or not to be'])  # (1, T, C) float32, (1, T) bool
    gpt2 = jaxgen.load_pretrained('gpt2')             # a Hugging Face GPT-2 (folder or Hub name), no workdir
    texts = gpt2(jax.random.key(0), prompt='Hello', num=2, max_new_tokens=20)
"""
__version__ = '0.1.0'

import os as _os


def _set_cpu_xla_flags():
  """Keep XLA:CPU's convolutions on its Eigen kernels: jaxlib 0.10 hands them to YNNPACK by default (0.8.2 is the
  first with that fusion type), which runs jaxgen's UNet convolutions at half the rate (78-91 vs 164-183 GFLOP/s
  at 3x3, 28x28 to 7x7, 32-128 channels, batch 32 on a 2-core EPYC; docs/performance.md). Appended to XLA_FLAGS
  before JAX starts its backends unless the user already chose a YNNPACK fusion set; CPU only, GPUs and TPUs
  ignore it."""
  flags = _os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' in flags:
    return
  import jaxlib.version   # what jax imports anyway (importlib.metadata would add ~30 ms to every start-up)
  try:
    version = tuple(int(part) for part in jaxlib.version.__version__.split('.')[:3])
  except ValueError:
    return
  if version >= (0, 8, 2):   # older jaxlibs have no such fusion type (and reject unknown flags)
    _os.environ['XLA_FLAGS'] = f'{flags} --xla_cpu_experimental_ynn_fusion_type=-individual_convolution'.strip()


_set_cpu_xla_flags()


def load_state(workdir: str, step: int | None = None):
  """(config, family, state) of a trained workdir at its latest (or the given) checkpoint, on local devices."""
  from jaxgen import families
  from jaxgen.train import checkpointing
  config, _, family, state = checkpointing.restore_run(workdir, families.build, step)
  return config, family, state


def load_sampler(workdir: str, step: int | None = None):
  """The family's jitted sampler with the trained (EMA where used) parameters of `workdir`."""
  _, family, state = load_state(workdir, step)
  return family.make_sampler(state)


def load_pretrained(name_or_dir: str, dtype: str = 'float32'):
  """The text sampler of a Hugging Face GPT-2 checkpoint without a workdir: a folder with config.json,
  model.safetensors and its tokenizer files, or a Hub name (gpt2, gpt2-medium, ...; downloaded once).
  sampler(rng, num=1, prompt='', max_new_tokens=200, temperature=1.0, top_k=None, top_p=None) -> list of str,
  as a GPT workdir's; dtype: the compute dtype (bfloat16 on GPU/TPU), parameters float32."""
  from jaxgen.families import gpt
  return gpt.pretrained_sampler(name_or_dir, dtype)


def load_encoder(workdir: str, step: int | None = None):
  """(encode, tokenizer) of a trained encoder, through its family's make_encoder (EMA parameters where trained
  with them). Text encoders (BERT): encode(texts: list[str]) -> (features (B, T, C) float32, mask (B, T) bool),
  jitted, the parameters frozen; encode.apply(params, tokens, mask) is the same map as a pure function of the
  parameters (encode.params) to take gradients through, encode.tokenize(texts) -> (tokens, mask) its inputs.
  Autoencoders give encode(batch) -> latents and tokenizer None."""
  from jaxgen.errors import UserError
  config, family, state = load_state(workdir, step)
  if family.make_encoder is None:
    raise UserError(f'{workdir} holds a {config.family} run, which has no encoder')
  encode = family.make_encoder(state)
  return encode, getattr(encode, 'tokenizer', None)
