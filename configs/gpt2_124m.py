"""GPT-2 small shape (124M parameters; nanoGPT's config/train_gpt2.py) on a user's corpus with a BPE tokenizer.

Mainly for benchmarking; train with --config.data.text_file=PATH (OpenWebText-like text).
"""
import ml_collections

from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'gpt'
  c.data.modality = 'text'
  c.data.name = 'text_file'
  c.data.text_file = ml_collections.config_dict.placeholder(str)  # UTF-8 text, split 90/10 into train/val
  c.data.tokenizer = 'bpe'           # char | byte | bpe
  c.data.bpe_vocab_size = 50304      # GPT-2's 50257 padded to a multiple of 64
  c.model.block_size = 1024
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.embed_dim = 768
  c.model.dropout = 0.0
  c.model.use_bias = False
  c.model.position_embedding = 'learned'
  c.model.remat = False              # recompute each block's activations in the backward pass (memory)
  c.model.scan_layers = False        # one nn.scan over the blocks: compiles one block, not num_layers
  c.model.dtype = 'bfloat16'
  c.batch_size = 480                 # 12 x 40 sequences of 1024 tokens: ~0.5M tokens per update
  c.grad_accum_steps = 40
  c.learning_rate = 6e-4
  c.optim.name = 'adamw'
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.1
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 2_000
  c.optim.min_lr_ratio = 0.1
  c.optim.grad_clip = 1.0
  set_schedule(c, 600_000, log=10, eval=1_000, checkpoint=1_000, sample=1_000)
  c.data.eval_examples = 200 * 12
  c.num_preview = 2
  c.sampling = ml_collections.ConfigDict()
  c.sampling.prompt = ''
  c.sampling.max_new_tokens = 200
  c.sampling.temperature = 0.8
  c.sampling.top_k = 200
  c.sampling.top_p = ml_collections.config_dict.placeholder(float)

  def cpu(c):                        # the same model in float32 with a small batch: for CPU benchmarks only
    c.model.dtype = 'float32'
    c.batch_size = 4
    c.grad_accum_steps = 1
    c.num_train_steps = 100
    c.data.eval_examples = 8

  def smoke_(c):
    c.data.bpe_vocab_size = 512
    c.model.block_size = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.embed_dim = 32
    c.model.dtype = 'float32'
    smoke(c, num_preview=2)
    c.grad_accum_steps = 2
    c.optim.warmup_steps = 2
    c.sampling.max_new_tokens = 32

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
