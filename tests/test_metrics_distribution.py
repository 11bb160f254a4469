"""genjax.metrics.distribution against closed forms, scipy and direct sums."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from genjax.metrics import distribution

METHODS = ['eigh', 'sqrtm']


def _rotation(rng, d):
  return scipy.stats.ortho_group.rvs(d, random_state=rng)


def _commuting(eig1, eig2, rng):
  """Two covariances with the same eigenvectors and the given eigenvalues."""
  q = _rotation(rng, len(eig1))
  return (q * eig1) @ q.T, (q * eig2) @ q.T


def _closed_form(mu1, mu2, eig1, eig2):
  """d^2 for commuting covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
  return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(eig1) - np.sqrt(eig2)) ** 2))


def test_feature_statistics():
  x = (np.random.default_rng(0).standard_normal((50, 4)) * [1, 2, 3, 4]).astype(np.float32)
  mu, sigma = distribution.feature_statistics(x)
  x = x.astype(np.float64)
  centred = x - x.mean(axis=0)
  np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)  # Unbiased.
  assert mu.dtype == sigma.dtype == np.float64
  with pytest.raises(ValueError, match='at least 2'):
    distribution.feature_statistics(x[:1])
  with pytest.raises(ValueError, match='NaN'):
    distribution.feature_statistics(np.full((3, 2), np.nan))


@pytest.mark.parametrize('method', METHODS)
def test_frechet_distance_diagonal_and_commuting(method):
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
  expected = _closed_form(mu1, mu2, a, b)
  got = distribution.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
  np.testing.assert_allclose(got, expected, rtol=1e-10)
  s1, s2 = _commuting(a, b, rng)
  got = distribution.frechet_distance(mu1, s1, mu2, s2, method=method)
  np.testing.assert_allclose(got, expected, rtol=1e-9)
  # A distribution is at distance 0 from itself.
  assert abs(distribution.frechet_distance(mu1, s1, mu1, s1, method=method)) < 1e-9


@pytest.mark.parametrize('method', METHODS)
def test_frechet_distance_matches_scipy_on_general_covariances(method):
  rng = np.random.default_rng(2)
  d = 32
  f1 = rng.standard_normal((200, d)) @ rng.standard_normal((d, d))
  f2 = rng.standard_normal((200, d)) @ rng.standard_normal((d, d)) + 0.5
  mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
  mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
  # The 2-Wasserstein form with the symmetric square roots (scipy).
  r1 = scipy.linalg.sqrtm(s1).real
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(scipy.linalg.sqrtm(r1 @ s2 @ r1).real))
  got = distribution.frechet_distance(mu1, s1, mu2, s2, method=method)
  np.testing.assert_allclose(got, expected, rtol=1e-8)
  # Symmetric in its arguments.
  np.testing.assert_allclose(distribution.frechet_distance(mu2, s2, mu1, s1, method=method),
                             expected, rtol=1e-8)


def test_frechet_distance_ill_conditioned():
  rng = np.random.default_rng(3)
  d = 64
  # Eigenvalues over 14 orders of magnitude, a third of them exactly 0: the
  # covariances of fewer samples than dimensions.
  a = np.r_[np.logspace(-12, 2, 43), np.zeros(21)]
  b = np.r_[np.logspace(2, -12, 43), np.zeros(21)]
  s1, s2 = _commuting(a, b, rng)
  mu1, mu2 = np.zeros(d), np.full(d, 0.1)
  expected = _closed_form(mu1, mu2, a, b)
  got = distribution.frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(got, expected, rtol=1e-8)
  # scipy's sqrtm of the singular product, with pytorch-fid's eps retry,
  # is close but not as exact.
  got = distribution.frechet_distance(mu1, s1, mu2, s2, method='sqrtm')
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # Sample covariances with N < D (rank-deficient, non-commuting).
  f1, f2 = rng.standard_normal((20, d)), rng.standard_normal((20, d)) * 1.5
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  r1 = scipy.linalg.sqrtm(s1).real
  expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
  got = distribution.frechet_distance(np.zeros(d), s1, np.zeros(d), s2)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_frechet_distance_rejects_bad_input():
  eye = np.eye(3)
  with pytest.raises(ValueError, match='sigma2 contains NaN'):
    distribution.frechet_distance(np.zeros(3), eye, np.zeros(3), eye * np.nan)
  with pytest.raises(ValueError, match='shapes do not match'):
    distribution.frechet_distance(np.zeros(3), eye, np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match='method'):
    distribution.frechet_distance(np.zeros(3), eye, np.zeros(3), eye, method='svd')


def _direct_kid(x, y):
  """Unbiased MMD^2, cubic kernel, as double sums over pairs."""
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def test_kid_matches_direct_sum():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((30, 5))
  y = rng.standard_normal((30, 5)) * 1.3 + 0.2
  # One subset of all vectors: a permutation, to which MMD^2 is invariant.
  mean, std = distribution.kid(x, y, num_subsets=1, subset_size=1000)
  np.testing.assert_allclose(mean, _direct_kid(x, y), rtol=1e-10)
  assert std == 0.0
  # Subsets of 10: every subset value is a direct MMD^2 of 10 + 10 vectors,
  # so the mean lies within their range; same seed, same numbers.
  mean, std = distribution.kid(x, y, num_subsets=20, subset_size=10, rng=7)
  assert (mean, std) == distribution.kid(x, y, num_subsets=20, subset_size=10, rng=7)
  assert std > 0


def test_kid_separates_distributions():
  rng = np.random.default_rng(5)
  same = distribution.kid(rng.standard_normal((400, 8)), rng.standard_normal((400, 8)),
                          num_subsets=20, subset_size=200)
  shifted = distribution.kid(rng.standard_normal((400, 8)), rng.standard_normal((400, 8)) + 0.5,
                             num_subsets=20, subset_size=200)
  assert abs(same[0]) < 3 * same[1] + 1e-3  # Unbiased: ~0 for equal distributions.
  assert shifted[0] > 10 * abs(same[0]) and shifted[0] > 3 * shifted[1]
  with pytest.raises(ValueError, match='feature sizes differ'):
    distribution.kid(np.zeros((4, 2)), np.zeros((4, 3)))
