"""GPT family: next-token cross-entropy L = -1/(B T) sum_{b,t} log p(x_{b,t+1} | x_{b,<=t}); KV-cached sampler.

Batches are {'tokens': int32 (B, block_size + 1)}. With config.init_from (a Hugging Face GPT-2 folder or Hub
name, jaxgen.hf_gpt2) step 0 starts from its parameters instead of a random draw; a resumed run restores its
own checkpoint as always. One train_step is one AdamW update on the whole global
batch: with config.grad_accum_steps = A the batch is split into A micro-batches whose gradients are
averaged inside the step by a lax.scan (activations of one micro-batch in memory at a time). A scan rather
than optax.MultiSteps keeps steps, schedules, logging, checkpoints and the data position counting
optimizer updates, and keeps the accumulator out of the optimizer state and the checkpoint.
"""
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxgen import evaluators, hf_gpt2, metrics, samples, timing
from jaxgen.data import text, tokenizers
from jaxgen.errors import UserError
from jaxgen.families.base import Family, Feature
from jaxgen.models.gpt import GPT, init_kv_cache, stack_layers
from jaxgen.train import optim
from jaxgen.train.state import TrainState


def make_model(model_config, vocab_size: int) -> GPT:
  m = model_config
  return GPT(vocab_size=vocab_size, block_size=m.block_size, num_layers=m.num_layers, num_heads=m.num_heads,
             embed_dim=m.embed_dim, dropout_rate=m.dropout, use_bias=m.use_bias,
             position_embedding=m.position_embedding, dtype=jnp.dtype(m.dtype), remat=m.get('remat', False),
             scan_layers=m.get('scan_layers', False))


def weight_decay_mask(params):
  """True for Dense kernels only: no weight decay on norms, biases and (tied) embeddings."""
  def is_kernel(path, _):
    return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1] == 'kernel'
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def filter_logits(logits, temperature, top_k: int | None, top_p):
  """logits / temperature, with -inf outside the top_k largest and outside the nucleus: the smallest set of
  most likely tokens whose probabilities sum to >= top_p. logits (B, V) -> (B, V)."""
  logits = logits / temperature
  if top_k is not None:
    kth = lax.top_k(logits, top_k)[0][:, -1:]                       # (B, 1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    sorted_logits = -jnp.sort(-logits, axis=-1)                      # descending, (B, V)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs                 # of the strictly more likely tokens
    cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def sample_categorical(u, logits):
  """Inverse-CDF draw from softmax(logits) (B, V) with u in (0, 1] (B,): the first i with c_i >= u c_V,
  c = cumsum(exp(logits - max)); P(i) = p_i, and tokens of probability 0 are never drawn."""
  c = jnp.cumsum(jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)), axis=-1)  # (B, V)
  return jnp.sum(c < u[:, None] * c[:, -1:], axis=-1, dtype=jnp.int32)


def make_generate(model: GPT, use_kv_cache: bool = True):
  """Jitted generate(params, prompt_tokens, max_new_tokens, temperature, top_k, top_p, rng,
  num_return_sequences=1) -> int32 (B * num_return_sequences, P + max_new_tokens), prompts first.

  prompt_tokens (B, P), P >= 1. The context is the last block_size tokens. With the KV cache the prompt is
  prefilled once and each new token costs one position; when the cache is full (learned positions cannot
  shift) it is refilled with the last block_size // 2 tokens before the newest, so the context holds
  between half and all of the block. use_kv_cache=False recomputes the last block_size tokens for every
  new token, as nanoGPT does (the baseline for tests and benchmarks; both agree while
  P + max_new_tokens <= block_size). Only the refill sits in a lax.cond and the newest token's step is
  outside it: with the step inside both branches, XLA copied the whole cache every token.
  """
  W = model.block_size
  if W < 2:
    raise ValueError('generate needs block_size >= 2')

  def generate(params, prompt_tokens, max_new_tokens, temperature, top_k, top_p, rng, num_return_sequences=1):
    prompt = jnp.repeat(jnp.asarray(prompt_tokens, jnp.int32), num_return_sequences, axis=0)  # (B, P)
    B, P = prompt.shape
    if P == 0:
      raise ValueError('generate needs at least one prompt token')
    tokens = jnp.zeros((B, max(P + max_new_tokens, W)), jnp.int32).at[:, :P].set(prompt)
    apply = functools.partial(model.apply, {'params': params})

    if use_kv_cache:
      context = prompt[:, -W:]
      logits, kv_cache = apply(context, kv_cache=init_kv_cache(model, B))
      logits, state = logits[:, -1], (kv_cache, jnp.int32(context.shape[1]))

      def advance(state, tokens, n):
        """Logits after the n tokens so far, feeding only the newest (tokens[:, n - 1]) to the cache."""
        kv_cache, length = state                                     # length: positions filled

        def restart(kv_cache):  # refill positions [0, W // 2) with the W // 2 tokens before the newest
          _, kv_cache = apply(lax.dynamic_slice(tokens, (0, n - 1 - W // 2), (B, W // 2)), kv_cache=kv_cache)
          return kv_cache, jnp.int32(W // 2)

        kv_cache, length = lax.cond(length == W, restart, lambda kv_cache: (kv_cache, length), kv_cache)
        newest = lax.dynamic_slice(tokens, (0, n - 1), (B, 1))
        logits, kv_cache = apply(newest, kv_cache=kv_cache, cache_index=length)
        return logits[:, -1], (kv_cache, length + 1)
    else:
      def advance(state, tokens, n):
        """Logits after the n tokens so far, recomputing the window tokens[:, max(n - W, 0) : n]."""
        start = jnp.maximum(n - W, 0)
        logits, _ = apply(lax.dynamic_slice(tokens, (0, start), (B, W)))  # causal: padding after n is unseen
        return logits[:, n - 1 - start], state

      logits, state = advance(None, tokens, P)

    def step(carry, xs):
      tokens, logits, state = carry
      i, u = xs
      token = sample_categorical(u, filter_logits(logits, temperature, top_k, top_p))  # (B,)
      tokens = lax.dynamic_update_slice(tokens, token[:, None], (0, P + i))
      logits, state = advance(state, tokens, P + i + 1)
      return (tokens, logits, state), None

    # all randomness drawn up front: no PRNG calls (loops on CPU) inside the decoding loop
    u = 1.0 - jax.random.uniform(rng, (max_new_tokens, B))                 # in (0, 1]
    (tokens, _, _), _ = lax.scan(step, (tokens, logits, state), (jnp.arange(max_new_tokens), u))
    return tokens[:, :P + max_new_tokens]

  return jax.jit(generate, static_argnames=('max_new_tokens', 'top_k', 'num_return_sequences'))


def non_embedding_params(params) -> int:
  """Parameters outside the token and position embeddings (Kaplan et al. 2020's N)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return sum(x.size for path, x in leaves if getattr(path[0], 'key', None) not in ('wte', 'wpe'))


def language_model_metrics(ctx: evaluators.Context) -> dict:
  """val loss (nats/token) over the config's validation windows, perplexity exp(loss) and bits per character
  loss / (ln 2 * characters per token) of the validation text."""
  loss = ctx.test_metrics(ctx.config)['loss']
  val_ids = text.split_tokens(ctx.config, ctx.workdir, 'val')
  tokenizer = tokenizers.from_json(json.loads(ctx.spec.tokenizer))
  chars_per_token = len(tokenizer.decode(np.asarray(val_ids))) / len(val_ids)
  return dict(val_loss=loss, perplexity=math.exp(loss), bits_per_char=metrics.bits_per_char(loss, chars_per_token),
              chars_per_token=chars_per_token, val_windows=ctx.config.data.eval_examples)


def text_sampler(generate, params, tokenizer, vocab_size: int, default_max_new_tokens: int):
  """sampler(rng, num=1, prompt='', max_new_tokens, temperature=1.0, top_k=None, top_p=None) -> num texts: the
  prompt and max_new_tokens sampled tokens (an empty prompt starts after a newline, which is left out).
  `tokenizer()` gives the tokenizer (built on first use)."""

  def sampler(rng, num: int = 1, prompt: str = '', max_new_tokens: int = default_max_new_tokens,
              temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, **options):
    if options:
      raise UserError(f'unknown sampler option(s) {sorted(options)} for the gpt family; it takes num, prompt, '
                      'max_new_tokens, temperature, top_k, top_p')
    is_int = lambda x, low: isinstance(x, (int, np.integer)) and x >= low
    if not (is_int(num, 1) and is_int(max_new_tokens, 0) and (top_k is None or is_int(top_k, 1))):
      raise UserError(f'num={num!r} and top_k={top_k!r} must be integers >= 1 and '
                      f'max_new_tokens={max_new_tokens!r} an integer >= 0')
    if not temperature > 0:
      raise UserError(f'temperature={temperature} must be > 0 (for greedy decoding use top_k=1)')
    if top_p is not None and not 0 < top_p <= 1:
      raise UserError(f'top_p={top_p} must be in (0, 1]')
    context = tokenizer().encode(prompt or '\n')
    top_k = None if top_k is None or top_k >= vocab_size else int(top_k)   # as nanoGPT: clip
    top_p = None if top_p == 1 else top_p
    tokens = generate(params, context[None], int(max_new_tokens), temperature, top_k, top_p, rng,
                      num_return_sequences=int(num))
    tokens = np.asarray(tokens) if prompt else np.asarray(tokens)[:, len(context):]
    return [tokenizer().decode(t) for t in tokens]

  return sampler


def pretrained_sampler(name_or_dir: str, dtype: str = 'float32', max_new_tokens: int = 200):
  """The sampler (text_sampler) of a Hugging Face GPT-2 checkpoint, without a workdir: its parameters, shape and
  tokenizer files (jaxgen.hf_gpt2)."""
  folder = hf_gpt2.checkpoint_dir(name_or_dir)
  hf = hf_gpt2.read_config(folder)
  shape = hf_gpt2.model_shape(hf)
  model = GPT(vocab_size=hf['vocab_size'], dtype=jnp.dtype(dtype), **shape)
  params = jax.device_put(hf_gpt2.to_jaxgen(hf_gpt2.read_tensors(folder), hf))
  tokenizer = tokenizers.pretrained(folder)
  return text_sampler(make_generate(model), params, lambda: tokenizer, hf['vocab_size'], max_new_tokens)


def build(config, spec) -> Family:
  model = make_model(config.model, spec.vocab_size)
  updater = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps,
                               weight_decay_mask=weight_decay_mask)
  accum = config.grad_accum_steps
  if accum < 1 or config.batch_size % accum:
    raise UserError(f'grad_accum_steps={accum} must be >= 1 and divide batch_size={config.batch_size}')
  generate = make_generate(model)
  tokenizer = functools.cache(lambda: tokenizers.from_json(json.loads(spec.tokenizer)))

  def loss_fn(params, tokens, rng=None):
    """Mean next-token cross-entropy of tokens (B, T + 1); dropout on when an rng is given."""
    logits, _ = model.apply({'params': params}, tokens[:, :-1], train=rng is not None,
                            rngs=None if rng is None else {'dropout': rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  def init(rng) -> TrainState:
    return TrainState.create(model.init(rng, jnp.zeros((1, config.model.block_size), jnp.int32))['params'], updater)

  def train_step(state: TrainState, batch, rng):
    B, L = batch['tokens'].shape
    # micro-batch a = rows a, a + A, ...: each device keeps its own rows of every micro-batch
    micro_batches = batch['tokens'].reshape(B // accum, accum, L).swapaxes(0, 1)  # (A, B / A, T + 1)

    def accumulate(grad_sum, xs):
      a, tokens = xs
      loss, grads = jax.value_and_grad(loss_fn)(state.params, tokens, jax.random.fold_in(rng, a))
      return jax.tree.map(jnp.add, grad_sum, grads), loss

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grad_sum, losses = lax.scan(accumulate, zeros, (jnp.arange(accum), micro_batches))
    grads = jax.tree.map(lambda g: g / accum, grad_sum)
    return state.apply_gradients(grads, updater), {'loss': losses.mean(), 'grad_norm': optax.tree.norm(grads)}

  def eval_step(state: TrainState, batch, rng):
    del rng
    return {'loss': loss_fn(state.sampling_params(), batch['tokens'])}

  def seed_state(state: TrainState) -> TrainState:
    """Step 0 from the Hugging Face GPT-2 config.init_from: its parameters (positions cut to block_size), a fresh
    optimizer state and EMA, laid out with the shardings of `state`; each device gets only its shards."""
    pretrained = hf_gpt2.load_params(config.init_from, config.model.block_size)
    if model.scan_layers:
      pretrained = stack_layers(pretrained)
    hf_gpt2.check_like(pretrained, state.params, config.init_from)
    params = jax.tree.map(lambda x, p: jax.make_array_from_callback(p.shape, p.sharding, lambda index: x[index]),
                          pretrained, state.params)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(lambda p: TrainState.create(p, updater), out_shardings=shardings)(params)

  def make_sampler(state: TrainState):
    return text_sampler(generate, state.sampling_params(), tokenizer, spec.vocab_size,
                        config.sampling.max_new_tokens)

  sampling_options = dict(max_new_tokens=config.sampling.max_new_tokens, temperature=config.sampling.temperature,
                          top_k=config.sampling.top_k, top_p=config.sampling.top_p)

  def preview(state: TrainState, batch, rng) -> list[str]:
    del batch
    return make_sampler(state)(rng, num=config.num_preview, prompt=config.sampling.prompt, **sampling_options)

  def bench_sampler(state: TrainState, num: int | None, repeats: int, prompt_tokens: int | None = None,
                    new_tokens: int | None = None, **options):
    """Prefill: the first forward of generate (prompt into a fresh KV cache, or the padded block_size window
    without one); decode: (generate with new_tokens - prefill) / new_tokens; with and without the KV cache."""
    del options
    num, W = num or 8, config.model.block_size
    P = prompt_tokens or W // 2
    M = W - P if new_tokens is None else new_tokens
    if not 1 <= P <= W or M < 1:
      raise UserError(f'need 1 <= prompt_tokens <= block_size={W} and new_tokens >= 1 (got {P}, {M})')
    prompt = jax.random.randint(jax.random.key(1), (num, P), 0, spec.vocab_size)
    prefills = {
        'kv_cache': jax.jit(lambda p, x: model.apply({'params': p}, x, kv_cache=init_kv_cache(model, num))),
        'no_kv_cache': jax.jit(lambda p, x: model.apply({'params': p}, jnp.pad(x, ((0, 0), (0, W - P))))),
    }
    for name, prefill_fn in prefills.items():
      gen = make_generate(model, use_kv_cache=name == 'kv_cache')
      first_prefill, prefill = timing.time_calls(lambda: prefill_fn(state.params, prompt), repeats)
      first_total, total = timing.time_calls(
          lambda: gen(state.params, prompt, M, 1.0, None, None, jax.random.key(0)), repeats)
      decode_s = max(total['median'] - prefill['median'], 1e-3) / 1e3
      yield timing.sampler_record(name, num, first_prefill + first_total, total, prompt_tokens=P, new_tokens=M,
                                  prefill_tokens_per_s=num * P / (prefill['median'] / 1e3),
                                  decode_tokens_per_s=num * M / decode_s)

  block = config.model.block_size
  return Family(init=init, train_step=train_step, eval_step=eval_step, make_sampler=make_sampler, preview=preview,
                batch_spec={'tokens': Feature((block + 1,), np.int32, 0, spec.vocab_size)},
                sample_kind=samples.Texts(),
                evaluators={'language_model': language_model_metrics,
                            'diversity': functools.partial(evaluators.text_diversity, **sampling_options)},
                tokens_per_example=block, model_flops_per_example=lambda params: 6 * non_embedding_params(params) * block,
                bench_sampler=bench_sampler, seed_state=seed_state)
