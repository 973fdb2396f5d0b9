"""Text-to-image latent diffusion on fashion_mnist_scenes: Stable Diffusion's architecture at 32x32.

python train.py --config configs/t2i_fashion_scenes.py:cpu --workdir runs/t2i     # trains every missing stage first
python sample.py --workdir runs/t2i --prompt "a red sneaker on the left" --guidance 3 --num 8 --out sneakers.png
python -m jaxgen.eval --workdir runs/t2i --num 200        # prompt accuracy (seen / held-out pairs), FD-scenes

Stages: `autoencoder` (a KL autoencoder, f = 4: 32x32x3 -> 8x8x4) and `text_encoder` (BERT on the captions, word
tokens), each trained in <workdir>/<name> unless --config.<name>_workdir=DIR names a trained one;
--config.model.text_encoder=joint trains the text encoder's Transformer with the UNet instead (no stage).
"""
import ml_collections

from jaxgen.config import apply_preset, base_config, set_schedule, sibling_config, smoke


def autoencoder_config(preset: str) -> ml_collections.ConfigDict:
  """Stage one: SD's KL autoencoder (kl-f4 shape at default) on the scenes' images."""
  c = base_config()
  c.family = 'autoencoder_kl'
  c.data.name = 'fashion_mnist_scenes'
  c.data.pixel_range = (-1.0, 1.0)
  c.batch_size = 64
  c.learning_rate = 1e-4
  set_schedule(c, 50_000, log=100, eval=5_000, checkpoint=5_000, sample=5_000)
  c.data.eval_examples = 1_024
  c.optim.name = 'adam'
  c.optim.b2 = 0.9                   # SD's autoencoder Adam betas (0.5, 0.9) without the discriminator
  m = c.model
  m.z_channels = 4
  m.ch = 128
  m.ch_mult = (1, 2, 4)              # f = 2^(3 - 1) = 4: 32x32 -> 8x8
  m.num_res_blocks = 2
  m.norm_groups = 32
  m.kl_weight = 1e-6                 # SD's, relative to the reconstruction summed over pixels
  m.reconstruction = 'l1'            # l1 | l2

  def cpu(c):                        # ~4 min on 2 CPU cores
    c.batch_size = 32
    c.learning_rate = 1e-3
    set_schedule(c, 1_100, log=50, eval=1_100, checkpoint=500, sample=500)
    c.data.eval_examples = 512
    m.ch = 16
    m.ch_mult = (1, 2, 2)
    m.num_res_blocks = 0             # no blocks between the encoder's down-samplings, one per decoder level
    m.norm_groups = 8

  def smoke_(c):
    smoke(c, steps=4, checkpoint=2)
    m.ch = 8
    m.ch_mult = (1, 2, 2)
    m.num_res_blocks = 0             # as at cpu: the mid and decoder ResBlocks remain
    m.norm_groups = 4

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)


def text_encoder_config(preset: str) -> ml_collections.ConfigDict:
  """The text encoder: bert_shakespeare_char's BERT of the same preset on word tokens of the captions (24
  positions: the longest caption is 20 words and punctuation)."""
  c = sibling_config(__file__, 'bert_shakespeare_char', preset)
  c.data.name = 'text_file'          # data.text_file: the run's train captions, written by jaxgen.stages
  c.data.tokenizer = 'word'
  c.data.bpe_vocab_size = 256        # at most; the captions have about 60 words
  c.model.block_size = 24
  if preset == 'cpu':                # ~1.5 min on 2 CPU cores
    c.model.num_layers = 2
    set_schedule(c, 1_500, log=50, eval=1_500, checkpoint=500, sample=1_500)
  return c


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = base_config()
  c.family = 't2i'
  c.data.modality = 'captioned'      # image-caption pairs (jaxgen.data.captions)
  c.data.name = 'fashion_mnist_scenes'
  c.autoencoder = autoencoder_config(preset)
  c.autoencoder_workdir = ml_collections.config_dict.placeholder(str)
  c.text_encoder = text_encoder_config(preset)
  c.text_encoder_workdir = ml_collections.config_dict.placeholder(str)

  c.batch_size = 128
  c.learning_rate = 1e-4
  set_schedule(c, 100_000, log=100, eval=5_000, checkpoint=5_000, sample=5_000)
  c.data.eval_examples = 2_048
  c.num_preview = 32                 # one image for each of the first 32 test captions
  c.optim.name = 'adam'
  c.optim.warmup_steps = 1_000
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = True

  m = c.model                        # UNet, text conditioning and diffusion process (all fix the checkpoint)
  m.text_encoder = 'bert'            # bert: the frozen stage | joint: text_encoder's Transformer trained here
  m.ch = 128
  m.ch_mult = (1, 2, 2)              # 8x8 -> 4x4 -> 2x2 latents
  m.num_res_blocks = 2
  m.attn_resolutions = ()            # self-attention only inside the transformer blocks
  m.transformer_resolutions = (8, 4, 2)   # SpatialTransformers (self- and cross-attention, GEGLU) after each block
  m.transformer_depth = 1
  m.transformer_heads = 8
  m.num_heads = 1
  m.dropout = 0.0
  m.norm_groups = 32
  m.p_uncond = 0.1                   # captions replaced by the empty prompt (classifier-free guidance)
  m.timesteps = 1000
  m.beta_schedule = 'linear'         # linear | cosine (cosine needs prediction=v without x0 clipping)
  m.prediction = 'eps'               # eps | v

  s = c.sampling = ml_collections.ConfigDict()   # defaults of the sampler; sample.py flags override
  s.steps = 50
  s.sampler = 'ddim'
  s.eta = 0.0
  s.guidance = 3.0                   # SD's scale: 1 = the conditional model, 0 = the unconditional one
  s.sigma = 'beta'

  def cpu(c):                        # ~20 min on 2 CPU cores (all stages: ~30 min)
    c.batch_size = 64
    c.learning_rate = 1e-3
    set_schedule(c, 4_500, log=100, eval=4_500, checkpoint=1_000, sample=1_500)
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.data.eval_examples = 512
    m.ch = 32
    m.ch_mult = (1, 2)               # 8x8 -> 4x4
    m.num_res_blocks = 1
    m.transformer_resolutions = (4,)   # and the middle: the text is read at 4x4 (an item is 2x2 there)
    m.transformer_heads = 4
    m.norm_groups = 8

  def smoke_(c):
    smoke(c, steps=4, checkpoint=2, num_preview=4)
    c.optim.warmup_steps = 0
    m.ch = 8
    m.ch_mult = (1,)
    m.num_res_blocks = 1
    m.transformer_resolutions = (8,)
    m.transformer_heads = 2
    m.norm_groups = 4
    s.steps = 3

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
