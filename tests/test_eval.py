"""Metric math (closed forms and limiting cases) and the eval classifier's cache; no dataset needed."""
import math

import jax
import numpy as np
import pytest
import scipy.linalg

from jaxgen import metrics


def _random_cov(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_of_a_sample_with_itself_is_zero():
  x = np.random.default_rng(0).normal(size=(500, 16))
  assert abs(metrics.frechet_distance_of(x, x)) < 1e-8


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
  # FD(N(m1, diag v1), N(m2, diag v2)) = ||m1 - m2||^2 + sum_i (sqrt(v1_i) - sqrt(v2_i))^2
  rng = np.random.default_rng(1)
  m1, m2 = rng.normal(size=8), rng.normal(size=8)
  v1, v2 = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  assert metrics.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_sqrtm_for_full_covariances():
  rng = np.random.default_rng(2)
  s1, s2 = _random_cov(rng, 12), _random_cov(rng, 12)
  m1, m2 = rng.normal(size=12), rng.normal(size=12)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_gaussian_samples_approaches_the_closed_form():
  rng = np.random.default_rng(3)
  x = rng.normal(0.0, 1.0, size=(200_000, 4))
  y = rng.normal(1.0, 2.0, size=(200_000, 4))
  expected = 4 * 1.0**2 + 4 * (1.0 - 2.0) ** 2                     # ||mu||^2 + sum (sigma1 - sigma2)^2
  assert metrics.frechet_distance_of(x, y) == pytest.approx(expected, rel=0.01)


def test_frechet_distance_handles_singular_covariances():
  x = np.random.default_rng(4).normal(size=(50, 3)) @ np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0, 0, 0]])
  assert abs(metrics.frechet_distance_of(x, x)) < 1e-8               # rank-2 covariance in 3-D


def test_precision_recall_of_identical_sets_is_one():
  x = np.random.default_rng(5).normal(size=(300, 8))
  assert metrics.precision_recall(x, x, k=3) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
  rng = np.random.default_rng(6)
  real, fake = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 100.0
  assert metrics.precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_is_high_and_recall_low_for_a_collapsed_generator():
  rng = np.random.default_rng(7)
  real = rng.normal(size=(1000, 2))
  fake = rng.normal(size=(1000, 2)) * 0.05                          # all fakes near one real mode
  precision, recall = metrics.precision_recall(real, fake, k=3)
  assert precision > 0.95 and recall < 0.1


def test_knn_radii_are_distances_to_the_kth_other_point():
  points = np.array([[0.0], [1.0], [3.0], [7.0]])
  np.testing.assert_allclose(metrics.knn_radii(points, k=1), [1.0, 1.0, 4.0, 16.0])
  np.testing.assert_allclose(metrics.knn_radii(points, k=2), [9.0, 4.0, 9.0, 36.0])


def test_inception_score_of_uniform_predictions_is_one():
  assert metrics.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)


def test_inception_score_of_confident_balanced_predictions_is_num_classes():
  probs = np.eye(10)[np.arange(100) % 10]                           # one-hot, every class equally often
  assert metrics.inception_score(probs) == pytest.approx(10.0)


def test_inception_score_of_a_single_confident_class_is_one():
  assert metrics.inception_score(np.eye(10)[np.zeros(50, int)]) == pytest.approx(1.0)


def test_distinct_n_counts_unique_word_ngrams_across_texts():
  texts = ['the cat sat', 'the cat ran']
  assert metrics.distinct_n(texts, 1) == pytest.approx(4 / 6)       # the cat sat ran / 6 words
  assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)       # (the cat) twice, (cat sat), (cat ran)
  assert metrics.distinct_n(texts, 3) == pytest.approx(2 / 2)
  assert metrics.distinct_n(texts, 4) == 0.0                        # no 4-grams
  assert metrics.distinct_n(['a a a a'], 1) == pytest.approx(1 / 4)


def test_bits_conversions():
  assert metrics.bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
  assert metrics.bits_per_char(math.log(2), 1.0) == pytest.approx(1.0)
  assert metrics.bits_per_char(math.log(2) * 4, 4.0) == pytest.approx(1.0)   # BPE: 4 characters a token


def test_classifier_cache_round_trips_as_plain_npz(tmp_path):
  from jaxgen import evaluators as jaxgen_eval
  model = jaxgen_eval._model('fashion_mnist')
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 28, 28, 1), np.float32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes['params'])
  info = dict(architecture=jaxgen_eval._architecture('fashion_mnist'), num_classes=10, test_accuracy=0.9)
  jaxgen_eval.save_classifier(str(tmp_path), 'fashion_mnist', params, info)
  with np.load(tmp_path / 'classifier_fashion_mnist.npz', allow_pickle=False) as f:   # no object arrays
    assert all(f[k].dtype == np.float32 for k in f.files)
  loaded, loaded_info = jaxgen_eval.load_classifier_params(str(tmp_path), 'fashion_mnist')
  assert loaded_info == info
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_cached_classifier_of_another_architecture_is_not_used(tmp_path):
  from jaxgen import evaluators as jaxgen_eval
  jaxgen_eval.save_classifier(str(tmp_path), 'fashion_mnist', {'w': np.zeros(2, np.float32)},
                              dict(architecture={'features': [1], 'hidden': 1}))
  assert jaxgen_eval.load_classifier_params(str(tmp_path), 'fashion_mnist') is None


def test_classifiers_are_kept_beside_the_datasets(tmp_path, monkeypatch):
  """jaxgen writes only in workdirs and the TFDS data directory."""
  import tensorflow_datasets as tfds
  from jaxgen import evaluators as jaxgen_eval
  assert jaxgen_eval.classifier_dir(str(tmp_path)) == str(tmp_path / 'jaxgen_classifiers')
  monkeypatch.setattr(tfds.core.constants, 'DATA_DIR', str(tmp_path / 'default'))
  assert jaxgen_eval.classifier_dir(None) == str(tmp_path / 'default' / 'jaxgen_classifiers')
