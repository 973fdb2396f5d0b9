"""Character-level GPT on Tiny Shakespeare: nanoGPT's config/train_shakespeare_char.py (and its CPU run)."""
import ml_collections

from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'gpt'
  c.data.modality = 'text'
  c.data.name = 'tiny_shakespeare'   # or text_file: set data.text_file to train on your own corpus
  c.data.text_file = ml_collections.config_dict.placeholder(str)  # UTF-8 text, split 90/10 into train/val
  c.data.tokenizer = 'char'          # char | byte | bpe
  c.data.bpe_vocab_size = 4096       # for tokenizer=bpe
  c.model.block_size = 256           # context length
  c.model.num_layers = 6             # nanoGPT n_layer
  c.model.num_heads = 6              # n_head
  c.model.embed_dim = 384            # n_embd
  c.model.dropout = 0.2
  c.model.use_bias = False           # biases in Dense and LayerNorm
  c.model.position_embedding = 'learned'   # learned | sinusoidal
  c.model.remat = False              # recompute each block's activations in the backward pass (memory)
  c.model.scan_layers = False        # one nn.scan over the blocks: compiles one block, not num_layers
  c.batch_size = 64
  c.grad_accum_steps = 1             # micro-batches per step (each batch_size / grad_accum_steps)
  c.learning_rate = 1e-3
  c.optim.name = 'adamw'
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.1         # on Dense kernels only
  c.optim.schedule = 'cosine'        # to learning_rate * min_lr_ratio = 1e-4 at num_train_steps
  c.optim.warmup_steps = 100
  c.optim.min_lr_ratio = 0.1
  c.optim.grad_clip = 1.0
  set_schedule(c, 5_000, log=10, eval=250, checkpoint=250, sample=1_000)
  c.data.eval_examples = 200 * 64    # nanoGPT eval_iters x batch_size windows of the validation text
  c.num_preview = 2
  c.sampling = ml_collections.ConfigDict()   # what samples/step_<N>.txt shows
  c.sampling.prompt = ''               # '' starts after a newline
  c.sampling.max_new_tokens = 500
  c.sampling.temperature = 0.8
  c.sampling.top_k = 200
  c.sampling.top_p = ml_collections.config_dict.placeholder(float)

  def cpu(c):                        # nanoGPT README: --device=cpu ... val loss ~1.88
    c.model.block_size = 64
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.embed_dim = 128
    c.model.dropout = 0.0
    c.batch_size = 12
    set_schedule(c, 2_000, log=10, eval=250, checkpoint=250, sample=1_000)
    c.data.eval_examples = 20 * 12

  def smoke_(c):
    c.model.block_size = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.embed_dim = 32
    smoke(c, num_preview=2)
    c.optim.warmup_steps = 2
    c.sampling.max_new_tokens = 32

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
