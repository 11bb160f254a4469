"""The VAE: ELBO pieces against closed forms, scipy and skimage; the method
through the real training loop; every config switch changes the objective."""

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage
from scipy import stats
from skimage import metrics as skmetrics

from configs import vae as vae_configs
from genjax import train
from genjax.config import ConfigError
from genjax.data import augment
from genjax.data import smote
from genjax.methods import vae
from genjax.nn import features
from genjax.nn import vae as vae_nn
from genjax.train import read_scalars

# --- KL ----------------------------------------------------------------------


def test_kl_closed_form_by_hand():
  mu = jnp.array([[1.0, 0.0], [0.5, -2.0]])
  logvar = jnp.log(jnp.array([[1.0, 2.0], [0.25, 1.0]]))
  # 0.5 * sum(mu^2 + var - 1 - log var), term by term.
  expected = [0.5 * ((1 + 1 - 1 - 0) + (0 + 2 - 1 - math.log(2))),
              0.5 * ((0.25 + 0.25 - 1 - math.log(0.25)) + (4 + 1 - 1 - 0))]
  np.testing.assert_allclose(vae.kl_divergence(mu, logvar), expected,
                             rtol=1e-6)
  # Spatial latents [B, s, s, C] sum over every dimension.
  np.testing.assert_allclose(
      vae.kl_divergence(mu.reshape(2, 1, 1, 2), logvar.reshape(2, 1, 1, 2)),
      expected, rtol=1e-6)


def test_kl_matches_a_monte_carlo_estimate_with_reparameterised_draws():
  mu = np.array([0.7, -1.2, 0.1], np.float32)
  logvar = np.array([-1.0, 0.5, 0.0], np.float32)
  n = 200_000
  z = np.asarray(vae_nn.reparameterize(
      jax.random.key(0), jnp.broadcast_to(mu, (n, 3)),
      jnp.broadcast_to(logvar, (n, 3))), np.float64)
  sigma = np.exp(0.5 * logvar)
  # The draws are N(mu, sigma^2) ...
  for d in range(3):
    assert stats.kstest(z[:, d], "norm", args=(mu[d], sigma[d])).pvalue > 1e-3
  # ... and E_q[log q(z) - log p(z)] is the closed-form KL.
  log_ratio = (stats.norm.logpdf(z, mu, sigma).sum(1)
               - stats.norm.logpdf(z).sum(1))
  estimate, stderr = log_ratio.mean(), log_ratio.std() / math.sqrt(n)
  closed = float(vae.kl_divergence(mu[None], logvar[None])[0])
  assert abs(estimate - closed) < 4 * stderr, (estimate, closed, stderr)


def test_kl_weight_warms_up_linearly():
  got = [float(vae.kl_weight(s, 0.5, 100)) for s in (0, 50, 100, 1000)]
  np.testing.assert_allclose(got, [0.0, 0.25, 0.5, 0.5])
  assert float(vae.kl_weight(0, 0.5, 0)) == 0.5


# --- Reconstruction terms on 2x2 images --------------------------------------

X = np.array([[0.0, 1.0], [-1.0, 0.5]], np.float32).reshape(1, 2, 2, 1)
X_HAT = np.array([[0.5, 0.5], [-1.0, 0.0]], np.float32).reshape(1, 2, 2, 1)
MASK = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32).reshape(1, 2, 2, 1)


@pytest.mark.parametrize("likelihood, expected", [
    ("l2", 0.25 + 0.25 + 0.0 + 0.25),
    ("l1", 0.5 + 0.5 + 0.0 + 0.5),
])
def test_l2_l1_by_hand(likelihood, expected):
  got = vae.reconstruction_nll(X, X_HAT, likelihood)
  np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_gaussian_matches_scipy():
  sigma = 0.5
  got = vae.reconstruction_nll(X, X_HAT, "gaussian", jnp.log(sigma))
  expected = -stats.norm.logpdf(X, X_HAT, sigma).sum()
  np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_lesion_weighting_by_hand():
  weights = vae.pixel_weights(MASK, 3.0)
  np.testing.assert_array_equal(weights[0, ..., 0], [[1, 3], [1, 1]])
  # The lesion pixel's (x - x̂)² = 0.25 counts 3 times.
  np.testing.assert_allclose(
      vae.reconstruction_nll(X, X_HAT, "l2", weights=weights),
      [0.25 + 3 * 0.25 + 0.0 + 0.25], rtol=1e-6)
  np.testing.assert_allclose(
      vae.reconstruction_nll(X, X_HAT, "l1", weights=weights),
      [0.5 + 3 * 0.5 + 0.0 + 0.5], rtol=1e-6)


def test_optimal_scale_is_the_maximum_likelihood_scale():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
  x_hat = x + rng.normal(0, 0.2, x.shape).astype(np.float32)
  _, mle = stats.norm.fit((x - x_hat).ravel(), floc=0.0)
  np.testing.assert_allclose(np.exp(vae.optimal_log_scale(x, x_hat)), mle,
                             rtol=1e-5)
  # Weighted: the ML scale of the sample with each pixel repeated w times.
  w = np.where(rng.uniform(size=x.shape) < 0.3, 4.0, 1.0).astype(np.float32)
  repeated = np.repeat((x - x_hat).ravel(), w.ravel().astype(int))
  _, mle_w = stats.norm.fit(repeated, floc=0.0)
  np.testing.assert_allclose(np.exp(vae.optimal_log_scale(x, x_hat, w)),
                             mle_w, rtol=1e-5)


def _vae_config(**overrides):
  c = vae_configs.get_config("smoke").vae
  c.update(overrides)
  return c


def test_objective_by_hand():
  x = np.concatenate([X, -X])
  x_hat = np.concatenate([X_HAT, np.zeros_like(X)])
  mu = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
  logvar = np.log(np.array([[1.0, 2.0], [1.0, 1.0]], np.float32))
  c = _vae_config(likelihood="l2", beta=0.5, kl_warmup_steps=10,
                  lesion_weight=2.0)
  mask = np.concatenate([MASK, np.zeros_like(MASK)])
  loss, terms = vae.objective(x, x_hat, mu, logvar, c, step=4, mask=mask)
  recon = [0.25 + 2 * 0.25 + 0.25, 0.0 + 1.0 + 1.0 + 0.25]
  kl = [0.5 * (1 + 1 - math.log(2)), 0.0]
  beta_t = 0.5 * 4 / 10
  np.testing.assert_allclose(terms["recon"], np.mean(recon), rtol=1e-6)
  np.testing.assert_allclose(terms["kl"], np.mean(kl), rtol=1e-6)
  np.testing.assert_allclose(terms["kl_weight"], beta_t, rtol=1e-6)
  np.testing.assert_allclose(
      loss, np.mean([r + beta_t * k for r, k in zip(recon, kl)]), rtol=1e-6)


def test_ssim_term_is_pixels_times_one_minus_skimage_ssim():
  rng = np.random.default_rng(1)
  x = np.clip(ndimage.gaussian_filter(rng.normal(0, 1, (2, 32, 32, 1)),
                                      (0, 2, 2, 0)) * 3, -1, 1)
  x = x.astype(np.float32)
  x_hat = np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1).astype(np.float32)
  zeros = np.zeros((2, 4), np.float32)
  base, _ = vae.objective(x, x_hat, zeros, zeros, _vae_config(likelihood="l1"),
                          step=0)
  with_ssim, terms = vae.objective(
      x, x_hat, zeros, zeros, _vae_config(likelihood="l1", ssim_weight=0.5),
      step=0)
  ref = [skmetrics.structural_similarity(
      x[i, ..., 0], x_hat[i, ..., 0], data_range=2.0, gaussian_weights=True,
      sigma=1.5, use_sample_covariance=False) for i in range(2)]
  np.testing.assert_allclose(terms["ssim"], np.mean(ref), atol=1e-4)
  np.testing.assert_allclose(with_ssim - base,
                             0.5 * 32 * 32 * (1 - np.mean(ref)), rtol=1e-3)


# --- Feature networks --------------------------------------------------------


def test_filter_bank_matches_scipy_filters():
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (2, 16, 16, 1)).astype(np.float32)
  maps = jax.device_get(features.filter_bank(jnp.asarray(x), num_scales=2))
  assert [m.shape for m in maps] == [(2, 16, 16, 5), (2, 8, 8, 5), (2, 8, 8, 1)]
  binomial = np.array([1, 4, 6, 4, 1]) / 16.0
  level = x[..., 0]
  for scale in range(2):
    got = maps[scale]
    for i in range(2):
      img = level[i]
      low = ndimage.correlate(img, np.outer(binomial, binomial), mode="reflect")
      np.testing.assert_allclose(got[i, ..., 0], img - low, atol=1e-5)
      np.testing.assert_allclose(got[i, ..., 1],
                                 ndimage.sobel(img, axis=1, mode="reflect") / 8,
                                 atol=1e-5)
      np.testing.assert_allclose(got[i, ..., 2],
                                 ndimage.sobel(img, axis=0, mode="reflect") / 8,
                                 atol=1e-5)
      diag = np.array([[-2, -1, 0], [-1, 0, 1], [0, 1, 2]]) / 8
      np.testing.assert_allclose(
          got[i, ..., 3], ndimage.correlate(img, diag, mode="reflect"),
          atol=1e-5)
      np.testing.assert_allclose(
          got[i, ..., 4],
          ndimage.correlate(img, np.fliplr(diag), mode="reflect"), atol=1e-5)
    level = np.stack([ndimage.correlate(level[i], np.outer(binomial, binomial),
                                        mode="reflect")
                      for i in range(2)])[:, ::2, ::2]
  np.testing.assert_allclose(maps[-1][..., 0], np.stack(_blurred(x, 2)),
                             atol=1e-5)


def _blurred(x, num_scales):
  """The last low-pass image of the pyramid, computed with scipy."""
  binomial = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
  out = []
  for img in x[..., 0]:
    for s in range(num_scales):
      img = ndimage.correlate(img, binomial, mode="reflect")
      if s < num_scales - 1:
        img = img[::2, ::2]
    out.append(img)
  return out


def _features_config(**overrides):
  c = ml_collections.ConfigDict(vae_configs.get_config("smoke").vae.features)
  c.update(overrides)
  return c


def test_random_conv_features_are_fixed_by_the_seed():
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1)
  make = lambda seed: features.make(
      _features_config(network="random_conv", seed=seed))
  a, b, c = make(3)(x), make(3)(x), make(4)(x)
  assert [f.shape for f in a] == [(2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64)]
  for fa, fb, fc in zip(a, b, c):
    np.testing.assert_array_equal(fa, fb)
    assert not np.allclose(fa, fc)


def test_pretrained_features_from_a_local_npz(tmp_path):
  rng = np.random.default_rng(3)
  k0 = rng.normal(0, 0.3, (3, 3, 3, 2)).astype(np.float32)
  b0 = rng.normal(0, 0.1, 2).astype(np.float32)
  k1 = rng.normal(0, 0.3, (3, 3, 2, 4)).astype(np.float32)
  mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
  path = tmp_path / "w.npz"
  np.savez(path, conv0_kernel=k0, conv0_bias=b0, conv1_kernel=k1,
           pool_after=[0], mean=mean, std=std)
  fn = features.make(_features_config(network="pretrained",
                                      weights_path=str(path)))
  x = rng.uniform(-1, 1, (1, 8, 8, 1)).astype(np.float32)
  got = jax.device_get(fn(jnp.asarray(x)))
  assert [f.shape for f in got] == [(1, 8, 8, 2), (1, 4, 4, 4)]
  # Reference: scipy correlation with zero padding, ReLU, 2x2 max-pool.
  unit = (x[0, ..., 0] + 1) / 2
  inputs = [(unit - mean[c]) / std[c] for c in range(3)]
  h0 = np.stack([np.maximum(sum(
      ndimage.correlate(inputs[c], k0[:, :, c, o], mode="constant")
      for c in range(3)) + b0[o], 0) for o in range(2)], -1)
  np.testing.assert_allclose(got[0][0], h0, atol=1e-4)
  pooled = h0.reshape(4, 2, 4, 2, 2).max(axis=(1, 3))
  h1 = np.stack([np.maximum(sum(
      ndimage.correlate(pooled[..., c], k1[:, :, c, o], mode="constant")
      for c in range(2)), 0) for o in range(4)], -1)
  np.testing.assert_allclose(got[1][0], h1, atol=1e-4)


def test_pretrained_without_a_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="weights_path is empty"):
    features.make(_features_config(network="pretrained"))
  missing = str(tmp_path / "vgg.npz")
  with pytest.raises(FileNotFoundError,
                     match="config.vae.features.weights_path=.*no such file"):
    features.make(_features_config(network="pretrained",
                                   weights_path=missing))
  with pytest.raises(ValueError, match="network='vgg'"):
    features.make(_features_config(network="vgg"))


# --- The method --------------------------------------------------------------


def _smoke(**vae_overrides):
  config = vae_configs.get_config("smoke")
  config.data.train_split = "train_mixed"  # Lesion masks (lesion_weight).
  config.vae.update(vae_overrides)
  return config


def _lesion_batch(size=32, b=4):
  """Phantom-like slices: a disc of brain, a bright lesion in slices 0, 2, 3."""
  yy, xx = np.mgrid[:size, :size]
  brain = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2)
  image = np.where(brain, 0.2, -1.0)[None].repeat(b, 0)
  mask = np.zeros((b, size, size), np.float32)
  for i, (r, c) in zip((0, 2, 3), ((12, 12), (16, 18), (18, 13))):
    mask[i, r:r + 5, c:c + 5] = 1
  image = np.where(mask > 0, 0.9, image)
  image += np.random.default_rng(0).normal(0, 0.05, image.shape) * brain
  return {"image": image[..., None].astype(np.float32),
          "mask": mask[..., None],
          "brain": np.broadcast_to(brain, (b, size, size))[..., None].astype(
              np.float32),
          "label": np.array([1, 0, 1, 1], np.int32)}


@pytest.fixture(scope="module")
def params():
  """Smoke VAE parameters with a perturbed posterior head.

  The head is zero-initialised (q = prior, KL = 0 exactly), which would hide
  the KL switches; a random head makes every term of the objective nonzero.
  """
  state = jax.jit(vae.make(_smoke()).init)(jax.random.key(0),
                                           _lesion_batch())
  head = state.params["vae"]["encoder"]["head"]
  head["kernel"] = 0.05 * jax.random.normal(jax.random.key(1),
                                            head["kernel"].shape)
  return state.params


SWITCHES = {
    "likelihood=l1": dict(vae=dict(likelihood="l1")),
    "likelihood=gaussian": dict(vae=dict(likelihood="gaussian")),  # optimal σ
    "gaussian, scale_mode=fixed": dict(vae=dict(likelihood="gaussian",
                                                scale_mode="fixed")),
    "beta": dict(vae=dict(beta=4.0)),
    "kl_warmup_steps": dict(vae=dict(kl_warmup_steps=1000)),
    "lesion_weight": dict(vae=dict(lesion_weight=10.0)),
    "ssim_weight": dict(vae=dict(ssim_weight=1.0)),
    "perceptual_weight": dict(vae=dict(perceptual_weight=1.0)),
    "perceptual random_conv": dict(vae=dict(
        perceptual_weight=1.0, features=dict(network="random_conv"))),
    "augment.elastic": dict(augment=dict(elastic=True)),
    "augment.gamma": dict(augment=dict(gamma=True)),
    "augment.crop": dict(augment=dict(crop=True)),
    "smote.enabled": dict(smote=dict(enabled=True, fraction=1.0)),
}


def test_each_config_switch_changes_the_loss(params):
  """Every fix is a switch: flipping it changes the loss of the same batch.

  Each config's batch goes through what train.py applies before the method's
  step (augmentation, then SMOTE), then the method's objective, with the same
  keys; all configs are evaluated in one jitted function (one compilation).
  """
  configs = {"base": _smoke(kl_warmup_steps=10)}
  for name, overrides in SWITCHES.items():
    config = _smoke(kl_warmup_steps=10)
    for section, values in overrides.items():
      config[section].update(values)
    configs[name] = config
  losses = {name: vae.make_loss(c) for name, c in configs.items()}

  @jax.jit
  def evaluate(params, batch):
    out = {}
    for name, config in configs.items():
      b = augment.augment_batch(jax.random.key(1), batch, config.augment)
      b = smote.synthesize(jax.random.key(2), b, config.smote)
      out[name] = losses[name](params, b, jax.random.key(3), jnp.int32(5))[0]
    return out

  got = {k: float(v) for k, v in evaluate(params, _lesion_batch()).items()}
  assert all(np.isfinite(v) for v in got.values()), got
  unchanged = [name for name in SWITCHES
               if abs(got[name] - got["base"]) <= 1e-4 * abs(got["base"])]
  assert not unchanged, (unchanged, got)
  assert got["perceptual_weight"] != got["perceptual random_conv"]
  assert got["likelihood=gaussian"] != got["gaussian, scale_mode=fixed"]


def test_train_step_minimises_the_objective(params):
  """train_step's loss is make_loss's, and the step lowers it."""
  config = _smoke(kl_warmup_steps=10)
  config.optim.warmup_steps = 0  # Else the first update has learning rate 0.
  method = vae.make(config)
  batch = _lesion_batch()
  state = jax.jit(method.init)(jax.random.key(0), batch)
  state = state.replace(params=params, step=jnp.int32(5))
  loss = jax.jit(vae.make_loss(config))
  before = float(loss(params, batch, jax.random.key(3), 5)[0])
  new_state, metrics = jax.jit(method.train_step)(state, batch,
                                                  jax.random.key(3))
  np.testing.assert_allclose(float(metrics["loss"]), before, rtol=1e-5)
  assert int(new_state.step) == 6
  after = float(loss(new_state.params, batch, jax.random.key(3), 5)[0])
  assert after < before
  assert set(metrics) >= {"loss", "recon", "kl", "kl_weight", "grad_norm",
                          "param_norm"}


# --- The aggregate posterior (sample.prior='aggregate') -------------------------


def test_aggregate_covariance_is_the_mixtures_covariance():
  """q(z) = mean_i N(mu_i, diag σ_i²) has covariance Cov(mu) + mean diag σ²
  (law of total variance), checked against numpy and against draws."""
  rng = np.random.default_rng(0)
  mu = rng.normal(size=(50, 3)) @ np.array([[1, .8, 0], [0, .5, 0], [0, 0, 2]])
  logvar = rng.normal(-1.0, 0.3, size=(50, 3))
  moments = vae.posterior_moments(jnp.asarray(mu, jnp.float32),
                                  jnp.asarray(logvar, jnp.float32), True)
  expected = np.cov(mu, rowvar=False, bias=True) + np.diag(
      np.exp(logvar).mean(0))
  np.testing.assert_allclose(vae.aggregate_covariance(moments), expected,
                             rtol=1e-4, atol=1e-5)
  i = rng.integers(50, size=200_000)
  draws = mu[i] + np.exp(0.5 * logvar[i]) * rng.normal(size=(200_000, 3))
  np.testing.assert_allclose(expected, np.cov(draws, rowvar=False), atol=0.03)
  # Spatial latents keep the diagonal only.
  diag = vae.posterior_moments(jnp.asarray(mu.reshape(50, 1, 1, 3)),
                               jnp.asarray(logvar.reshape(50, 1, 1, 3)),
                               False)
  np.testing.assert_allclose(vae.aggregate_covariance(diag),
                             np.diag(expected), rtol=1e-4)


def test_aggregate_draws_have_the_fitted_mean_and_covariance():
  mean = np.array([0.5, -1.0], np.float32)
  cov = np.array([[1.0, 0.9], [0.9, 1.0]], np.float32)  # Nearly degenerate.
  var = np.array([0.1, 0.1], np.float32)
  # Moments whose aggregate covariance is `cov`.
  second = cov - np.diag(var) + np.outer(mean, mean)
  moments = {"mean": jnp.asarray(mean), "second": jnp.asarray(second),
             "var": jnp.asarray(var)}
  z = np.asarray(vae.sample_aggregate(jax.random.key(0), moments, 100_000))
  np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
  np.testing.assert_allclose(np.cov(z, rowvar=False), cov, atol=0.02)
  half = np.asarray(vae.sample_aggregate(jax.random.key(0), moments, 100_000,
                                         temperature=0.5))
  np.testing.assert_allclose(np.cov(half, rowvar=False), cov / 4, atol=0.01)
  # The standard moments give N(0, I).
  std = vae.standard_moments(2, True)
  np.testing.assert_allclose(vae.aggregate_covariance(std), np.eye(2))


def test_train_step_tracks_the_posterior_moments(params):
  """After one step: momentum * start + (1 - momentum) * the moments of
  the batch's posteriors under the parameters the step started from."""
  config = _smoke()
  config.vae.posterior_momentum = 0.75
  method = vae.make(config)
  batch = _lesion_batch()
  state = jax.jit(method.init)(jax.random.key(0), batch)
  state = state.replace(params=params)
  new_state, _ = jax.jit(method.train_step)(state, batch, jax.random.key(3))
  mu, logvar = vae.make_model(config).apply(
      {"params": params["vae"]}, jnp.asarray(batch["image"]),
      method=vae_nn.VAE.encode)
  mu, var = np.asarray(mu, np.float64), np.exp(np.asarray(logvar, np.float64))
  dim = mu.shape[1]
  np.testing.assert_allclose(new_state.posterior["mean"],
                             0.25 * mu.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new_state.posterior["second"],
                             0.25 * mu.T @ mu / len(mu), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new_state.posterior["var"],
                             0.75 * np.ones(dim) + 0.25 * var.mean(0),
                             rtol=1e-5)


def test_aggregate_and_standard_priors_decode_different_latents(params):
  batch = _lesion_batch()
  samples = {}
  for prior in ("standard", "aggregate"):
    config = _smoke()
    config.sample.prior = prior
    method = vae.make(config)
    state = jax.jit(method.init)(jax.random.key(0), batch)
    # Moments far from N(0, I): the two priors must decode differently.
    dim = state.posterior["mean"].shape[0]
    state = state.replace(params=params, posterior={
        "mean": jnp.full((dim,), 3.0), "second": jnp.full((dim, dim), 9.0),
        "var": jnp.full((dim,), 0.01)})
    samples[prior] = np.asarray(jax.jit(method.sample, static_argnums=2)(
        state, jax.random.key(5), 2))
  assert not np.allclose(samples["standard"], samples["aggregate"], atol=1e-3)


@pytest.mark.parametrize("latent", ["dense", "spatial"])
def test_sample_and_reconstruct_shapes_and_range(latent):
  config = _smoke()
  config.model.latent = latent
  method = vae.make(config)
  batch = _lesion_batch()
  state = jax.jit(method.init)(jax.random.key(0), batch)
  samples = jax.jit(method.sample, static_argnums=2)(state, jax.random.key(2),
                                                     3)
  assert samples.shape == (3, 32, 32, 1)
  assert np.all(np.abs(samples) <= 1.0)
  assert not np.allclose(samples[0], samples[1])
  reconstruct = jax.jit(method.reconstruct)
  recon = reconstruct(state, batch["image"], jax.random.key(3))
  assert recon.shape == batch["image"].shape
  assert np.all(np.abs(recon) <= 1.0)
  # Decoding the posterior mean does not depend on the key.
  np.testing.assert_array_equal(
      recon, reconstruct(state, batch["image"], jax.random.key(4)))


def test_learned_scale_is_a_trainable_parameter(params):
  config = _smoke(likelihood="gaussian", scale_mode="learned", scale=0.5)
  state = jax.jit(vae.make(config).init)(jax.random.key(0), _lesion_batch())
  np.testing.assert_allclose(np.exp(state.params["log_scale"]), 0.5, rtol=1e-6)
  loss = vae.make_loss(config)

  def of_scale(log_scale):
    return loss({**params, "log_scale": log_scale}, _lesion_batch(),
                jax.random.key(3), 5)

  value_and_grad = jax.jit(jax.value_and_grad(of_scale, has_aux=True))
  (value, terms), grad = value_and_grad(jnp.log(5.0))
  assert float(terms["scale"]) == pytest.approx(5.0, rel=1e-5)
  # d loss / d log σ = mean over images of sum_p (1 - (x - x̂)² / σ²):
  # positive when σ exceeds every error, negative when σ is below the typical
  # error.
  assert float(grad) > 0 and np.isfinite(float(value))
  (_, terms), grad = value_and_grad(jnp.log(1e-2))
  assert float(terms["scale"]) == pytest.approx(1e-2, rel=1e-5)
  assert float(grad) < 0


@pytest.mark.parametrize("field, value, message", [
    ("vae.likelihood", "bernoulli", "config.vae.likelihood='bernoulli'"),
    ("vae.scale_mode", "auto", "config.vae.scale_mode='auto'"),
    ("vae.lesion_weight", 0.0, "config.vae.lesion_weight=0.0"),
    ("sample.temperature", 0.0, "config.sample.temperature"),
    ("sample.prior", "flow", "config.sample.prior='flow'"),
    ("vae.posterior_momentum", 1.0, "config.vae.posterior_momentum=1.0"),
    ("model.channels", (8, 16, 16, 16, 16, 16), "divisible by 64"),
    ("model.latent", "grid", "config.model.latent='grid'"),
    ("model.num_groups", 3, "config.model.num_groups=3"),
])
def test_bad_config_is_a_clear_error(field, value, message):
  config = _smoke()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=message):
    vae.make(config)


def test_lesion_weight_on_the_healthy_split_is_refused():
  config = _smoke(lesion_weight=5.0)
  vae.check_config(config)
  config.data.train_split = "train"
  with pytest.raises(ConfigError, match="train_split=train_mixed"):
    vae.check_config(config)


def test_bad_feature_network_is_caught_before_building():
  config = _smoke(perceptual_weight=1.0)
  config.vae.features.network = "vgg"
  with pytest.raises(ConfigError, match="config.vae.features.network='vgg'"):
    vae.check_config(config)
  config.vae.features.network = "pretrained"
  with pytest.raises(ConfigError, match="weights_path is empty"):
    vae.check_config(config)
  config.vae.perceptual_weight = 0.0  # The network is unused: no check.
  vae.check_config(config)


def test_loss_decreases_through_the_training_loop(smoke_config, tmp_path):
  config = smoke_config(vae_configs)
  config.train.num_steps = 60
  config.train.log_every = 10
  config.train.ckpt_every = 60
  config.train.sample_every = 60
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  recon = read_scalars(workdir, "recon")
  loss = read_scalars(workdir, "loss")
  assert [s for s, _ in loss] == list(range(10, 61, 10))
  # recon is the per-image sum of squared errors ('l2'): it must halve.
  assert recon[-1][1] < 0.5 * recon[0][1], recon
  assert loss[-1][1] < 0.5 * loss[0][1], loss
  assert read_scalars(workdir, "kl") and read_scalars(workdir, "kl_weight")
  assert os.path.exists(os.path.join(workdir, "samples", "step_0000060.png"))
  images = train.sample_mode(config, workdir)
  assert images.shape == (config.sample.num_samples, 32, 32, 1)
  assert np.all(np.abs(images) <= 1.0)
