"""Small CNN classifier whose penultimate features define FD-FMNIST / FD-CIFAR10 (jaxgen.eval).

x (B, H, W, C) in [0, 1] -> per stage: Conv3x3 -> GELU -> 2x2 average pool (halves H and W);
then Dense(hidden) -> GELU = features (B, hidden), and Dense(num_classes) = logits.
"""
from typing import Sequence

import flax.linen as nn


class Classifier(nn.Module):
  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  hidden: int = 128

  @nn.compact
  def __call__(self, x):                                    # (B, H, W, C) in [0, 1]
    x = 2.0 * x - 1.0
    for f in self.features:
      x = nn.avg_pool(nn.gelu(nn.Conv(f, (3, 3))(x)), (2, 2), strides=(2, 2))
    features = nn.gelu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))   # (B, hidden)
    return nn.Dense(self.num_classes)(features), features     # logits (B, K), features (B, hidden)
