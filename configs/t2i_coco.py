"""Text-to-image latent diffusion on COCO captions (TFDS coco_captions, downloaded): SD's setting at 64x64.

python train.py --config configs/t2i_coco.py --workdir runs/t2i_coco          # online; GPUs / TPUs
python sample.py --workdir runs/t2i_coco --prompt "a dog on a beach" --guidance 5 --num 8 --out dogs.png

t2i_fashion_scenes with real data: images resized to 64x64 (data.image_size; the whole image, not a crop), one of
each image's five captions drawn per epoch (data.caption_key); a KL autoencoder with f = 8 (SD's kl-f8 shape:
64x64x3 -> 8x8x4), BPE tokens for the BERT stage, a wider UNet with SD's 8 heads and depth-1 transformers.
Not trainable on a CPU; its `smoke` preset builds and benchmarks (python -m jaxgen.bench) anywhere.
"""
import ml_collections

from jaxgen.config import apply_preset, sibling_config


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = sibling_config(__file__, 't2i_fashion_scenes', 'smoke' if preset == 'smoke' else 'default')
  c.data.name = 'coco_captions'
  c.data.caption_key = 'captions/text'
  c.data.image_size = 64
  a, t, m = c.autoencoder, c.text_encoder, c.model
  a.data.name, a.data.image_size = 'coco_captions', 64
  t.data.tokenizer = 'bpe'
  t.data.bpe_vocab_size = 8192
  t.model.block_size = 48                 # BPE tokens of a COCO caption, with [CLS] and [SEP]

  def default(c):
    a.model.ch_mult = (1, 2, 4, 4)        # f = 2^3 = 8: 64x64 -> 8x8 (SD's kl-f8)
    c.batch_size = 256
    c.num_train_steps = 500_000
    m.ch = 256
    m.ch_mult = (1, 2, 4)                 # 8x8 -> 4x4 -> 2x2 latents
    m.transformer_heads = 8
    m.dtype = 'bfloat16'

  def smoke_(c):                          # t2i_fashion_scenes' smoke sizes at f = 8
    a.model.ch_mult = (1, 2, 2, 2)

  if preset == 'default':
    default(c)
  return apply_preset(c, preset, smoke=smoke_)
