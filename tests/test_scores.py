"""The detector's score functions (genjax.detect.scores) against numpy/scipy."""

import jax
import numpy as np
import pytest
import scipy.ndimage

from configs import base
from genjax import anomaly
from genjax.detect import scores
from genjax.methods import Method


def _options(**fields):
  config = base.get_base_config("smoke")
  config.anomaly.update(fields)
  return anomaly.anomaly_options(config)


def _images(seed=0, shape=(3, 12, 10, 1)):
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, shape).astype(np.float32)
  brain = np.zeros_like(images)
  brain[:, 1:11, 2:9] = 1.0
  return images, brain


def test_mahalanobis_matches_numpy_on_hand_made_reconstructions():
  x = np.array([0.5, -0.2, 0.0, 0.9], np.float32).reshape(1, 2, 2, 1)
  # Three draws per pixel, written out by hand.
  r = np.array([[0.1, -0.2, 0.3, 0.9],
                [0.3, -0.2, -0.3, 0.5],
                [0.2, -0.2, 0.0, 0.7]], np.float32).reshape(3, 1, 2, 2, 1)
  eps = 1e-3
  got = np.asarray(scores.mahalanobis(x, r, eps))
  mu = r.mean(axis=0)
  var = ((r - mu) ** 2).sum(axis=0) / (3 - 1)
  np.testing.assert_allclose(got, np.sqrt((x - mu) ** 2 / (var + eps)),
                             rtol=1e-5, atol=1e-5)
  # Pixel 0: mean 0.2, variance 0.01 -> 0.3 / sqrt(0.011).
  assert got[0, 0, 0, 0] == pytest.approx(0.3 / np.sqrt(0.011), rel=1e-5)
  # Pixel 1: every draw equals x, so 0 however small eps is.
  assert got[0, 0, 1, 0] == pytest.approx(0.0, abs=1e-5)
  with pytest.raises(ValueError, match="2 reconstructions"):
    scores.mahalanobis(x, r[:1], eps)


def test_mahalanobis_score_fn_uses_the_draws_and_the_eroded_brain():
  images, brain = _images()
  noise = lambda key: 0.2 * jax.random.normal(key, images.shape)
  method = Method(None, None, None, lambda s, x, rng: x * 0.8 + noise(rng))
  opts = _options(score="mahalanobis", num_reconstructions=4,
                  mahalanobis_eps=1e-2, histogram_max=20.0, median_filter=3,
                  erode_brain=1, slice_score="mean")
  rng = jax.random.key(7)
  out = jax.jit(scores.make_score_fn(method, opts))(None, images, brain, rng)
  draws = np.stack([images * 0.8 + np.asarray(noise(k))
                    for k in jax.random.split(rng, 4)])
  m = np.abs(images - draws.mean(0)) / np.sqrt(draws.var(0, ddof=1) + 1e-2)
  eroded = np.stack([scipy.ndimage.binary_erosion(b[..., 0] > 0.5)
                     for b in brain])[..., None].astype(np.float32)
  want = eroded * scipy.ndimage.median_filter(eroded * m, size=(1, 3, 3, 1),
                                              mode="reflect")
  np.testing.assert_allclose(out["residual"], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["reconstruction"], draws.mean(0), atol=1e-5)
  # 'mean' divides by the eroded brain's area.
  np.testing.assert_allclose(out["slice_score"],
                             want.sum((1, 2, 3)) / eroded.sum((1, 2, 3)),
                             rtol=1e-5)


def test_hook_with_rng_gets_the_draws_key_and_may_replace_the_reconstruction():
  images, brain = _images(1)
  def hook(state, x, recon, rng):
    del state, recon
    pixel = jax.random.uniform(rng, x.shape)
    return {"pixel": pixel, "reconstruction": x + pixel}

  method = Method(None, None, None, lambda s, x, rng: x * 0.0 + 5.0,
                  anomaly_score=hook)
  opts = _options(num_reconstructions=2, median_filter=1)
  rng = jax.random.key(3)
  out = jax.jit(scores.make_score_fn(method, opts))(None, images, brain, rng)
  pix = [np.asarray(jax.random.uniform(k, images.shape))
         for k in jax.random.split(rng, 2)]
  np.testing.assert_allclose(out["residual"], brain * np.mean(pix, 0),
                             atol=1e-6)
  np.testing.assert_allclose(out["reconstruction"],
                             images + np.mean(pix, 0), atol=1e-6)


def test_bad_score_options_name_the_field():
  with pytest.raises(ValueError, match="anomaly.score='ssim'"):
    _options(score="ssim")
  with pytest.raises(ValueError, match="num_reconstructions >= 2"):
    _options(score="mahalanobis", histogram_max=100.0)
  with pytest.raises(ValueError, match="histogram_max=64"):
    _options(score="mahalanobis", num_reconstructions=2)
  with pytest.raises(ValueError, match="erode_brain=-1"):
    _options(erode_brain=-1)
  with pytest.raises(ValueError, match="min_component=-3"):
    _options(min_component=-3)


def test_network_calls_default_and_stated():
  opts = _options(num_reconstructions=3)
  plain = Method(None, None, None, lambda s, x, rng: x)
  assert scores.network_calls(plain, opts)[0] == 3

  def reconstruct(s, x, rng):
    return x
  reconstruct.network_calls = 7
  assert scores.network_calls(Method(None, None, None, reconstruct),
                              opts) == (21, "stated by the method's "
                                        "reconstruct")
