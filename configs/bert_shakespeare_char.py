"""Character-level BERT on Tiny Shakespeare: masked-language modelling (Devlin et al. 2019), no NSP (RoBERTa).

python train.py --config configs/bert_shakespeare_char.py:cpu --workdir runs/bert --config.data.manual_dir=DIR
python sample.py --workdir runs/bert --fill "To be, or not to [MASK][MASK]: that is the question"
python -m jaxgen.eval --workdir runs/bert --num 16        # masked-token accuracy, MLM loss, pseudo-perplexity

`default` is gpt_shakespeare_char's Transformer (6 layers, 6 heads, 384 wide, 256 positions) as an encoder, so
the two compare at the same size; BERT's own choices elsewhere: dropout 0.1, weight decay 0.01, warmup, and
twice GPT's steps, since only 15% of the positions give a loss.
"""
import ml_collections

from jaxgen.config import apply_preset, base_config, set_schedule, smoke


def get_config(preset: str = 'default'):
  c = base_config()
  c.family = 'bert'
  c.data.modality = 'text'
  c.data.name = 'tiny_shakespeare'   # or text_file: set data.text_file to train on your own corpus
  c.data.text_file = ml_collections.config_dict.placeholder(str)  # UTF-8 text, split 90/10 into train/val
  c.data.tokenizer = 'char'          # char | byte | bpe
  c.data.bpe_vocab_size = 4096       # for tokenizer=bpe (special tokens included)
  c.data.special_tokens = ('[PAD]', '[CLS]', '[SEP]', '[MASK]')   # ids 0..3
  c.model.block_size = 256           # sequence length: [CLS] + block_size - 2 characters + [SEP]
  c.data.window_length = c.model.get_ref('block_size') - 2   # text tokens per example; follows block_size
  c.data.eval_examples = 100 * 64    # validation windows of the MLM loss / accuracy
  c.model.num_layers = 6
  c.model.num_heads = 6
  c.model.embed_dim = 384
  c.model.dropout = 0.1
  c.model.use_bias = True            # biases in Dense and LayerNorm, as BERT
  c.model.position_embedding = 'learned'   # learned | sinusoidal
  c.model.nsp = False                # next-sentence prediction: [CLS] A [SEP] B [SEP] with segment embeddings
  c.mlm = ml_collections.ConfigDict()
  c.mlm.select_rate = 0.15           # share of the text tokens predicted
  c.mlm.mask_rate = 0.8              # of those: replaced by [MASK]
  c.mlm.random_rate = 0.1            # replaced by a random token; the rest (0.1) kept
  c.mlm.short_seq_prob = 0.1         # sequences cut to a random length (BERT's short_seq_prob)
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.optim.name = 'adamw'
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.01        # on Dense kernels only
  c.optim.schedule = 'cosine'        # to learning_rate * min_lr_ratio at num_train_steps
  c.optim.warmup_steps = 200
  c.optim.min_lr_ratio = 0.1
  c.optim.grad_clip = 1.0
  set_schedule(c, 10_000, log=10, eval=500, checkpoint=500, sample=1_000)
  c.num_preview = 4                  # validation-like windows with 15% masked, filled greedily

  def cpu(c):                        # ~10 min on 2 CPU cores
    c.model.block_size = 64
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.embed_dim = 128
    c.model.dropout = 0.0
    c.batch_size = 32
    c.optim.warmup_steps = 100
    set_schedule(c, 4_000, log=50, eval=500, checkpoint=500, sample=1_000)
    c.data.eval_examples = 20 * 32

  def smoke_(c):
    c.model.block_size = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.embed_dim = 32
    smoke(c, num_preview=2)
    c.optim.warmup_steps = 2

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
