"""Sentence VAE (Bowman et al. 2016) on the lines of Tiny Shakespeare: word tokens, GRU encoder and decoder.

python train.py --config configs/vae_text_shakespeare.py:cpu --workdir runs/svae --config.data.manual_dir=DIR
python sample.py --workdir runs/svae --num 10
python sample.py --workdir runs/svae --interpolate "I will not go." "My lord, the king is dead." --num 5
"""
import ml_collections

from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'text_vae'
  c.data.modality = 'sentences'      # one example per line
  c.data.name = 'tiny_shakespeare'   # or --config.data.text_file=PATH (UTF-8, one example per line)
  c.data.text_file = ml_collections.config_dict.placeholder(str)
  c.data.tokenizer = 'word'          # word | bpe, trained on the training lines
  c.data.vocab_size = 8_000          # words (the rest become [UNK]), specials included
  c.data.max_length = 24             # BOS + up to 22 tokens + EOS, then PAD
  c.data.eval_examples = 2_048
  m = c.model
  m.embed_dim = 256
  m.hidden = 512                     # GRU width of encoder (each direction) and decoder
  m.latent_dim = 32
  m.kl_anneal = 'logistic'           # linear | logistic | none
  m.kl_anneal_steps = 10_000         # beta reaches ~1 at this step
  m.word_dropout = 0.25              # decoder inputs replaced by [UNK]
  m.free_bits = 0.0                  # > 0: KL floor in nats per latent dimension (Kingma et al. 2016)
  m.iwae_k = 64                      # importance samples for the eval NLL
  m.sample_temperature = 1.0         # prior samples in previews and eval
  c.optim.name = 'adam'
  c.optim.grad_clip = 5.0
  c.learning_rate = 1e-3
  c.batch_size = 64
  c.num_preview = 10
  set_schedule(c, 30_000, log=100, eval=2_000, checkpoint=2_000, sample=2_000)

  def cpu(c):                        # recognisable fragments on 2 CPU cores
    c.data.vocab_size = 3_000
    c.data.max_length = 16
    m.embed_dim = 96
    m.hidden = 192
    m.latent_dim = 16
    m.kl_anneal_steps = 2_000
    m.iwae_k = 16
    c.data.eval_examples = 1_024
    set_schedule(c, 4_000, log=100, eval=1_000, checkpoint=1_000, sample=1_000)

  def smoke_(c):
    c.data.vocab_size = 64
    c.data.max_length = 10
    m.embed_dim = 8
    m.hidden = 16
    m.latent_dim = 4
    m.kl_anneal_steps = 4
    m.iwae_k = 4
    smoke(c, num_preview=3)

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
