"""Distances between feature distributions: Fréchet distance (FID) and KID.

Host-side NumPy in float64: a 2048-d covariance in float32 loses the digits
that the matrix square root needs. The features come from any network
(genjax.nn.inception for FID proper; a genjax-trained network for the
download-free distance, which must not be called FID).
"""

import numpy as np
import scipy.linalg


def _as_features(features, name: str) -> np.ndarray:
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(f'{name}: expected [N, D] features, got shape {features.shape}.')
  if not np.all(np.isfinite(features)):
    raise ValueError(f'{name}: features contain NaN or Inf (did the model diverge?).')
  return features


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of a set of feature vectors.

  Args:
    features: [N, D], N >= 2.

  Returns:
    (mu [D], sigma [D, D]) in float64; sigma is the unbiased (N - 1)
    covariance, as in pytorch-fid and TF-GAN.
  """
  features = _as_features(features, 'feature_statistics')
  if features.shape[0] < 2:
    raise ValueError('feature_statistics: needs at least 2 feature vectors, '
                     f'got {features.shape[0]}.')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _trace_sqrt_product_eigh(sigma1, sigma2) -> float:
  """tr((S1 S2)^1/2) for symmetric PSD S1, S2, via symmetric eigenproblems.

  (S1 S2)^1/2 is similar to (S1^1/2 S2 S1^1/2)^1/2, which is symmetric PSD, so
  its trace is the sum of the square roots of that matrix's eigenvalues. No
  non-symmetric square root, no complex round-off; eigenvalues that round-off
  pushes below zero are clipped (they are zero in exact arithmetic).
  """
  w, v = np.linalg.eigh(sigma1)
  root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  m = root1 @ sigma2 @ root1
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma1, sigma2, eps: float) -> float:
  """tr((S1 S2)^1/2) exactly as pytorch-fid / the TTUR code compute it."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(covmean)):
    # Singular product: add eps to the diagonals, as the standard FID code does.
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError('frechet_distance: the matrix square root has an imaginary '
                       f'component of {np.max(np.abs(covmean.imag)):.3g}; use '
                       "method='eigh' or more samples.")
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, *, method: str = 'eigh',
                     eps: float = 1e-6) -> float:
  """Fréchet (2-Wasserstein) distance between two Gaussians.

  d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2). With Inception pool3
  statistics this is FID.

  Args:
    mu1: [D] mean of the first set.
    sigma1: [D, D] covariance of the first set.
    mu2: [D] mean of the second set.
    sigma2: [D, D] covariance of the second set.
    method: 'eigh' (default): tr (S1 S2)^1/2 from the eigenvalues of the
      symmetric S1^1/2 S2 S1^1/2; exact for PSD inputs and stable when they
      are singular (fewer samples than dimensions). 'sqrtm': scipy's
      `sqrtm(S1 @ S2)` with the eps*I retry of pytorch-fid, for bit-for-bit
      comparison with published numbers; the two agree to round-off on
      well-conditioned inputs.
    eps: the diagonal offset of the 'sqrtm' retry.

  Returns:
    The distance (a Python float, >= 0 up to round-off).

  Raises:
    ValueError: on mismatched shapes, non-finite inputs, or a non-finite
      result (never returns NaN).
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'frechet_distance: shapes do not match: mu1 {mu1.shape}, sigma1 '
                     f'{sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}.')
  for name, value in (('mu1', mu1), ('sigma1', sigma1), ('mu2', mu2), ('sigma2', sigma2)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f'frechet_distance: {name} contains NaN or Inf.')
  if method == 'eigh':
    tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
  elif method == 'sqrtm':
    tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
  else:
    raise ValueError(f"frechet_distance: method={method!r}, use 'eigh' or 'sqrtm'.")
  diff = mu1 - mu2
  distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
  if not np.isfinite(distance):
    raise ValueError(f'frechet_distance: the result is not finite ({distance}).')
  return distance


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with the kernel k(a, b) = (a.b / D + 1)^3."""
  m, d = x.shape
  k_xx = (x @ x.T / d + 1) ** 3
  k_yy = (y @ y.T / d + 1) ** 3
  k_xy = (x @ y.T / d + 1) ** 3
  n = y.shape[0]
  return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
               + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
               - 2 * k_xy.mean())


def kid(features1, features2, *, num_subsets: int = 100, subset_size: int = 1000,
        rng: int | np.random.Generator = 0) -> tuple[float, float]:
  """Kernel Inception Distance (Bińkowski et al. 2018).

  The unbiased estimate of MMD^2 with the cubic polynomial kernel
  k(a, b) = (a.b / D + 1)^3, averaged over `num_subsets` random subsets of
  `subset_size` vectors drawn without replacement from each set (the
  protocol of the paper, TF-GAN and torch-fidelity). Unlike FID it is
  unbiased in the number of samples, so small sample sizes are comparable;
  it can be slightly negative when the two sets are alike.

  Args:
    features1: [N1, D] features.
    features2: [N2, D] features.
    num_subsets: number of random subsets.
    subset_size: vectors per subset; capped at min(N1, N2) (so a small eval
      set uses all its vectors, in a different order, in every subset).
    rng: seed or numpy Generator for the subsets.

  Returns:
    (mean, std) over subsets, Python floats; std is the population
    standard deviation (ddof=0, as torch-fidelity reports it).
  """
  x = _as_features(features1, 'kid (features1)')
  y = _as_features(features2, 'kid (features2)')
  if x.shape[1] != y.shape[1]:
    raise ValueError(f'kid: feature sizes differ: {x.shape[1]} and {y.shape[1]}.')
  m = min(subset_size, x.shape[0], y.shape[0])
  if m < 2:
    raise ValueError(f'kid: needs at least 2 vectors in each set, got {x.shape[0]} '
                     f'and {y.shape[0]}.')
  rng = np.random.default_rng(rng)
  values = np.array([
      _polynomial_mmd2(x[rng.choice(x.shape[0], m, replace=False)],
                       y[rng.choice(y.shape[0], m, replace=False)])
      for _ in range(num_subsets)])
  return float(values.mean()), float(values.std())
