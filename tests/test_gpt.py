"""GPT model, family and sampler: causality, KV cache = full forward, sampling filters, optimizer, loss."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.gpt_shakespeare_char import get_config
from jaxgen import data
from jaxgen.errors import UserError
from jaxgen.families import gpt
from jaxgen.models.gpt import (GPT, dense_dot_general, init_kv_cache, sinusoidal_positions, stack_layers,
                               unstack_layers)
from jaxgen.train import optim

V, W = 37, 16   # vocab size, block size of the test models


@pytest.fixture(scope='module')
def tiny():
  """model, params (learned positions); with position_embedding='sinusoidal' the same params lack 'wpe'."""
  model = GPT(vocab_size=V, block_size=W, num_layers=2, num_heads=2, embed_dim=32, use_bias=True)
  init = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, W), jnp.int32))['params'])
  return model, nn.meta.unbox(init(jax.random.key(0)))


def variant(tiny, position_embedding):
  model, params = tiny
  if position_embedding == 'sinusoidal':
    return model.clone(position_embedding='sinusoidal'), {k: v for k, v in params.items() if k != 'wpe'}
  return model, params


def random_tokens(shape, seed=1):
  return jax.random.randint(jax.random.key(seed), shape, 0, V)


@pytest.mark.parametrize('position_embedding', ['learned', 'sinusoidal'])
def test_changing_token_j_never_changes_earlier_logits(tiny, position_embedding):
  model, params = variant(tiny, position_embedding)
  forward = jax.jit(lambda x: model.apply({'params': params}, x)[0])
  tokens = random_tokens((2, W))
  logits = forward(tokens)
  for j in (0, 5, W - 1):
    changed = forward(tokens.at[:, j].set((tokens[:, j] + 1) % V))
    np.testing.assert_allclose(changed[:, :j], logits[:, :j], atol=1e-6)
    assert np.abs(changed[:, j] - logits[:, j]).max() > 1e-4     # the position itself does see it


def test_kv_cache_matches_full_forward(tiny):
  """Prefill 5 tokens, then decode one token at a time: every step's logits equal the full forward pass."""
  model, params = tiny
  tokens = random_tokens((3, W))
  full, _ = jax.jit(model.apply)({'params': params}, tokens)           # (B, W, V), no cache
  apply = jax.jit(lambda x, cache, i: model.apply({'params': params}, x, kv_cache=cache, cache_index=i))
  logits, cache = apply(tokens[:, :5], init_kv_cache(model, 3), 0)
  np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
  for t in range(5, W):
    logits, cache = apply(tokens[:, t:t + 1], cache, t)
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_sinusoidal_positions_formula():
  pe = sinusoidal_positions(50, 8)
  pos, i = 37, 3
  assert pe[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)), abs=1e-6)
  assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)), abs=1e-6)


def test_gpt2_init_scales_residual_projections(tiny):
  model, params = tiny
  residual_std = 0.02 / math.sqrt(2 * model.num_layers)
  for name, std in (('attn', residual_std), ('c_fc', 0.02), ('c_proj', residual_std)):
    kernels = [params[f'h_{i}'][name] for i in range(model.num_layers)]
    kernels = [k['c_proj']['kernel'] if name == 'attn' else k['kernel'] for k in kernels]
    assert np.std(kernels) == pytest.approx(std, rel=0.1)
  assert np.std(params['wte']['embedding']) == pytest.approx(0.02, rel=0.1)
  assert np.all(params['h_0']['c_fc']['bias'] == 0) and np.all(params['ln_f']['scale'] == 1)


def greedy_reference(model, params, prompt, num_new):
  """argmax decoding from full forward passes over the context the cached sampler keeps: it grows to
  block_size tokens, then restarts from the last block_size // 2 + 1 (the newest included)."""
  forward = jax.jit(lambda x: model.apply({'params': params}, x)[0])
  tokens, start = list(prompt), max(len(prompt) - W, 0)
  for _ in range(num_new):
    if len(tokens) - start > W:
      start = len(tokens) - (W // 2 + 1)
    context = tokens[start:]
    logits = forward(jnp.asarray([context + [0] * (W - len(context))]))   # causal: padding is never seen
    tokens.append(int(jnp.argmax(logits[0, len(context) - 1])))
  return tokens


def test_top_k_1_is_greedy_decoding_with_any_key_and_temperature(tiny):
  model, params = tiny
  generate = gpt.make_generate(model)
  prompt = [3, 1, 4]
  expected = greedy_reference(model, params, prompt, 2 * W + 3)          # crosses the window twice
  for seed, temperature in ((0, 1.0), (1, 0.3)):
    out = generate(params, jnp.asarray([prompt]), 2 * W + 3, temperature, 1, None, jax.random.key(seed))
    assert np.asarray(out)[0].tolist() == expected


def test_cached_generate_equals_recompute_within_the_block(tiny):
  """Same keys, same sampled tokens while prompt + new tokens fit in block_size; batched prompts, repeats."""
  model, params = tiny
  prompts = random_tokens((2, 4))
  args = (params, prompts, W - 4, 1.0, None, None, jax.random.key(7))
  cached = gpt.make_generate(model)(*args, num_return_sequences=3)
  recomputed = gpt.make_generate(model, use_kv_cache=False)(*args, num_return_sequences=3)
  assert cached.shape == (6, W)
  np.testing.assert_array_equal(cached[:, :4], jnp.repeat(prompts, 3, axis=0))
  np.testing.assert_array_equal(cached, recomputed)
  assert len({tuple(row) for row in np.asarray(cached)}) > 1            # the repeats are sampled apart


@pytest.mark.parametrize('top_p', [0.05, 0.3, 0.7, 0.95, 1.0])
def test_top_p_keeps_smallest_set_reaching_p(top_p):
  logits = jax.random.normal(jax.random.key(0), (4, 50)) * 2
  kept = np.isfinite(gpt.filter_logits(logits, 1.0, None, top_p))
  probs = np.asarray(jax.nn.softmax(logits))
  for row_probs, row_kept in zip(probs, kept):
    order = np.argsort(-row_probs)
    size = int(np.searchsorted(np.cumsum(row_probs[order]), top_p - 1e-6)) + 1   # smallest prefix >= p
    assert set(np.flatnonzero(row_kept)) == set(order[:min(size, len(order))].tolist())


def test_top_k_keeps_k_largest_and_temperature_scales():
  logits = jnp.asarray([[0.0, 3.0, 1.0, 2.0]])
  filtered = gpt.filter_logits(logits, 2.0, 2, None)
  np.testing.assert_allclose(filtered, [[-np.inf, 1.5, -np.inf, 1.0]])


# Family-level tests on a tiny synthetic corpus prepared through the text_file source.

CORPUS = 'the quick brown fox jumps over the lazy dog.\n' * 40


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  """(config, workdir, family, state) of the smoke config on a synthetic text file."""
  workdir = tmp_path_factory.mktemp('gpt')
  path = workdir / 'corpus.txt'
  path.write_text(CORPUS)
  config = get_config('smoke')
  config.data.text_file = str(path)
  spec = data.load(config, str(workdir)).spec
  family = gpt.build(config, spec)
  return config, spec, family, nn.meta.unbox(jax.jit(family.init)(jax.random.key(0)))


def test_initial_loss_is_log_vocab_size(smoke):
  config, spec, family, state = smoke
  tokens = jax.random.randint(jax.random.key(0), (8, config.model.block_size + 1), 0, spec.vocab_size)
  loss = jax.jit(family.eval_step)(state, {'tokens': tokens}, None)['loss']
  assert spec.vocab_size == len(set(CORPUS[:int(len(CORPUS) * 0.9)]))
  assert float(loss) == pytest.approx(math.log(spec.vocab_size), abs=0.05)


def test_same_key_same_text_and_prompt_is_kept(smoke):
  *_, family, state = smoke
  sampler = family.make_sampler(state)
  sample = lambda seed, prompt: sampler(jax.random.key(seed), num=3, prompt=prompt, max_new_tokens=20,
                                       temperature=0.9, top_p=0.9)
  texts = sample(0, 't')
  assert texts == sample(0, 't') and texts != sample(1, 't')
  assert len(texts) == 3 and all(t.startswith('t') and len(t) == 21 for t in texts)
  assert all(len(t) == 20 for t in sample(0, ''))                      # '' starts after '\n', not shown


@pytest.mark.parametrize('options', [dict(prompt='Zebra!'), dict(num=-1), dict(max_new_tokens=-5),
                                     dict(temperature=0.0), dict(top_p=1.5), dict(top_k=0), dict(steps=10)])
def test_sampler_rejects_bad_options(smoke, options):
  *_, family, state = smoke
  with pytest.raises(UserError):
    family.make_sampler(state)(jax.random.key(0), **options)


def test_weight_decay_skips_norms_biases_and_embeddings(tiny):
  """One AdamW step with zero gradients moves only Dense kernels: p <- p - lr * wd * p."""
  config = get_config('smoke')
  _, params = tiny
  mask = gpt.weight_decay_mask(params)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat and all(v == k.endswith("['kernel']") for k, v in flat.items())
  config.optim.update(schedule='constant', warmup_steps=0, grad_clip=0.0, weight_decay=0.5)
  optimizer = optim.make_optimizer(0.1, config.optim, 10, weight_decay_mask=gpt.weight_decay_mask)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(optimizer.update)(zeros, optimizer.init(params), params)
  for (path, p), u in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(updates)):
    expected = -0.1 * 0.5 * p if jax.tree_util.keystr(path).endswith("['kernel']") else 0 * p
    np.testing.assert_allclose(u, expected, atol=1e-7)


def test_gradient_accumulation_equals_full_batch_step(smoke):
  config, spec, *_ = smoke
  config = config.copy_and_resolve_references()
  config.model.update(num_layers=1, embed_dim=16, block_size=8, dropout=0.0)
  tokens = jax.random.randint(jax.random.key(3), (8, 9), 0, spec.vocab_size)
  state = nn.meta.unbox(jax.jit(gpt.build(config, spec).init)(jax.random.key(0)))
  results = []
  for accum in (1, 4):
    config.grad_accum_steps = accum
    results.append(jax.jit(gpt.build(config, spec).train_step)(state, {'tokens': tokens}, jax.random.key(0)))
  (one, m1), (four, m4) = results
  assert float(m1['loss']) == pytest.approx(float(m4['loss']), abs=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), one.params, four.params)


def test_remat_recomputes_the_same_loss_and_gradients(tiny):
  """nn.remat changes when activations are computed, not what: same parameters, loss and gradients."""
  model, params = tiny
  tokens = random_tokens((2, W + 1))

  def loss_and_grads(m):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        m.apply({'params': p}, tokens[:, :-1])[0], tokens[:, 1:]).mean()
    return jax.jit(jax.value_and_grad(loss))(params)

  shapes = lambda m: jax.eval_shape(lambda: nn.meta.unbox(m.init(jax.random.key(0), tokens[:, :-1])['params']))
  assert shapes(model.clone(remat=True)) == shapes(model)
  (loss, grads), (loss_r, grads_r) = loss_and_grads(model), loss_and_grads(model.clone(remat=True))
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_r, grads)


@pytest.mark.parametrize('x_shape, w_shape, contract', [((2, 5, 8), (8, 3, 2, 4), 1),    # c_attn: C -> (3, H, D)
                                                       ((2, 5, 2, 4), (2, 4, 8), 2),    # c_proj: (H, D) -> C
                                                       ((10, 8), (8, 6), 1)])           # Dense
def test_dense_dot_general_and_its_weight_gradient_are_lax_dot_generals(x_shape, w_shape, contract):
  """The Transformer's Dense kernels go through dense_dot_general (a 2-D matmul whose VJP forms dW = (dy^T x)^T):
  its values and both gradients equal lax.dot_general's."""
  rng = np.random.default_rng(0)
  x, w = np.float32(rng.standard_normal(x_shape)), np.float32(rng.standard_normal(w_shape))
  dims = ((tuple(range(len(x_shape) - contract, len(x_shape))), tuple(range(contract))), ((), ()))
  loss = lambda dot: lambda x, w: jnp.sum(jnp.sin(dot(x, w, dims)))
  ours, ref = jax.jit(jax.value_and_grad(loss(dense_dot_general), (0, 1))), jax.jit(
      jax.value_and_grad(loss(jax.lax.dot_general), (0, 1)))
  (v, (dx, dw)), (v_ref, (dx_ref, dw_ref)) = ours(x, w), ref(x, w)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)


def test_scanned_layers_are_the_unrolled_layers_stacked(tiny):
  """scan_layers (with and without remat): the parameters are the unrolled ones stacked on a 'layers' axis; with
  them the logits, the gradients (stacked) and KV-cached decoding equal the unrolled model's."""
  model, params = tiny
  stacked = stack_layers(params)
  assert jax.tree.map(np.shape, unstack_layers(stacked)) == jax.tree.map(np.shape, params)
  jax.tree.map(np.testing.assert_array_equal, unstack_layers(stacked), params)
  tokens = random_tokens((2, W + 1))
  loss = lambda m: lambda p: optax.softmax_cross_entropy_with_integer_labels(
      m.apply({'params': p}, tokens[:, :-1])[0], tokens[:, 1:]).mean()
  loss_u, grads_u = jax.jit(jax.value_and_grad(loss(model)))(params)
  prompt, key = np.asarray(tokens[:1, :3]), jax.random.key(5)
  decoded = gpt.make_generate(model)(params, prompt, W + 4, 1.0, None, None, key, num_return_sequences=2)
  for scanned in (model.clone(scan_layers=True), model.clone(scan_layers=True, remat=True)):
    boxed = jax.eval_shape(scanned.init, jax.random.key(0), tokens[:, :-1])['params']
    assert jax.tree.map(np.shape, nn.meta.unbox(boxed)) == jax.tree.map(np.shape, stacked)
    assert boxed['h']['c_fc']['kernel'].names == ('layers', 'embed', 'mlp')
    loss_s, grads_s = jax.jit(jax.value_and_grad(loss(scanned)))(stacked)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_s, stack_layers(grads_u))
  cached = gpt.make_generate(model.clone(scan_layers=True))(stacked, prompt, W + 4, 1.0, None, None, key,
                                                            num_return_sequences=2)
  np.testing.assert_array_equal(cached, decoded)          # past the block: the cache restarts, scanned too


class FakeDevice:
  def __init__(self, platform, device_kind, compute_capability=None):
    self.platform, self.device_kind, self.compute_capability = platform, device_kind, compute_capability


@pytest.mark.parametrize('device, dtype, expected', [
    (FakeDevice('gpu', 'NVIDIA H100 80GB HBM3', '9.0'), jnp.bfloat16, 'cudnn'),
    (FakeDevice('gpu', 'NVIDIA A100-SXM4-40GB', '8.0'), jnp.float16, 'cudnn'),
    (FakeDevice('gpu', 'NVIDIA H100 80GB HBM3', '9.0'), jnp.float32, 'xla'),     # cuDNN's kernel: half types
    (FakeDevice('gpu', 'Tesla V100-SXM2-16GB', '7.0'), jnp.bfloat16, 'xla'),     # before Ampere
    (FakeDevice('gpu', 'AMD Instinct MI300X'), jnp.bfloat16, 'xla'),
    (FakeDevice('tpu', 'TPU v5 lite'), jnp.bfloat16, 'xla'),
    (None, jnp.bfloat16, 'xla'),                                                 # this CPU
])
def test_attention_goes_to_cudnn_only_for_half_types_on_recent_nvidia_gpus(device, dtype, expected):
  from jaxgen.models.gpt import attention_implementation
  assert attention_implementation(dtype, device) == expected


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_softmax_attention_is_dot_product_attention_for_causal_padding_and_cache_masks(dtype):
  """The CPU attention equals jax.nn.dot_product_attention's XLA path: values and the three gradients, causal,
  with a padding mask (B, 1, 1, S), and with the KV cache's (1, 1, T, S) mask of positions <= index + t."""
  from jaxgen.models.gpt import softmax_attention
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 5, 3, 4)), dtype) for _ in range(3))
  padding = jnp.asarray([[True] * 5, [True, True, True, False, False]])[:, None, None, :]
  cache = (jnp.arange(5)[None, :] <= 1 + jnp.arange(5)[:, None])[None, None]
  tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  for mask, is_causal in ((None, True), (padding, False), (padding, True), (cache, False)):
    ours = lambda q, k, v: softmax_attention(q, k, v, mask, is_causal)
    reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
    np.testing.assert_allclose(np.asarray(ours(q, k, v), np.float32), np.asarray(reference(q, k, v), np.float32),
                               **tolerance)
    grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a).astype(jnp.float32) ** 2), argnums=(0, 1, 2))(q, k, v)
             for f in (ours, reference)]
    for a, b in zip(*grads):
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tolerance)
