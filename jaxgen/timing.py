"""Wall-clock timing of jitted calls for the benchmarks (jaxgen.bench and the families' bench_sampler)."""
import time

import jax
import numpy as np


def percentiles_ms(seconds) -> dict:
  p10, p50, p90 = np.percentile(np.asarray(seconds) * 1e3, [10, 50, 90])
  return dict(median=float(p50), p10=float(p10), p90=float(p90))


def time_calls(fn, repeats: int) -> tuple[float, dict]:
  """(seconds of the first call, compile included; percentiles in ms of `repeats` more calls)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, percentiles_ms(times)


def sampler_record(name: str, num: int, first_s: float, ms: dict, steps: int | None = None, **extra) -> dict:
  """A bench 'sampler' record of `num` samples per call."""
  return dict(bench='sampler', sampler=name, steps=steps, num=num, first_call_s=first_s,
              call_ms_median=ms['median'], **extra)
