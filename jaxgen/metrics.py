"""Sample-quality metrics as small pure numpy functions (float64), each with its equation.

Image metrics act on features of jaxgen's own classifier (jaxgen.models.classifier), not Inception-v3:
FD-FMNIST / FD-CIFAR10 are Fréchet distances in that feature space and are not comparable with
published Inception FIDs; compare runs with each other at the same number of samples (FD is biased in N).
"""
import math
from collections.abc import Sequence

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and covariance (D, D) of features (N, D): mu = E[f], S = E[(f - mu)(f - mu)^T] (unbiased)."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """S^{1/2} of a symmetric PSD matrix via its eigen-decomposition (negative round-off eigenvalues -> 0)."""
  eigvals, eigvecs = np.linalg.eigh(sigma)
  return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) between N(mu1, S1) and N(mu2, S2).

  Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})): S1 S2 and S1^{1/2} S2 S1^{1/2} share
  their eigenvalues, and the latter is symmetric PSD, so two `eigh` calls give the trace stably (no complex
  round-off as from sqrtm of the non-symmetric S1 S2, and no regulariser needed for singular S1).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  root1 = _psd_sqrt(sigma1)
  inner = root1 @ sigma2 @ root1
  tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_of(features1, features2) -> float:
  """FD between Gaussians fitted (gaussian_stats) to two feature sets (N1, D), (N2, D)."""
  return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def inception_score(probs) -> float:
  """IS = exp(E_x KL(p(y|x) || p(y))) with p(y) = E_x p(y|x) (Salimans et al. 2016); probs (N, K).

  1 when every prediction is the same distribution; K when predictions are one-hot and the classes uniform.
  """
  probs = np.asarray(probs, np.float64)
  marginal = probs.mean(axis=0, keepdims=True)                  # p(y), (1, K)
  safe = np.where(probs > 0, probs, 1.0)                        # 0 log 0 = 0
  kl = np.sum(probs * (np.log(safe) - np.log(np.where(probs > 0, marginal, 1.0))), axis=1)
  return float(np.exp(kl.mean()))


def _pairwise_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """||a_i - b_j||^2 = |a_i|^2 + |b_j|^2 - 2 a_i . b_j, clipped at 0; (N, D), (M, D) -> (N, M)."""
  d2 = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d2, 0.0)


def knn_radii(features, k: int, chunk: int = 1024) -> np.ndarray:
  """r_i = ||f_i - NN_k(f_i)||^2: squared distance to the k-th nearest other point of the set; (N,)."""
  features = np.asarray(features, np.float64)
  if len(features) <= k:
    raise ValueError(f'k={k} nearest neighbours need more than {k} points, got {len(features)}')
  radii = [np.partition(_pairwise_sq_dists(features[i:i + chunk], features), k, axis=1)[:, k]  # [:, 0] is self
           for i in range(0, len(features), chunk)]
  return np.concatenate(radii)


def manifold_coverage(points, support, support_radii, chunk: int = 1024) -> float:
  """Fraction of points inside the manifold estimate U_j B(support_j, r_j): mean_i 1[exists j: ||p_i - s_j||^2 <= r_j]."""
  points, support = np.asarray(points, np.float64), np.asarray(support, np.float64)
  inside = [np.any(_pairwise_sq_dists(points[i:i + chunk], support) <= support_radii[None, :], axis=1)
            for i in range(0, len(points), chunk)]
  return float(np.concatenate(inside).mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
  """k-NN precision and recall (Kynkäänniemi et al. 2019):

  precision = mean_{fake i} 1[fake_i in manifold(real)]   (fidelity: fakes that look real)
  recall    = mean_{real i} 1[real_i in manifold(fake)]   (diversity: real modes the fakes cover)
  manifold(X) = U_j B(x_j, ||x_j - NN_k(x_j)||) with the k-th nearest neighbour within X.
  """
  return (manifold_coverage(fake, real, knn_radii(real, k)), manifold_coverage(real, fake, knn_radii(fake, k)))


def distinct_n(texts: Sequence[str], n: int) -> float:
  """distinct-n = |unique n-grams| / |n-grams| over all texts together (Li et al. 2016); word n-grams of
  str.split(). 1 when no n-gram repeats; 0 when there are no n-grams at all."""
  ngrams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
  return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def bits_per_dim(nll_nats: float, num_dims: int) -> float:
  """bits/dim = NLL / (D ln 2) for an NLL in nats over D dimensions."""
  return nll_nats / (num_dims * math.log(2))


def bits_per_char(loss_per_token: float, chars_per_token: float) -> float:
  """bpc = L / (ln 2 * chars per token) for a mean cross-entropy L in nats per token (= L / ln 2 for chars)."""
  return loss_per_token / (math.log(2) * chars_per_token)
