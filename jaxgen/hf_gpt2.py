"""Hugging Face GPT-2 checkpoints <-> jaxgen's GPT (transformers' GPT2LMHeadModel layout; Radford et al. 2019).

A checkpoint is a folder (or a Hub name: gpt2, gpt2-medium, gpt2-large, gpt2-xl, org/name) with config.json and
model.safetensors (or shards listed in model.safetensors.index.json), and its tokenizer's files. Its tensors
are jaxgen GPT parameters (use_bias=True, learned positions) up to reshapes; HF's Conv1D weights are (in, out):

  HF                                  shape          jaxgen GPT                   shape
  wte.weight (= tied lm_head)         (V, C)         wte/embedding                (V, C)
  wpe.weight                          (n_pos, C)     wpe/embedding                (block_size, C): the first rows
  h.i.ln_1.weight, .bias              (C,)           h_i/ln_1/scale, bias         (C,)
  h.i.attn.c_attn.weight, .bias       (C, 3C)        h_i/attn/c_attn/kernel, bias (C, 3, H, D), (3, H, D):
                                                       columns [q | k | v], each head-major (h D + d)
  h.i.attn.c_proj.weight, .bias       (C, C)         h_i/attn/c_proj/kernel       (H, D, C)
  h.i.ln_2.*, h.i.mlp.c_fc.*          (C, 4C)        h_i/ln_2/*, h_i/c_fc/*       (C, 4C)
  h.i.mlp.c_proj.*                    (4C, C)        h_i/c_proj/*                 (4C, C)
  ln_f.weight, .bias                  (C,)           ln_f/scale, bias             (C,)

Both compute h = LN(x) with eps 1e-5, Attn = softmax(q k^T / sqrt(D) + causal mask) v per head, MLP = GELU's tanh
form (gelu_new) and logits = LN_f(h_L) W_te^T, so the logits agree to float round-off (tests/test_interop.py
checks them against a numpy forward pass of the HF layout). Reading accepts transformers' 'transformer.' key
prefix and ignores the attention-mask buffers (attn.bias, attn.masked_bias) of older checkpoints. Writing gives
what GPT2LMHeadModel.save_pretrained gives: 'transformer.'-prefixed float32 tensors without the tied lm_head,
safetensors metadata {'format': 'pt'}, and a config.json. A jaxgen GPT without biases is written with zero
biases (the same function); sinusoidal positions become the wpe table.
"""
import json
import os
import re

import numpy as np
import safetensors.numpy

from jaxgen import files
from jaxgen.data import tokenizers
from jaxgen.errors import UserError
from jaxgen.models.gpt import sinusoidal_positions, unstack_layers

CHECKPOINT_FILES = ['config.json', '*.safetensors', 'model.safetensors.index.json', *tokenizers.GPT2_FILES,
                    'tokenizer_config.json', 'special_tokens_map.json']
PREFIX = 'transformer.'
BUFFERS = re.compile(r'h\.\d+\.attn\.(masked_)?bias')   # causal-mask buffers of older checkpoints, not parameters
GELU_TANH = ('gelu_new', 'gelu_pytorch_tanh', 'gelu_fast')   # the same function: 0.5 x (1 + tanh(...))


def checkpoint_dir(name_or_dir: str) -> str:
  """The local (or gs://) folder of a checkpoint: the folder itself, or a Hub download (cached)."""
  return files.hub_snapshot(name_or_dir, CHECKPOINT_FILES)


def read_config(folder: str) -> dict:
  """The checkpoint's config.json, refused (one line) where it is not a GPT-2 that jaxgen's GPT computes."""
  path = os.path.join(folder, 'config.json')
  if not files.exists(path):
    raise UserError(f'{folder} has no config.json: give the folder of a Hugging Face GPT-2 checkpoint')
  try:
    hf = json.loads(files.read_text(path))
  except ValueError as e:
    raise UserError(f'{path} cannot be read as JSON ({e})') from None
  missing = [k for k in ('n_layer', 'n_head', 'n_embd', 'n_positions', 'vocab_size') if k not in hf]
  if missing:
    raise UserError(f'{path} has no {", ".join(missing)}: not a Hugging Face GPT-2 config')
  computed = {  # key: (its value when absent, the values jaxgen's GPT computes)
      'model_type': (None, ('gpt2',)),
      'activation_function': ('gelu_new', GELU_TANH),
      'layer_norm_epsilon': (1e-5, (1e-5,)),
      'n_inner': (None, (None, 4 * hf['n_embd'])),
      'scale_attn_weights': (True, (True,)),
      'scale_attn_by_inverse_layer_idx': (False, (False,)),
      'tie_word_embeddings': (True, (True,)),
  }
  bad = [f'{k}={hf.get(k, absent)!r}' for k, (absent, ok) in computed.items() if hf.get(k, absent) not in ok]
  if bad:
    raise UserError(f'{path}: {", ".join(bad)} is not the GPT-2 that jaxgen computes (model_type gpt2, gelu_new, '
                    'layer_norm_epsilon 1e-5, n_inner 4 n_embd, scaled attention, tied embeddings)')
  return hf


def model_shape(hf: dict) -> dict:
  """jaxgen model keys of an HF GPT-2 config (block_size: its n_positions)."""
  return dict(num_layers=hf['n_layer'], num_heads=hf['n_head'], embed_dim=hf['n_embd'], block_size=hf['n_positions'],
              use_bias=True, position_embedding='learned')


def with_pretrained_shape(config):
  """`config` with the model of its pretrained checkpoint config.init_from: model.num_layers, num_heads,
  embed_dim from its config.json (n_layer, n_head, n_embd), biases and learned positions, and its tokenizer
  (data.tokenizer=gpt2 unless a pretrained tokenizer is named). model.block_size stays config's and may be
  at most n_positions: the first block_size position embeddings are used (nanoGPT's crop_block_size). The
  other keys (dropout, dtype, optimizer, mesh, ...) stay as given. Without init_from: `config` itself."""
  if not config.get('init_from') or config.family != 'gpt':
    return config                     # other families: the trainer refuses init_from where they cannot seed
  hf = read_config(checkpoint_dir(config.init_from))
  shape = model_shape(hf)
  if config.model.block_size > shape['block_size']:
    raise UserError(f'model.block_size={config.model.block_size} is longer than the {shape["block_size"]} '
                    f'positions of {config.init_from}: set --config.model.block_size={shape["block_size"]} or less')
  config = config.copy_and_resolve_references()
  for key in ('num_layers', 'num_heads', 'embed_dim', 'use_bias', 'position_embedding'):
    config.model[key] = shape[key]
  if 'tokenizer' in config.data and config.data.tokenizer in tokenizers.TRAINED:
    config.data.tokenizer = 'gpt2'
  return config


def read_tensors(folder: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint's model.safetensors (or of its shards), by its key."""
  index = os.path.join(folder, 'model.safetensors.index.json')
  if files.exists(index):
    names = sorted(set(json.loads(files.read_text(index))['weight_map'].values()))
  elif files.exists(os.path.join(folder, 'model.safetensors')):
    names = ['model.safetensors']
  else:
    raise UserError(f'{folder} has no model.safetensors: give a Hugging Face checkpoint saved with safetensors '
                    '(transformers: model.save_pretrained(folder) writes it)')
  tensors = {}
  for name in names:
    path = os.path.join(folder, name)
    tensors.update(safetensors.numpy.load_file(path) if files.is_local(path) else
                   safetensors.numpy.load(files.read_bytes(path)))
  return tensors


def to_jaxgen(tensors: dict[str, np.ndarray], hf: dict, block_size: int | None = None) -> dict:
  """jaxgen GPT parameters (float32 numpy, nested dicts) of an HF GPT-2's tensors; positions cut to block_size."""
  t = {k.removeprefix(PREFIX): v for k, v in tensors.items() if not BUFFERS.fullmatch(k.removeprefix(PREFIX))}
  L, H, C = hf['n_layer'], hf['n_head'], hf['n_embd']
  D = C // H
  used = set()

  def get(key, shape=None):
    if key not in t:
      raise UserError(f'the checkpoint has no tensor {key!r} (nor {PREFIX}{key}): not a GPT-2 of config.json\'s shape')
    used.add(key)
    x = np.asarray(t[key], np.float32)
    return x if shape is None else x.reshape(shape)

  def norm(name):
    return {'scale': get(f'{name}.weight'), 'bias': get(f'{name}.bias')}

  params = {'wte': {'embedding': get('wte.weight')},
            'wpe': {'embedding': get('wpe.weight')[:block_size]},
            'ln_f': norm('ln_f')}
  for i in range(L):
    p = f'h.{i}.'
    params[f'h_{i}'] = {
        'ln_1': norm(p + 'ln_1'), 'ln_2': norm(p + 'ln_2'),
        'attn': {'c_attn': {'kernel': get(p + 'attn.c_attn.weight', (C, 3, H, D)),
                            'bias': get(p + 'attn.c_attn.bias', (3, H, D))},
                 'c_proj': {'kernel': get(p + 'attn.c_proj.weight', (H, D, C)), 'bias': get(p + 'attn.c_proj.bias')}},
        'c_fc': {'kernel': get(p + 'mlp.c_fc.weight'), 'bias': get(p + 'mlp.c_fc.bias')},
        'c_proj': {'kernel': get(p + 'mlp.c_proj.weight'), 'bias': get(p + 'mlp.c_proj.bias')},
    }
  if 'lm_head.weight' in t and not np.array_equal(t['lm_head.weight'], t['wte.weight']):
    raise UserError('the checkpoint\'s lm_head.weight differs from wte.weight: jaxgen\'s GPT ties them')
  unknown = sorted(set(t) - used - {'lm_head.weight'})
  if unknown:
    raise UserError(f'the checkpoint has tensors jaxgen\'s GPT does not use ({", ".join(unknown[:3])}, ...): '
                    'not a GPT-2 of config.json\'s shape')
  return params


def from_jaxgen(params, block_size: int) -> dict[str, np.ndarray]:
  """HF GPT-2 tensors ('transformer.'-prefixed, float32, no lm_head: it is wte) of jaxgen GPT parameters; a
  model without biases gets zero biases, and a sinusoidal one (no wpe) its position table of block_size rows;
  scan_layers' stacked blocks are unstacked first."""
  params = unstack_layers(params)
  C = params['wte']['embedding'].shape[1]
  out = {}

  def put(key, x):
    out[PREFIX + key] = np.ascontiguousarray(np.asarray(x, np.float32))

  def dense(key, p, out_shape):
    put(key + '.weight', np.asarray(p['kernel']).reshape(-1, out_shape))
    put(key + '.bias', np.asarray(p['bias']).reshape(-1) if 'bias' in p else np.zeros(out_shape, np.float32))

  def norm(key, p):
    put(key + '.weight', p['scale'])
    put(key + '.bias', p.get('bias', np.zeros(C, np.float32)))

  put('wte.weight', params['wte']['embedding'])
  put('wpe.weight', params['wpe']['embedding'] if 'wpe' in params else sinusoidal_positions(block_size, C))
  norm('ln_f', params['ln_f'])
  layers = sorted((int(k[2:]) for k in params if k.startswith('h_')))
  for i in layers:
    h, p = params[f'h_{i}'], f'h.{i}.'
    norm(p + 'ln_1', h['ln_1'])
    norm(p + 'ln_2', h['ln_2'])
    dense(p + 'attn.c_attn', h['attn']['c_attn'], 3 * C)
    dense(p + 'attn.c_proj', h['attn']['c_proj'], C)
    dense(p + 'mlp.c_fc', h['c_fc'], 4 * C)
    dense(p + 'mlp.c_proj', h['c_proj'], C)
  return out


def hf_config(*, vocab_size: int, block_size: int, num_layers: int, num_heads: int, embed_dim: int,
              dropout: float = 0.0, end_of_text: int | None = None) -> dict:
  """The config.json of GPT2LMHeadModel for a jaxgen GPT of this shape."""
  eot = vocab_size - 1 if end_of_text is None else end_of_text
  return {
      'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2', 'activation_function': 'gelu_new',
      'vocab_size': vocab_size, 'n_positions': block_size, 'n_ctx': block_size, 'n_embd': embed_dim,
      'n_layer': num_layers, 'n_head': num_heads, 'n_inner': None, 'layer_norm_epsilon': 1e-5,
      'initializer_range': 0.02, 'resid_pdrop': dropout, 'embd_pdrop': dropout, 'attn_pdrop': dropout,
      'scale_attn_weights': True, 'scale_attn_by_inverse_layer_idx': False, 'reorder_and_upcast_attn': False,
      'tie_word_embeddings': True, 'use_cache': True, 'bos_token_id': eot, 'eos_token_id': eot,
      'torch_dtype': 'float32',
  }


def write_checkpoint(folder: str, tensors: dict[str, np.ndarray], config: dict, tokenizer=None) -> list[str]:
  """Write model.safetensors and config.json (and the tokenizer's tokenizer.json where it is an HF one) into
  folder, in the layout transformers' GPT2LMHeadModel.from_pretrained(folder) reads; the paths written."""
  paths = [os.path.join(folder, 'model.safetensors'), os.path.join(folder, 'config.json')]
  files.write_atomic(paths[0], safetensors.numpy.save(tensors, metadata={'format': 'pt'}))
  files.write_atomic(paths[1], json.dumps(config, indent=2, sort_keys=True) + '\n')
  if isinstance(tokenizer, tokenizers.HFTokenizer):
    paths.append(os.path.join(folder, tokenizers.FILENAME))
    tokenizer.save(paths[-1])
  return paths


def load_params(name_or_dir: str, block_size: int | None = None) -> dict:
  """jaxgen GPT parameters (numpy) of a Hugging Face GPT-2 checkpoint, positions cut to block_size."""
  folder = checkpoint_dir(name_or_dir)
  return to_jaxgen(read_tensors(folder), read_config(folder), block_size)


def check_like(pretrained, params, source: str) -> None:
  """The pretrained parameters have the structure and shapes of the model's `params` (one line otherwise)."""
  import jax
  got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(pretrained)}
  want = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
  for key in sorted(got.keys() | want.keys()):
    if got.get(key) != want.get(key):
      hint = ('the tokenizer\'s vocabulary is not the checkpoint\'s: use data.tokenizer=gpt2 (or its tokenizer '
              'files)' if 'wte' in key else 'leave the model shape to init_from (train.py sets it from config.json)')
      raise UserError(f'init_from={source}: {key} is {got.get(key)} in the checkpoint but {want.get(key)} in the '
                      f'model of the config; {hint}')
