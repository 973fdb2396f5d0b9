"""BERT family (Devlin et al. 2019): masked-language modelling with GPT's blocks as a bidirectional encoder.

Batches are {'tokens': int32 (B, block_size - 2)}: windows of text tokens (data.window_length); the step makes
the sequences x = [CLS] w [SEP] (B, block_size) and corrupts them (mlm_mask, Devlin et al. Sec. 3.1, A.1):
  select   of each sequence's n text tokens (never [CLS] [SEP] [PAD]), floor(0.15 n + u) positions S, u ~ U(0, 1),
           uniformly without replacement: Devlin et al.'s create_pretraining_data.py takes max(1, round(0.15 n));
           the stochastic rounding (fairseq's) makes the expected share exactly 15%
  corrupt  of the selected, 80% -> [MASK], 10% -> a uniform random non-special token, 10% kept (mlm.* rates)
  L_MLM = -1/|S| sum_{(b,t) in S} log p(x_{b,t} | x~_b)          (cross-entropy on the selected positions only)
Before masking, a share mlm.short_seq_prob (0.1, as create_pretraining_data.py) of the sequences keeps only a
uniform 1..block_size - 2 of its text tokens, then [SEP] and [PAD]s (masked out of attention), so that the
model also knows texts shorter than a window, as fill() and the encoder get them (NSP pairs fill the block).
Masks are drawn inside the step from its (seed, step) key (dynamic masking, as RoBERTa), so a resumed run
draws the same ones. With model.nsp (off by default: RoBERTa found it does not help) the sequences are
[CLS] A [SEP] B [SEP], A the first half of a window and B its continuation or, with probability 1/2, another
row's (a random place in the corpus); segments 0 for [CLS] A [SEP], 1 for B [SEP]; L = L_MLM + L_NSP.

Fill-mask sampler: fill(rng, text, num) replaces every '[MASK]' in text, all at once from one forward pass, or
iteratively (most confident position first, one per model call). Encoder: make_encoder -> TextEncoder
(jaxgen.load_encoder). Eval: masked-token accuracy and MLM loss on the validation windows, and
pseudo-perplexity (Salazar et al. 2020): PPPL = exp(-1/N sum_t log p(x_t | x_\\t)), each position masked in turn.
"""
import functools
import json
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxgen import evaluators, samples, timing
from jaxgen.data import text as text_source, tokenizers
from jaxgen.errors import UserError
from jaxgen.families import gpt
from jaxgen.families.base import Family, Feature
from jaxgen.models.gpt import BERT
from jaxgen.train import optim
from jaxgen.train.state import TrainState

SPECIALS = ('[PAD]', '[CLS]', '[SEP]', '[MASK]')
MASK = '[MASK]'   # what fill() replaces in a text


def mlm_mask(rng, tokens, maskable, mask_id: int, num_special: int, vocab_size: int,
             select_rate: float = 0.15, mask_rate: float = 0.8, random_rate: float = 0.1):
  """(inputs, selected), both (B, T): floor(select_rate n + u) of each row's n maskable positions selected
  uniformly without replacement; of those, mask_rate replaced by mask_id, random_rate by a uniform token of
  [num_special, vocab_size), the rest kept. tokens, maskable (B, T)."""
  k_round, k_order, k_kind, k_random = jax.random.split(rng, 4)
  n = jnp.sum(maskable, axis=-1)                                                     # (B,)
  count = jnp.floor(select_rate * n + jax.random.uniform(k_round, n.shape)).astype(jnp.int32)
  scores = jnp.where(maskable, jax.random.uniform(k_order, tokens.shape), 2.0)       # unmaskable last
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)                          # (B, T)
  selected = (rank < count[:, None]) & maskable
  u = jax.random.uniform(k_kind, tokens.shape)
  random_tokens = jax.random.randint(k_random, tokens.shape, num_special, vocab_size, tokens.dtype)
  inputs = jnp.where(selected & (u < mask_rate), mask_id, tokens)
  inputs = jnp.where(selected & (u >= mask_rate) & (u < mask_rate + random_rate), random_tokens, inputs)
  return inputs, selected


def mlm_loss(logits, targets, selected):
  """(L_MLM, accuracy): mean cross-entropy and argmax accuracy over the selected positions only.
  logits (B, T, V), targets and selected (B, T)."""
  weights = selected.astype(jnp.float32)
  n = jnp.maximum(weights.sum(), 1.0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = jnp.argmax(logits, axis=-1) == targets
  return jnp.sum(ce * weights) / n, jnp.sum(correct * weights) / n


def with_specials(windows, cls_id: int, sep_id: int):
  """[CLS] w [SEP]: windows (B, L) -> (B, L + 2)."""
  cls, sep = (jnp.full((windows.shape[0], 1), i, windows.dtype) for i in (cls_id, sep_id))
  return jnp.concatenate([cls, windows, sep], axis=1)


def shorten(rng, tokens, short_seq_prob: float, sep_id: int, pad_id: int):
  """([CLS] w_1..w_n [SEP] [PAD].., padding mask), both (B, T), from [CLS] w [SEP] (B, T): with probability
  short_seq_prob a row keeps n ~ U{1, .., T - 2} text tokens, else all T - 2."""
  k_short, k_length = jax.random.split(rng)
  B, T = tokens.shape
  n = jnp.where(jax.random.bernoulli(k_short, short_seq_prob, (B,)),
                jax.random.randint(k_length, (B,), 1, T - 1), T - 2)[:, None]       # (B, 1)
  position = jnp.arange(T)[None]
  tokens = jnp.where(position == n + 1, sep_id, jnp.where(position <= n, tokens, pad_id))
  return tokens, position <= n + 1


def sentence_pairs(rng, windows, cls_id: int, sep_id: int):
  """NSP examples from windows (B, L): ([CLS] A [SEP] B [SEP] (B, L + 2), segments (B, L + 2), is_next (B,)), A
  the first (L - 1) // 2 tokens of a window and B the next ones, or with probability 1/2 those of the row
  before (a batch of one pairs a window with itself)."""
  L = windows.shape[1]
  a = (L - 1) // 2
  first, second = windows[:, :a], windows[:, a:L - 1]
  is_next = jax.random.bernoulli(rng, 0.5, (windows.shape[0],))
  second = jnp.where(is_next[:, None], second, jnp.roll(second, 1, axis=0))
  cls, sep = (jnp.full((windows.shape[0], 1), i, windows.dtype) for i in (cls_id, sep_id))
  tokens = jnp.concatenate([cls, first, sep, second, sep], axis=1)
  segments = (jnp.arange(L + 2) > a + 1).astype(jnp.int32)[None].repeat(windows.shape[0], 0)
  return tokens, segments, is_next


def non_embedding_params(params) -> int:
  """Parameters outside the token, position and segment embeddings (Kaplan et al.'s N)."""
  embeddings = ('wte', 'wpe', 'wtt')
  return sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
             if not any(getattr(k, 'key', None) in embeddings for k in path))


class TextEncoder(NamedTuple):
  """A trained encoder (make_encoder, jaxgen.load_encoder). encode(texts) -> (features (B, T, C) float32, mask
  (B, T) bool) with T = block_size: [CLS] text [SEP] [PAD].. (texts cut to block_size - 2 tokens), the final
  hidden features of the frozen parameters, jitted. For training through it: tokenize(texts) -> (tokens, mask)
  (numpy) and apply(params, tokens, mask) -> features, a pure function of params (start from .params)."""
  params: Any
  tokenizer: Any
  tokenize: Callable
  apply: Callable
  frozen: Callable

  def __call__(self, texts: list[str]):
    tokens, mask = self.tokenize(texts)
    return self.frozen(self.params, tokens, mask), jnp.asarray(mask)


def pad_rows(rows: list[np.ndarray], block_size: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Token rows of up to block_size tokens -> (tokens (N, block_size) padded with pad_id, real (N, block_size))."""
  tokens = np.full((len(rows), block_size), pad_id, np.int32)
  for out, row in zip(tokens, rows):
    out[:len(row)] = row
  return tokens, np.arange(block_size)[None] < np.array([len(r) for r in rows])[:, None]


def make_tokenize(tokenizer, block_size: int) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
  """tokenize(texts) -> (tokens, mask) (N, block_size) numpy: [CLS] text [SEP] [PAD].., each text cut to
  block_size - 2 tokens; the empty text is [CLS] [SEP]."""
  pad, cls, sep = (tokenizer.token_id(t) for t in SPECIALS[:3])

  def tokenize(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(texts, str):
      raise UserError('encode takes a list of texts')
    rows = [np.concatenate([[cls], tokenizer.encode(t)[:block_size - 2], [sep]]).astype(np.int32) for t in texts]
    return pad_rows(rows, block_size, pad)
  return tokenize


def make_model(config, vocab_size: int) -> BERT:
  m = config.model
  encoder = gpt.make_model(m, vocab_size).clone(causal=False, num_segments=2 if m.nsp else 0)
  return BERT(encoder, nsp=m.nsp)


def build(config, spec) -> Family:
  m, rates, W = config.model, config.mlm, config.model.block_size
  if spec.modality != 'text':
    raise UserError(f'the bert family reads text windows; set --config.data.modality=text (not {spec.modality})')
  if text_source.window_length(config) != W - 2:
    raise UserError(f'data.window_length={text_source.window_length(config)} must be model.block_size - 2 = '
                    f'{W - 2} ([CLS] text [SEP])')
  if not (0 < rates.select_rate <= 1 and rates.mask_rate >= 0 and rates.random_rate >= 0
          and rates.mask_rate + rates.random_rate <= 1 and 0 <= rates.short_seq_prob <= 1):
    raise UserError(f'mlm.select_rate={rates.select_rate} must be in (0, 1], mlm.short_seq_prob='
                    f'{rates.short_seq_prob} in [0, 1] and mlm.mask_rate={rates.mask_rate}, '
                    f'mlm.random_rate={rates.random_rate} >= 0 with a sum <= 1')
  tokenizer = tokenizers.from_json(json.loads(spec.tokenizer))
  missing = [t for t in SPECIALS if t not in tokenizer.special_tokens]
  if missing:
    raise UserError(f'the tokenizer lacks the special tokens {missing}; set --config.data.special_tokens="{SPECIALS}"'
                    ' (and a new --workdir)')
  num_special = len(tokenizer.special_tokens)           # ids 0..num_special - 1 (jaxgen.data.tokenizers)
  pad, cls, sep, mask_id = (tokenizer.token_id(t) for t in SPECIALS)
  V = spec.vocab_size
  model = make_model(config, V)
  updater = optim.make_updater(config.learning_rate, config.optim, config.num_train_steps,
                               weight_decay_mask=gpt.weight_decay_mask)

  def forward(params, tokens, padding_mask=None, segments=None, dropout_rng=None):
    return model.apply({'params': params}, tokens, padding_mask, segments, train=dropout_rng is not None,
                       rngs=None if dropout_rng is None else {'dropout': dropout_rng})

  def loss_fn(params, windows, rng, train: bool):
    """(L, metrics) of text windows (B, W - 2) under fresh masks (and NSP pairs) drawn from rng."""
    k_pairs, k_mask, k_dropout = jax.random.split(rng, 3)
    if m.nsp:
      (tokens, segments, is_next), real = sentence_pairs(k_pairs, windows, cls, sep), None
    else:
      tokens, real = shorten(k_pairs, with_specials(windows, cls, sep), rates.short_seq_prob, sep, pad)
      segments = None
    inputs, selected = mlm_mask(k_mask, tokens, tokens >= num_special, mask_id, num_special, V,
                                rates.select_rate, rates.mask_rate, rates.random_rate)
    logits, _, nsp_logits = forward(params, inputs, real, segments, k_dropout if train else None)
    loss, accuracy = mlm_loss(logits, tokens, selected)
    metrics = dict(mlm_loss=loss, accuracy=accuracy)
    if m.nsp:
      nsp_loss = optax.softmax_cross_entropy_with_integer_labels(nsp_logits, is_next.astype(jnp.int32)).mean()
      metrics.update(nsp_loss=nsp_loss, nsp_accuracy=jnp.mean(jnp.argmax(nsp_logits, -1) == is_next))
      loss = loss + nsp_loss
    return loss, metrics

  def init(rng) -> TrainState:
    tokens = jnp.full((1, W), cls, jnp.int32)
    params = model.init(rng, tokens, None, jnp.zeros_like(tokens) if m.nsp else None)['params']
    return TrainState.create(params, updater)

  def train_step(state: TrainState, batch, rng):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch['tokens'], rng, True)
    return state.apply_gradients(grads, updater), dict(loss=loss, grad_norm=optax.tree.norm(grads), **metrics)

  def eval_step(state: TrainState, batch, rng):
    loss, metrics = loss_fn(state.sampling_params(), batch['tokens'], rng, False)
    return dict(loss=loss, **metrics)

  # ------------------------------------------------------------------------------------------ fill-mask

  @functools.partial(jax.jit, static_argnames=('top_k', 'iterative'))
  def fill_tokens(params, tokens, real, to_fill, rng, temperature, top_k, iterative):
    """tokens (N, T) with the positions to_fill (N, T) replaced by tokens drawn from p(x_t | x~) (softmax of
    logits / temperature over the top_k non-special tokens): all from one forward pass, or iteratively, each
    call filling the remaining position whose most likely token is most probable. real (N, T): not padding."""
    N, T = tokens.shape
    u = 1.0 - jax.random.uniform(rng, (T, N) if iterative else (N, T))    # in (0, 1], drawn up front

    def logits_at(tokens):
      logits = forward(params, tokens, real)[0]
      return logits.at[..., :num_special].set(-jnp.inf)           # (N, T, V): never a special token

    def draw(logits, u):                                           # (..., V), (...) -> (...)
      shape = logits.shape[:-1]
      filtered = gpt.filter_logits(logits.reshape(-1, V), temperature, top_k, None)
      return gpt.sample_categorical(u.reshape(-1), filtered).reshape(shape)

    if not iterative:
      return jnp.where(to_fill, draw(logits_at(tokens), u), tokens)

    def step(i, carry):
      tokens, remaining = carry
      logits = logits_at(tokens)
      confidence = jnp.where(remaining, jnp.max(jax.nn.log_softmax(logits), axis=-1), -jnp.inf)  # (N, T)
      position = jnp.argmax(confidence, axis=-1)                   # (N,)
      rows = jnp.arange(N)
      token = draw(logits[rows, position], u[i])
      left = remaining.any(axis=-1)
      tokens = tokens.at[rows, position].set(jnp.where(left, token, tokens[rows, position]))
      return tokens, remaining.at[rows, position].set(False)

    return lax.fori_loop(0, jnp.max(jnp.sum(to_fill, axis=-1)), step, (tokens, to_fill))[0]

  def masked_text(text: str) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] text [SEP] with [MASK] for each '[MASK]' in text: (tokens (n,), is_mask (n,))."""
    pieces = [tokenizer.encode(piece) if piece else np.zeros(0, np.int32) for piece in text.split(MASK)]
    tokens = [np.array([cls])]
    for i, piece in enumerate(pieces):
      tokens += [np.array([mask_id])] * (i > 0) + [piece]
    tokens = np.concatenate(tokens + [np.array([sep])]).astype(np.int32)
    if len(tokens) > W:
      raise UserError(f'the text is {len(tokens) - 2} tokens; at most block_size - 2 = {W - 2} fit')
    return tokens, tokens == mask_id

  def to_text(tokens, real) -> list[str]:
    return [tokenizer.decode(row[1:n - 1]) for row, n in zip(np.asarray(tokens), np.sum(real, axis=-1))]

  def make_sampler(state: TrainState):
    params = state.sampling_params()

    def fill(rng, text: str | None = None, num: int = 1, top_k: int | None = None, iterative: bool = False,
             temperature: float = 1.0, **options) -> list[str]:
      """num copies of `text` with every '[MASK]' replaced by a token sampled from the model (top_k=1: the most
      likely); iterative: one position per model call, the most confident first, seeing those filled before."""
      if options:
        raise UserError(f'unknown sampler option(s) {sorted(options)} for the bert family; it takes text, num, '
                        'top_k, iterative, temperature')
      if not isinstance(text, str):
        raise UserError(f'give the text to fill, with {MASK} where tokens go: sample.py --fill "To be, or not to '
                        f'{MASK}{MASK}" (got text={text!r})')
      is_int = lambda x: isinstance(x, (int, np.integer)) and x >= 1
      if not (is_int(num) and (top_k is None or is_int(top_k))):
        raise UserError(f'num={num!r} and top_k={top_k!r} must be integers >= 1')
      if not temperature > 0:
        raise UserError(f'temperature={temperature} must be > 0 (for the most likely tokens use top_k=1)')
      row, is_mask = masked_text(text)
      tokens, real = pad_rows([row] * int(num), W, pad)
      to_fill = np.zeros_like(real)
      to_fill[:, :len(row)] = is_mask
      top_k = None if top_k is None or top_k >= V - num_special else int(top_k)
      out = fill_tokens(params, tokens, real, to_fill, rng, jnp.float32(temperature), top_k, bool(iterative))
      return to_text(out, real)

    return fill

  def show(row, to_fill) -> str:
    """A text row (no specials) with '[MASK]' where to_fill."""
    pieces, start = [], 0
    for t in np.flatnonzero(to_fill):
      pieces += [tokenizer.decode(row[start:t]), MASK]
      start = t + 1
    return ''.join(pieces + [tokenizer.decode(row[start:])])

  def preview(state: TrainState, batch, rng) -> list[str]:
    """num_preview windows of the batch with their selected positions masked, filled with the most likely tokens."""
    tokens = with_specials(jnp.asarray(batch['tokens'][:config.num_preview]), cls, sep)
    _, selected = mlm_mask(rng, tokens, tokens >= num_special, mask_id, num_special, V, rates.select_rate)
    real = jnp.ones_like(selected)
    filled = fill_tokens(state.sampling_params(), jnp.where(selected, mask_id, tokens), real, selected, rng,
                         jnp.float32(1.0), 1, False)
    out = []
    for original, new, fill_at in zip(*(np.asarray(x)[:, 1:-1] for x in (tokens, filled, selected))):
      hits = int(np.sum((new == original) & fill_at))
      out.append(f'masked:   {show(original, fill_at)}\nfilled:   {tokenizer.decode(new)}\n'
                 f'original: {tokenizer.decode(original)}\n({hits} of {int(fill_at.sum())} masked tokens restored)')
    return out

  # ------------------------------------------------------------------------------------------ encoder

  def features(params, tokens, mask):
    """The final hidden features (B, T, C) float32 of tokens (B, T) with padding mask (B, T): pure in params."""
    return forward(params, tokens, mask)[1].astype(jnp.float32)

  frozen = jax.jit(lambda params, tokens, mask: features(lax.stop_gradient(params), tokens, mask))
  tokenize = make_tokenize(tokenizer, W)

  def make_encoder(state: TrainState) -> TextEncoder:
    return TextEncoder(state.sampling_params(), tokenizer, tokenize, features, frozen)

  # ------------------------------------------------------------------------------------------ evaluators

  @jax.jit
  def pseudo_log_likelihoods(params, tokens):
    """log p(x_t | x_\\t) of each text position t = 1..T-2 of tokens (T,) = [CLS] w [SEP], x_t replaced by
    [MASK] (Salazar et al. 2020), in chunks of 16 masked copies: (T - 2,)."""
    def one(t):
      logits = forward(params, tokens.at[t].set(mask_id)[None])[0]  # (1, T, V)
      return jax.nn.log_softmax(logits[0, t])[tokens[t]]
    return lax.map(one, jnp.arange(1, tokens.shape[0] - 1), batch_size=16)

  def mlm_metrics(ctx: evaluators.Context) -> dict:
    """MLM loss (nats per selected token) and masked-token accuracy over the config's validation windows."""
    r = ctx.test_metrics(ctx.config)
    return dict(mlm_loss=r['mlm_loss'], masked_token_accuracy=r['accuracy'],
                mlm_perplexity=math.exp(r['mlm_loss']), val_windows=ctx.config.data.eval_examples,
                **({'nsp_accuracy': r['nsp_accuracy']} if m.nsp else {}))

  def pseudo_perplexity(ctx: evaluators.Context) -> dict:
    """PPPL = exp(-1/N sum log p(x_t | x_\\t)) over the N text tokens of the first ctx.num (default 8)
    validation windows: block_size - 2 forward passes per window."""
    num = ctx.num or 8
    windows = np.concatenate([np.asarray(b['tokens']) for b in ctx.test_batches()])[:num]
    params = ctx.state.sampling_params()
    lls = np.concatenate([np.asarray(pseudo_log_likelihoods(params, with_specials(w[None], cls, sep)[0]))
                          for w in windows])
    return dict(pseudo_perplexity=float(np.exp(-lls.mean())), pseudo_log_likelihood=float(lls.mean()),
                pppl_windows=len(windows), pppl_tokens=len(lls))

  def bench_sampler(state: TrainState, num: int | None, repeats: int, **options):
    """fill of num (default 8) windows of random text tokens with 15% of them masked: from one forward pass
    ('fill') and one pass per masked token ('fill_iterative')."""
    del options
    num, params = num or 8, state.sampling_params()
    rng = np.random.default_rng(0)
    windows = rng.integers(num_special, V, (num, W - 2), dtype=np.int32)
    tokens = np.asarray(with_specials(jnp.asarray(windows), cls, sep))
    to_fill = np.zeros(tokens.shape, bool)
    to_fill[:, 1:-1] = rng.random((num, W - 2)) < 0.15
    real = np.ones(tokens.shape, bool)
    for iterative in (False, True):
      first, ms = timing.time_calls(lambda: fill_tokens(params, np.where(to_fill, mask_id, tokens), real, to_fill,
                                                        jax.random.key(0), jnp.float32(1.0), None, iterative), repeats)
      yield timing.sampler_record('fill_iterative' if iterative else 'fill', num, first, ms,
                                  samples_per_s=num / (ms['median'] / 1e3), masked_tokens=int(to_fill.sum()))

  return Family(init=init, train_step=train_step, eval_step=eval_step, make_sampler=make_sampler, preview=preview,
                batch_spec={'tokens': Feature((W - 2,), np.int32, num_special, V)},
                sample_kind=samples.Texts(),
                evaluators={'mlm': mlm_metrics, 'pseudo_perplexity': pseudo_perplexity},
                make_encoder=make_encoder, tokens_per_example=W,
                model_flops_per_example=lambda params: 6 * non_embedding_params(params) * W,
                bench_sampler=bench_sampler)
