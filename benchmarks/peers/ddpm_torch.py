"""PyTorch eager peer of `jaxgen.bench --config configs/ddpm_fashion_mnist.py:cpu` at matched FLOPs (issue #22).

denoising-diffusion-pytorch's Unet(dim=32, dim_mults=(1, 2, 2), channels=1) in its GaussianDiffusion (T = 1000,
L_simple) on random 28x28x1 images, Adam (lr 2e-4), batch --batch, torch.set_num_threads(THREADS); then DDIM with
50 steps (sampling_timesteps=50, eta 0) at the same batch. One JSON line: parameters, FLOPs of one train step
(torch.utils.flop_counter, forward + backward), train ms per step (median, p10, p90) and img/s, DDIM-50 s per
call and img/s.

  /tmp/torchenv/bin/python benchmarks/peers/ddpm_torch.py --steps 20
"""
import argparse
import json
import time

import numpy as np
import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet
from torch.utils.flop_counter import FlopCounterMode


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--ddim_calls', type=int, default=2)
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  model = Unet(dim=32, dim_mults=(1, 2, 2), channels=1)
  diffusion = GaussianDiffusion(model, image_size=28, timesteps=1000, sampling_timesteps=50)
  opt = torch.optim.Adam(diffusion.parameters(), lr=2e-4)
  images = torch.rand(a.batch, 1, 28, 28)

  def step():
    loss = diffusion(images)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  with FlopCounterMode(display=False) as counter:
    diffusion(images).backward()
  opt.zero_grad(set_to_none=True)
  times = []
  for i in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    step()
    if i >= a.warmup:
      times.append(time.perf_counter() - t0)
  diffusion.eval()
  with torch.no_grad():
    diffusion.sample(batch_size=a.batch)                     # warm-up call
    ddim = []
    for _ in range(a.ddim_calls):
      t0 = time.perf_counter()
      diffusion.sample(batch_size=a.batch)
      ddim.append(time.perf_counter() - t0)
  ms = np.asarray(times) * 1e3
  print(json.dumps(dict(peer='denoising_diffusion_pytorch.Unet(dim=32, dim_mults=(1, 2, 2))', torch=torch.__version__,
                        threads=a.threads, batch_size=a.batch, num_params=sum(q.numel() for q in model.parameters()),
                        flops_per_step=counter.get_total_flops(), step_ms_median=float(np.median(ms)),
                        step_ms_p10=float(np.percentile(ms, 10)), step_ms_p90=float(np.percentile(ms, 90)),
                        examples_per_s=a.batch / np.median(ms) * 1e3, ddim50_s=float(np.median(ddim)),
                        ddim50_img_per_s=a.batch / float(np.median(ddim)))))


if __name__ == '__main__':
  main()
