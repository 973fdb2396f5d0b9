"""Wall-clock timing of jitted calls for the benchmarks (jaxgen.bench and the families' bench_sampler), and the
devices' peak FLOP/s that MFU is measured against (bench and the training log)."""
import time

import jax
import numpy as np

# bf16 dense peak FLOP/s per device, by a substring of device_kind (first match wins)
PEAK_FLOPS = (
    ('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('A100', 312e12),
    ('v5 lite', 197e12), ('v5e', 197e12), ('v5p', 459e12), ('TPU v5', 459e12),
    ('v6 lite', 918e12), ('v6e', 918e12), ('TPU v4', 275e12),
)


def peak_flops_per_device(device) -> float | None:
  if device.platform == 'cpu':
    return None
  return next((peak for name, peak in PEAK_FLOPS if name in device.device_kind), None)


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
