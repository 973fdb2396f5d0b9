"""GPT-2 small shape (124M parameters; nanoGPT's config/train_gpt2.py) on a user's corpus with a BPE tokenizer.

Mainly for benchmarking; train with --config.data.text_file=PATH (OpenWebText-like text).
"""
import ml_collections

from jaxgen.config import base_config


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'gpt'
  c.data.name = 'text_file'
  c.data.text_file = ml_collections.config_dict.placeholder(str)  # UTF-8 text, split 90/10 into train/val
  c.data.tokenizer = 'bpe'           # char | byte | bpe
  c.data.bpe_vocab_size = 50304      # GPT-2's 50257 padded to a multiple of 64
  c.model.vocab_size = 50304         # set by data setup from the tokenizer
  c.model.block_size = 1024
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.embed_dim = 768
  c.model.dropout = 0.0
  c.model.use_bias = False
  c.model.position_embedding = 'learned'
  c.model.dtype = 'bfloat16'
  c.batch_size = 480                 # 12 x 40 sequences of 1024 tokens: ~0.5M tokens per update
  c.grad_accum_steps = 40
  c.num_train_steps = 600_000
  c.learning_rate = 6e-4
  c.optim.name = 'adamw'
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.1
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 2_000
  c.optim.min_lr_ratio = 0.1
  c.optim.grad_clip = 1.0
  c.log_every_steps = 10
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 1_000
  c.sample_every_steps = 1_000
  c.data.eval_examples = 200 * 12
  c.num_preview = 2
  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = ''
  c.sample.max_new_tokens = 200
  c.sample.temperature = 0.8
  c.sample.top_k = 200
  c.sample.top_p = ml_collections.config_dict.placeholder(float)
  if preset == 'default':
    pass
  elif preset == 'cpu':              # the same model in float32 with a small batch: for CPU benchmarks only
    c.model.dtype = 'float32'
    c.batch_size = 4
    c.grad_accum_steps = 1
    c.num_train_steps = 100
    c.data.eval_examples = 8
  elif preset == 'smoke':
    c.data.bpe_vocab_size = 512
    c.model.vocab_size = 512
    c.model.block_size = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.embed_dim = 32
    c.model.dtype = 'float32'
    c.batch_size = 8
    c.grad_accum_steps = 2
    c.num_train_steps = 6
    c.optim.warmup_steps = 2
    c.log_every_steps = 2
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 3
    c.sample_every_steps = 6
    c.data.eval_examples = 16
    c.sample.max_new_tokens = 32
  else:
    raise ValueError(f'unknown preset {preset!r}; use default, cpu or smoke')
  return c
