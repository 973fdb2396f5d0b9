"""PyTorch eager peer of `jaxgen.bench --config configs/gpt_shakespeare_char.py:cpu` (issue #22).

Hugging Face transformers' GPT2LMHeadModel at the jaxgen cpu preset's shape (4 layers, 4 heads, 128 wide,
64 tokens, 65-token vocabulary, no dropout), AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1), gradient
clipping at 1.0, batch 12 of random tokens, torch.set_num_threads(THREADS). One JSON line: median, p10, p90
ms per iteration (forward, backward, clip, step, zero_grad) over --steps after --warmup.

  python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch transformers denoising-diffusion-pytorch
  /tmp/torchenv/bin/python benchmarks/peers/gpt2_torch.py --steps 50
"""
import argparse
import json
import time

import numpy as np
import torch
import transformers


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--steps', type=int, default=50)
  p.add_argument('--warmup', type=int, default=5)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--batch', type=int, default=12)
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(vocab_size=65, n_positions=64, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0)
  model = transformers.GPT2LMHeadModel(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
  tokens = torch.randint(0, 65, (a.batch, 65))
  times = []
  for i in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    out = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 65), tokens[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= a.warmup:
      times.append((time.perf_counter() - t0) * 1e3)
  n = sum(p.numel() for p in model.parameters())
  print(json.dumps(dict(peer='transformers.GPT2LMHeadModel', torch=torch.__version__,
                        transformers=transformers.__version__, threads=a.threads, batch_size=a.batch, tokens=64,
                        num_params=n, step_ms_median=float(np.median(times)),
                        step_ms_p10=float(np.percentile(times, 10)), step_ms_p90=float(np.percentile(times, 90)),
                        tokens_per_s=a.batch * 64 / np.median(times) * 1e3)))


if __name__ == '__main__':
  main()
