"""What a family gives the generic tools: `Family`, a bundle of pure functions and declarations.

A family module defines `build(config, spec) -> Family`, where `spec` is the data spec of derived facts
(image shape, classes, vocabulary, ...) that the run's data source returned (jaxgen.data). The trainer,
bench, eval, the sample writers and sample.py use nothing else of a family.
"""
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxgen import samples

State = Any                 # a pytree, usually a flax.struct.dataclass; params may carry nn.LogicallyPartitioned
Batch = dict[str, Any]      # numpy/jax arrays with a leading (global) batch axis
Metrics = dict[str, jax.Array]


class Feature(NamedTuple):
  """One entry of a batch: the shape and dtype of one example; values in [low, high) for integers (token
  ids, labels), [low, high] for floats. Bench draws synthetic batches from it; the trainer checks real ones."""
  shape: tuple[int, ...]
  dtype: Any
  low: float = 0.0
  high: float = 1.0

  def synthetic(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniform random examples, (n, *shape)."""
    if np.issubdtype(self.dtype, np.integer):
      return rng.integers(int(self.low), int(self.high), (n, *self.shape), dtype=self.dtype)
    return rng.uniform(self.low, self.high, (n, *self.shape)).astype(self.dtype)


class Family(NamedTuple):
  """The pure functions and declarations of a family; all close over (config, spec), none has side effects.

  init(rng) -> state                                   jitted by the trainer with the state's shardings
  train_step(state, batch, rng) -> (state, metrics)     jitted; metrics are scalars (means over the batch)
  eval_step(state, batch, rng) -> metrics               jitted; averaged over test batches by the trainer
  make_sampler(state) -> sampler                        sampler(rng, num=..., **family options), jitted inside
  preview(state, local_batch, rng) -> samples           what samples/step_<N>.<ext> shows (of sample_kind);
                                                        local_batch is this process's numpy batch
  batch_spec: {name: Feature}                           the batches train_step and eval_step take
  sample_kind: jaxgen.samples kind                      writes previews and sample.py's output (PNG/txt/WAV)
  evaluators: {name: fn(jaxgen.evaluators.Context) -> dict}   the metrics `python -m jaxgen.eval` reports
  make_encoder(state) -> encode                         encoders only: autoencoders fn(batch) -> latents (what a
                                                        later stage trains on); text encoders fn(texts) ->
                                                        (features, mask) with .tokenizer (jaxgen.load_encoder)
  tokens_per_example, model_flops_per_example(params)   language models: bench's tokens/s and 6 N T
  bench_sampler(state, num, repeats, **options) -> records   sampler benchmarks (default: time sampler(num))
  seed_state(state) -> state                            families that can start from a pretrained checkpoint
                                                        (config.init_from): step 0's state, given the freshly
                                                        initialised one (same structure, shapes, shardings)
  """
  init: Callable[[jax.Array], State]
  train_step: Callable[[State, Batch, jax.Array], tuple[State, Metrics]]
  eval_step: Callable[[State, Batch, jax.Array], Metrics]
  make_sampler: Callable[[State], Callable[..., Any]]
  preview: Callable[[State, Batch, jax.Array], Any]
  batch_spec: dict[str, Feature]
  sample_kind: samples.Kind
  evaluators: dict[str, Callable[[Any], dict]]
  make_encoder: Callable[[State], Callable[[Batch], jax.Array]] | None = None
  tokens_per_example: int | None = None
  model_flops_per_example: Callable[[Any], float] | None = None
  bench_sampler: Callable[..., Any] | None = None
  seed_state: Callable[[State], State] | None = None
