"""Interop: Hugging Face GPT-2 checkpoints in and out, GPT-2's tokenizer, export, installed commands and configs by
name, the persistent compilation cache, run tracking, and cloud-path code paths (run on local paths)."""
import json
import os
import re
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import tokenizers as hf

from configs.gpt_shakespeare_char import get_config
from jaxgen import cli, export, files, hf_gpt2
from jaxgen.data import text, tokenizers
from jaxgen.errors import UserError
from jaxgen.families import gpt
from jaxgen.models.gpt import GPT
from tests.conftest import ROOT

CORPUS = ''.join(f'Line {i}: to be, or not to be; that is the question {i * i % 97}.\n' for i in range(300))
EOT = '<|endoftext|>'
SHAPE = dict(n_layer=2, n_head=2, n_embd=16, n_positions=32)


# ------------------------------------------------------------------------------- an HF checkpoint, by hand

def gpt2_tokenizer_files(folder) -> int:
  """GPT-2-style vocab.json + merges.txt of a small byte-level BPE with '<|endoftext|>' (its last id); the size."""
  tokenizer = hf.Tokenizer(hf.models.BPE())
  tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = hf.trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                   initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator([CORPUS], trainer)
  vocab = tokenizer.get_vocab()
  vocab[EOT] = len(vocab)
  merges = json.loads(tokenizer.to_str())['model']['merges']
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'vocab.json'), 'w') as f:
    json.dump(vocab, f)
  with open(os.path.join(folder, 'merges.txt'), 'w') as f:
    f.write('#version: 0.2\n' + ''.join(' '.join(m) + '\n' if isinstance(m, list) else m + '\n' for m in merges))
  return len(vocab)


def write_hf_checkpoint(folder, seed: int = 0) -> dict[str, np.ndarray]:
  """What GPT2LMHeadModel.save_pretrained writes for a tiny random GPT-2: 'transformer.'-prefixed float32
  tensors (Conv1D weights (in, out)), no tied lm_head, config.json; plus GPT-2 tokenizer files. The tensors."""
  V = gpt2_tokenizer_files(folder)
  L, C, P = SHAPE['n_layer'], SHAPE['n_embd'], SHAPE['n_positions']
  rng = np.random.default_rng(seed)
  w = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)
  t = {'wte.weight': w(V, C), 'wpe.weight': w(P, C), 'ln_f.weight': 1 + w(C), 'ln_f.bias': w(C)}
  for i in range(L):
    for name, (n_in, n_out) in {'attn.c_attn': (C, 3 * C), 'attn.c_proj': (C, C), 'mlp.c_fc': (C, 4 * C),
                                'mlp.c_proj': (4 * C, C)}.items():
      t[f'h.{i}.{name}.weight'], t[f'h.{i}.{name}.bias'] = w(n_in, n_out), w(n_out)
    for ln in ('ln_1', 'ln_2'):
      t[f'h.{i}.{ln}.weight'], t[f'h.{i}.{ln}.bias'] = 1 + w(C), w(C)
  tensors = {'transformer.' + k: v for k, v in t.items()}
  safetensors.numpy.save_file(tensors, os.path.join(folder, 'model.safetensors'), metadata={'format': 'pt'})
  config = dict(model_type='gpt2', architectures=['GPT2LMHeadModel'], activation_function='gelu_new',
                layer_norm_epsilon=1e-5, vocab_size=V, n_inner=None, bos_token_id=V - 1, eos_token_id=V - 1, **SHAPE)
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f)
  return tensors


def hf_gpt2_logits(t: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
  """GPT2LMHeadModel's forward pass in float64 numpy, read off the HF layout: x W + b with Conv1D W (in, out),
  the fused c_attn output split into q | k | v and each into heads, causal softmax(q k^T / sqrt(D)), gelu_new,
  LayerNorm eps 1e-5, logits = ln_f(h) wte^T (the tied lm_head). tokens (T,) -> (T, V)."""
  t = {k.removeprefix('transformer.'): v.astype(np.float64) for k, v in t.items()}
  H, T = SHAPE['n_head'], len(tokens)

  def ln(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * t[name + '.weight'] + t[name + '.bias']

  def conv1d(x, name):
    return x @ t[name + '.weight'] + t[name + '.bias']

  gelu_new = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
  h = t['wte.weight'][tokens] + t['wpe.weight'][:T]                              # (T, C)
  C = h.shape[1]
  for i in range(SHAPE['n_layer']):
    q, k, v = np.split(conv1d(ln(h, f'h.{i}.ln_1'), f'h.{i}.attn.c_attn'), 3, axis=-1)   # (T, C) each
    q, k, v = (x.reshape(T, H, C // H).transpose(1, 0, 2) for x in (q, k, v))     # (H, T, D)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(C // H) + np.triu(np.full((T, T), -np.inf), 1)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    a = (weights / weights.sum(-1, keepdims=True)) @ v                           # (H, T, D)
    h = h + conv1d(a.transpose(1, 0, 2).reshape(T, C), f'h.{i}.attn.c_proj')
    h = h + conv1d(gelu_new(conv1d(ln(h, f'h.{i}.ln_2'), f'h.{i}.mlp.c_fc')), f'h.{i}.mlp.c_proj')
  return ln(h, 'ln_f') @ t['wte.weight'].T


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('hf_gpt2'))
  return folder, write_hf_checkpoint(folder)


def jaxgen_gpt(hf_config: dict) -> GPT:
  return GPT(vocab_size=hf_config['vocab_size'], **hf_gpt2.model_shape(hf_config))


# --------------------------------------------------------------------------------------- weights in and out

def test_hf_gpt2_logits_equal_a_numpy_forward_of_the_hf_layout(checkpoint):
  folder, tensors = checkpoint
  hf_config = hf_gpt2.read_config(folder)
  params = hf_gpt2.load_params(folder)
  tokens = np.random.default_rng(1).integers(0, hf_config['vocab_size'], 20)
  logits, _ = jaxgen_gpt(hf_config).apply({'params': params}, jnp.asarray(tokens)[None])
  want = hf_gpt2_logits(tensors, tokens)
  assert np.abs(want).max() > 1          # not a near-zero output that any layout would match
  np.testing.assert_allclose(np.asarray(logits[0]), want, rtol=1e-4, atol=1e-4)


def test_a_layout_mistake_changes_the_logits(checkpoint):
  """The comparison above can fail: q and k swapped in c_attn's columns changes every logit after the first."""
  folder, tensors = checkpoint
  hf_config = hf_gpt2.read_config(folder)
  params = hf_gpt2.load_params(folder)
  kernel = params['h_0']['attn']['c_attn']['kernel']
  params['h_0']['attn']['c_attn']['kernel'] = kernel[:, [1, 0, 2]]
  tokens = np.arange(10) % hf_config['vocab_size']
  logits, _ = jaxgen_gpt(hf_config).apply({'params': params}, jnp.asarray(tokens)[None])
  assert not np.allclose(np.asarray(logits[0]), hf_gpt2_logits(tensors, tokens), atol=1e-3)


def test_export_of_an_imported_checkpoint_is_byte_identical(checkpoint, tmp_path):
  folder, tensors = checkpoint
  hf_config = hf_gpt2.read_config(folder)
  out = hf_gpt2.from_jaxgen(hf_gpt2.load_params(folder), hf_config['n_positions'])
  assert out.keys() == tensors.keys() and all(out[k].dtype == tensors[k].dtype for k in out)
  config = hf_gpt2.hf_config(vocab_size=hf_config['vocab_size'], block_size=SHAPE['n_positions'],
                             num_layers=SHAPE['n_layer'], num_heads=SHAPE['n_head'], embed_dim=SHAPE['n_embd'])
  hf_gpt2.write_checkpoint(str(tmp_path), out, config)
  with open(os.path.join(folder, 'model.safetensors'), 'rb') as a, open(tmp_path / 'model.safetensors', 'rb') as b:
    assert a.read() == b.read()
  assert {k: v for k, v in hf_gpt2.read_config(str(tmp_path)).items() if k in hf_config} == hf_config


def test_hub_layout_without_prefix_and_with_mask_buffers_loads_the_same(checkpoint, tmp_path):
  """The Hub's gpt2 files: keys without 'transformer.', attn.bias mask buffers, an lm_head equal to wte."""
  folder, tensors = checkpoint
  hub = {k.removeprefix('transformer.'): v for k, v in tensors.items()}
  hub['h.0.attn.bias'] = np.tril(np.ones((1, 1, 32, 32), np.float32))
  hub['lm_head.weight'] = hub['wte.weight']
  safetensors.numpy.save_file(hub, str(tmp_path / 'model.safetensors'))
  os.link(os.path.join(folder, 'config.json'), tmp_path / 'config.json')
  assert jax.tree.all(jax.tree.map(np.array_equal, hf_gpt2.load_params(str(tmp_path)), hf_gpt2.load_params(folder)))


def test_checkpoints_jaxgen_cannot_compute_are_refused(checkpoint, tmp_path):
  folder, _ = checkpoint
  config = json.load(open(os.path.join(folder, 'config.json')))
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({**config, 'activation_function': 'relu', 'layer_norm_epsilon': 1e-6}, f)
  with pytest.raises(UserError, match=r"activation_function='relu', layer_norm_epsilon=1e-06 is not the GPT-2"):
    hf_gpt2.read_config(str(tmp_path))
  with pytest.raises(UserError, match='has no model.safetensors'):
    hf_gpt2.read_tensors(str(tmp_path))
  with pytest.raises(UserError, match=r'neither a directory nor a Hugging Face Hub name'):
    files.hub_snapshot('../no such dir', ['config.json'])


def test_the_hub_download_path_asks_huggingface_hub(monkeypatch, checkpoint):
  """A name that is no folder goes to huggingface_hub.snapshot_download (network in real use)."""
  import huggingface_hub
  folder, _ = checkpoint
  asked = []
  monkeypatch.setattr(huggingface_hub, 'snapshot_download',
                      lambda repo_id, allow_patterns: asked.append((repo_id, allow_patterns)) or folder)
  assert hf_gpt2.checkpoint_dir('gpt2-medium') == folder
  assert asked[0][0] == 'gpt2-medium' and 'model.safetensors' not in asked[0][1] and '*.safetensors' in asked[0][1]


def test_pretrained_sampler_greedy_tokens_are_the_numpy_argmax(checkpoint):
  folder, tensors = checkpoint
  tokenizer = tokenizers.pretrained(folder)
  sampler = gpt.pretrained_sampler(folder)
  prompt = 'to be, or not'
  out = sampler(jax.random.key(0), prompt=prompt, max_new_tokens=4, top_k=1)[0]
  ids = list(tokenizer.encode(prompt))
  for _ in range(4):                     # greedy decoding by the numpy forward pass
    ids.append(int(np.argmax(hf_gpt2_logits(tensors, np.asarray(ids))[-1])))
  assert out == tokenizer.decode(ids)


# ------------------------------------------------------------------------------------------ fine-tuning

def finetune_config(folder, corpus_path, **overrides):
  config = get_config('smoke')
  config.init_from = folder
  config.data.text_file = str(corpus_path)
  for k, v in overrides.items():
    config[k] = v
  return hf_gpt2.with_pretrained_shape(config)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_init_from_sets_the_shape_and_tokenizer_and_seeds_step_0(checkpoint, tmp_path, scan_layers):
  """... with scan_layers too: the checkpoint's blocks stacked, and exported back unstacked to the same tensors."""
  from jaxgen.models.gpt import stack_layers
  from jaxgen.train import sharding, state as train_state
  folder, _ = checkpoint
  (tmp_path / 'corpus.txt').write_text(CORPUS)
  config = finetune_config(folder, tmp_path / 'corpus.txt')
  config.model.scan_layers = scan_layers
  assert (config.model.num_layers, config.model.num_heads, config.model.embed_dim, config.model.use_bias,
          config.data.tokenizer) == (2, 2, 16, True, 'gpt2')
  dataset = text.load(config, str(tmp_path / 'run'))
  family = gpt.build(config, dataset.spec)
  mesh = sharding.make_mesh(config.mesh)
  state, _ = train_state.create_state(family, mesh, config.seed)
  seeded = family.seed_state(state)
  want = hf_gpt2.load_params(folder, config.model.block_size)
  tensors = hf_gpt2.from_jaxgen(want, config.model.block_size)
  want = stack_layers(want) if scan_layers else want
  assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(seeded.params), want))
  exported = hf_gpt2.from_jaxgen(jax.device_get(seeded.params), config.model.block_size)
  assert exported.keys() == tensors.keys() and all(np.array_equal(exported[k], tensors[k]) for k in tensors)
  moments = [x for path, x in jax.tree_util.tree_leaves_with_path(seeded.opt_state)
             if re.search(r'\.(mu|nu)\b', jax.tree_util.keystr(path))]
  assert int(seeded.step) == 0 and moments and not any(np.any(x) for x in moments)


def test_init_from_with_a_longer_block_or_another_tokenizer_is_refused(checkpoint, tmp_path):
  from jaxgen.train import sharding, state as train_state
  folder, _ = checkpoint
  (tmp_path / 'corpus.txt').write_text(CORPUS)
  config = get_config('smoke')
  config.init_from, config.model.block_size = folder, 64
  with pytest.raises(UserError, match=r'model.block_size=64 is longer than the 32 positions'):
    hf_gpt2.with_pretrained_shape(config)
  config = finetune_config(folder, tmp_path / 'corpus.txt')
  config.data.tokenizer = 'char'                                   # vocabulary of the corpus, not GPT-2's
  family = gpt.build(config, text.load(config, str(tmp_path / 'run')).spec)
  state, _ = train_state.create_state(family, sharding.make_mesh(config.mesh), config.seed)
  with pytest.raises(UserError, match=r"\['wte'\]\['embedding'\] is \(\d+, 16\) in the checkpoint but "
                                      r"\(\d+, 16\) in the model of the config; the tokenizer's vocabulary"):
    family.seed_state(state)


@pytest.mark.slow
def test_finetune_with_fsdp_accumulation_resume_and_export_through_the_commands(checkpoint, tmp_path, cli):
  """train.py --config.init_from=DIR on 2 devices with FSDP and grad accumulation 2, resumed on 1 device to more
  steps (restores, not re-seeds), then python -m jaxgen.export: an HF checkpoint whose logits are the
  workdir's and whose tokenizer HF opens."""
  folder, _ = checkpoint
  corpus, workdir, out = tmp_path / 'corpus.txt', tmp_path / 'run', tmp_path / 'export'
  corpus.write_text(CORPUS)
  args = ['--config', 'gpt_shakespeare_char:smoke', '--workdir', str(workdir), f'--config.init_from={folder}',
          f'--config.data.text_file={corpus}', '--config.grad_accum_steps=2']
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2')
  first = subprocess.run([sys.executable, 'train.py', *args, '--config.mesh.fsdp=2'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
  assert first.returncode == 0 and 'initialised from the pretrained' in first.stdout, first.stderr[-3000:]
  resumed = cli('train.py', *args, '--config.num_train_steps=8', mock_data=False).stdout
  assert 'resumed from' in resumed and 'initialised' not in resumed
  cli('-m', 'jaxgen.export', '--workdir', str(workdir), '--out', str(out), mock_data=False)
  import jaxgen
  _, _, state = jaxgen.load_state(str(workdir))
  exported = hf_gpt2.read_tensors(str(out))
  tokens = np.arange(12) % 50
  logits, _ = jaxgen_gpt(hf_gpt2.read_config(str(out))).apply({'params': state.params}, jnp.asarray(tokens)[None])
  np.testing.assert_allclose(np.asarray(logits[0]), hf_gpt2_logits(exported, tokens), rtol=1e-4, atol=1e-4)
  eot = tokenizers.pretrained(folder).vocab_size - 1
  assert hf.Tokenizer.from_file(str(out / 'tokenizer.json')).encode(EOT).ids == [eot]


def test_export_safetensors_of_any_state_by_path(tmp_path):
  from jaxgen.train.state import TrainState
  state = TrainState(step=jnp.int32(3), params={'enc': {'kernel': jnp.ones((2, 3))}}, opt_state=({'mu': 1.0},),
                     ema_params={'enc': {'kernel': jnp.zeros((2, 3))}})
  flat = export.flat_parameters(state)
  assert sorted(flat) == ['ema_params/enc/kernel', 'params/enc/kernel'] and flat['params/enc/kernel'].shape == (2, 3)


# --------------------------------------------------------------------------------------------- tokenizers

def test_a_jaxgen_trained_bpe_opens_with_hf_tokenizer_from_file(tmp_path):
  (tmp_path / 'corpus.txt').write_text(CORPUS)
  config = get_config('smoke')
  config.data.text_file, config.data.tokenizer, config.data.bpe_vocab_size = str(tmp_path / 'corpus.txt'), 'bpe', 300
  workdir = str(tmp_path / 'run')
  text.load(config, workdir)
  opened = hf.Tokenizer.from_file(os.path.join(workdir, 'tokenizer.json'))
  sample = CORPUS[:300]
  assert opened.encode(sample).ids == tokenizers.load(workdir).encode(sample).tolist()
  assert opened.decode(opened.encode(sample).ids) == sample


def test_gpt2_tokenizer_from_vocab_and_merges_or_tokenizer_json_and_endoftext(checkpoint, tmp_path):
  folder, _ = checkpoint
  from_files = tokenizers.pretrained(folder)                        # vocab.json + merges.txt
  from_files.save(str(tmp_path / 'tokenizer.json'))
  from_json = tokenizers.pretrained(str(tmp_path / 'tokenizer.json'))
  sample = 'to be, or not to be' + EOT + 'that is the question ☃'
  ids = from_files.encode(sample)
  eot = json.load(open(os.path.join(folder, 'vocab.json')))[EOT]
  assert list(ids).count(eot) == 1 and len(ids) < len(sample.encode()) / 1.5
  np.testing.assert_array_equal(from_json.encode(sample), ids)
  assert from_files.decode(ids) == from_json.decode(ids) == sample   # <|endoftext|> is written back
  restored = tokenizers.from_json(json.loads(json.dumps(from_files.to_json())))
  np.testing.assert_array_equal(restored.encode(sample), ids)


def test_data_tokenizer_gpt2_comes_from_init_from_or_a_file(checkpoint, tmp_path):
  folder, _ = checkpoint
  (tmp_path / 'corpus.txt').write_text(CORPUS)
  config = get_config('smoke')
  config.data.text_file, config.data.tokenizer = str(tmp_path / 'corpus.txt'), 'gpt2'
  config.init_from = folder
  spec = text.load(config, str(tmp_path / 'a')).spec
  config.init_from, config.data.tokenizer = None, os.path.join(folder, 'vocab.json')
  with pytest.raises(UserError, match='cannot be read'):
    text.load(config, str(tmp_path / 'b'))
  config.data.tokenizer = folder
  assert text.load(config, str(tmp_path / 'c')).spec.tokenizer == spec.tokenizer
  assert spec.vocab_size == tokenizers.pretrained(folder).vocab_size
  resumed = text.load(config, str(tmp_path / 'c'))                # prepared: the saved tokenizer, same kind
  assert resumed.spec == text.load(config, str(tmp_path / 'c')).spec


# ------------------------------------------------------------------------ commands, configs by name, cache

@pytest.mark.parametrize('command,flag', [('train', '--workdir'), ('sample', '--pretrained'), ('bench', '--steps'),
                                          ('eval', '--workdir'), ('export', '--out')])
def test_installed_commands_print_their_help(command, flag):
  script = os.path.join(os.path.dirname(sys.executable), f'jaxgen-{command}')
  assert os.path.exists(script), f'{script} missing: pip install -e . installs the [project.scripts]'
  proc = subprocess.run([script, '--help'], capture_output=True, text=True, timeout=120, cwd='/',
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert flag in proc.stdout and '--[no]compilation_cache' in proc.stdout


def test_configs_by_name_resolve_to_the_shipped_files():
  argv = cli.with_named_configs(['train', '--config', 'gpt_shakespeare_char:smoke', '--config=vae_fashion_mnist',
                                 '--config', 'configs/gan_fashion_mnist.py:cpu', '--config.model.dropout=0.1'])
  assert argv[2] == os.path.join(ROOT, 'configs', 'gpt_shakespeare_char.py') + ':smoke'
  assert argv[3] == '--config=' + os.path.join(ROOT, 'configs', 'vae_fashion_mnist.py')
  assert argv[4:] == ['--config', 'configs/gan_fashion_mnist.py:cpu', '--config.model.dropout=0.1']
  with pytest.raises(UserError, match=r"no config named 'gpt_shakespear'; choose one of .*gpt_shakespeare_char"):
    cli.with_named_configs(['train', '--config', 'gpt_shakespear'])


def test_pyproject_ships_every_package_and_configs():
  tomllib = pytest.importorskip('tomllib')                         # Python >= 3.11
  project = tomllib.load(open(os.path.join(ROOT, 'pyproject.toml'), 'rb'))
  listed = set(project['tool']['setuptools']['packages'])
  found = {os.path.relpath(d, ROOT).replace(os.sep, '.') for d, _, names in os.walk(os.path.join(ROOT, 'jaxgen'))
           if '__init__.py' in names}
  assert found | {'jaxgen.configs'} == listed
  assert project['tool']['setuptools']['package-dir'] == {'jaxgen.configs': 'configs'}
  assert set(project['project']['scripts']) == {f'jaxgen-{c}' for c in ('train', 'sample', 'bench', 'eval', 'export')}


def test_a_second_run_in_a_fresh_workdir_compiles_nothing_new(tmp_path):
  """Both runs compile through the persistent cache (the suite's, conftest.py); the second writes no new entry
  and loads every program it compiles from the cache."""
  from jaxgen import families, stages
  assert jax.config.jax_compilation_cache_dir
  events = {}
  jax.monitoring.register_event_listener(lambda event, **_: events.__setitem__(event, events.get(event, 0) + 1))
  (tmp_path / 'corpus.txt').write_text(CORPUS)
  config = get_config('smoke')
  config.data.text_file = str(tmp_path / 'corpus.txt')
  counts = []
  for run in ('first', 'second'):
    events.clear()
    families._BUILT.clear()       # what a new process would hold in memory: no Family, no in-memory executable
    jax.clear_caches()
    stages.train_and_evaluate(config, str(tmp_path / run))
    counts.append((events.get('/jax/compilation_cache/compile_requests_use_cache', 0),
                   events.get('/jax/compilation_cache/cache_hits', 0),
                   events.get('/jax/compilation_cache/cache_misses', 0)))
  (requests_1, hits_1, writes_1), (requests_2, hits_2, writes_2) = counts
  assert requests_2 >= 3 and writes_2 == 0 and hits_2 == requests_2, counts
  assert hits_1 + writes_1 >= requests_1 - 2, counts        # the first run went through the cache too


def test_cli_turns_the_cache_on_in_the_user_cache_dir(monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', '/somewhere')
  assert cli.default_cache_dir() == '/somewhere/jaxgen/xla'
  assert cli.enable_compilation_cache() == jax.config.jax_compilation_cache_dir   # the suite's dir is kept


# ------------------------------------------------------------------------------------- tracking, profiling

def _tb_plugins(workdir) -> set[str]:
  """Plugin names of the summaries in a TensorBoard event file (TFRecord framing read by hand)."""
  from tensorboardX.proto import event_pb2
  plugins = set()
  path = next(os.path.join(workdir, f) for f in os.listdir(workdir) if f.startswith('events.out'))
  data = open(path, 'rb').read()
  i = 0
  while i < len(data):
    (length,) = struct.unpack('<Q', data[i:i + 8])
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
    plugins |= {v.metadata.plugin_data.plugin_name for v in event.summary.value}
    i += 12 + length + 4
  return plugins


def test_hparams_wandb_tokens_per_s_and_profile_trace(tmp_path, monkeypatch):
  from jaxgen import stages
  logged = []

  class FakeRun:
    def log(self, metrics, step):
      logged.append((step, metrics))

    def finish(self):
      logged.append('finished')

  fake = type(sys)('wandb')
  fake.init = lambda **kwargs: logged.append(kwargs) or FakeRun()
  monkeypatch.setitem(sys.modules, 'wandb', fake)
  (tmp_path / 'corpus.txt').write_text(CORPUS)
  config = get_config('smoke')
  config.data.text_file, config.wandb.project, config.profile_steps = str(tmp_path / 'corpus.txt'), 'p', (3, 4)
  workdir = str(tmp_path / 'run')
  stages.train_and_evaluate(config, workdir)
  assert logged[0]['project'] == 'p' and logged[0]['config']['model']['block_size'] == 32
  assert [s for s, _ in logged[1:-1]][:3] == [2, 4, 6] and 'loss' in logged[1][1] and logged[-1] == 'finished'
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert rows[1]['tokens_per_sec'] == pytest.approx(rows[1]['examples_per_sec'] * 32) and 'mfu' not in rows[1]
  assert {'hparams', 'text'} <= _tb_plugins(workdir)
  traces = [f for d, _, names in os.walk(os.path.join(workdir, 'plugins', 'profile')) for f in names]
  assert any(f.endswith('.xplane.pb') for f in traces), traces


def test_wandb_without_the_package_is_one_line_before_any_work(monkeypatch, tmp_path):
  from jaxgen.train import writers
  monkeypatch.setitem(sys.modules, 'wandb', None)
  config = get_config('smoke')
  config.wandb.project = 'p'
  with pytest.raises(UserError, match=r'--config.wandb.project needs the wandb package: pip install wandb'):
    writers.check(config)


# ------------------------------------------------------------------------------------------ cloud paths

def test_streamed_tokens_equal_the_memory_map(tmp_path):
  ids = np.random.default_rng(0).integers(0, 50257, 1000).astype(np.uint16)
  np.save(tmp_path / 'a.npy', ids)
  ids.tofile(tmp_path / 'a.bin')
  for path in (tmp_path / 'a.npy', tmp_path / 'a.bin'):
    streamed = text.StreamedTokens(str(path))
    assert len(streamed) == 1000
    np.testing.assert_array_equal(streamed[123:456], ids[123:456])
    np.testing.assert_array_equal(streamed[990:2000], ids[990:])


def test_writer_and_lock_on_a_store_without_append_or_locks(tmp_path, monkeypatch, capsys):
  """The gs:// code paths, run on a local folder: metrics rewritten whole, samples copied up, no lock."""
  from jaxgen import samples
  from jaxgen.train import lock, writers
  monkeypatch.setattr(files, 'is_local', lambda path: False)
  workdir = str(tmp_path)
  writer = writers.RunWriter(workdir)
  writer.scalars(1, {'loss': 2.0})
  writer.scalars(2, {'loss': 1.0})
  assert writer.samples(2, samples.Texts(), ['a', 'b']) == [os.path.join(workdir, 'samples', 'step_000002.txt')]
  writer.close()
  assert [json.loads(line)['loss'] for line in open(tmp_path / 'metrics.jsonl')] == [2.0, 1.0]
  assert 'a' in (tmp_path / 'samples' / 'step_000002.txt').read_text()
  resumed = writers.RunWriter(workdir, resume_step=1)
  resumed.scalars(2, {'loss': 0.5})
  resumed.close()
  assert [json.loads(line)['loss'] for line in open(tmp_path / 'metrics.jsonl')] == [2.0, 0.5]
  with lock.hold(workdir), lock.hold(workdir):
    pass
  assert 'not locked against a second train.py' in capsys.readouterr().err
  assert not (tmp_path / 'train.lock').exists()


def test_images_npz_holds_the_raw_uint8_samples(tmp_path):
  from jaxgen import samples
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
  assert samples.Images().save(str(tmp_path / 'x.npz'), images) == [str(tmp_path / 'x.npz')]
  np.testing.assert_array_equal(np.load(tmp_path / 'x.npz')['images'], images)
  with pytest.raises(UserError, match=r'holds uint8 \(N, H, W, C\) samples; this sampler gave float32'):
    samples.Images().save(str(tmp_path / 'y.npz'), images.astype(np.float32))


def test_docs_name_the_interop_commands():
  doc = open(os.path.join(ROOT, 'docs', 'interop.md')).read()
  for needed in ('--config.init_from=gpt2', 'jaxgen-train', 'python -m jaxgen.export', 'data.name=token_file',
                 'JAX_COMPILATION_CACHE_DIR', 'gs://', '--pretrained'):
    assert needed in doc, needed
  assert not re.search(r'\bTODO\b', doc)
