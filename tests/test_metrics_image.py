"""genjax.metrics.image against scikit-image, scipy and closed forms.

Boundary handling: scikit-image filters the whole image with reflected
borders but averages SSIM only over pixels >= (win_size - 1) // 2 from the
border; genjax computes exactly those valid windows. So the means are
compared directly and the maps on scikit-image's interior crop.
"""

import numpy as np
import pytest
import scipy.ndimage
from skimage import draw
from skimage import metrics as skm

from genjax.metrics import image

SSIM_KW = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def _structured(rng, n, size=32):
  """Phantom-like slices in [-1, 1]: ellipses of different grey levels."""
  out = np.full((n, size, size, 1), -1.0, np.float32)
  for b in range(n):
    for _ in range(4):
      r, c = rng.integers(size // 4, 3 * size // 4, 2)
      rr, cc = draw.ellipse(r, c, rng.integers(3, size // 3), rng.integers(3, size // 3),
                            shape=(size, size))
      out[b, rr, cc, 0] = rng.uniform(-0.8, 1.0)
  return scipy.ndimage.gaussian_filter(out, (0, 0.7, 0.7, 0)).astype(np.float32)


def _f64(a):
  # References run in float64, so the tolerance measures genjax's float32 error.
  return np.asarray(a, np.float64)


def _pair(kind, seed=0, n=3, size=32):
  rng = np.random.default_rng(seed)
  if kind == 'random':
    x = rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32)
  else:
    x = _structured(rng, n, size)
  # A degraded copy: blur + noise, clipped to the data range.
  y = scipy.ndimage.gaussian_filter(x, (0, 1.0, 1.0, 0)) + 0.1 * rng.standard_normal(x.shape)
  return x, np.clip(y, -1, 1).astype(np.float32)


@pytest.mark.parametrize('kind', ['random', 'structured'])
@pytest.mark.parametrize('data_range', [2.0, 1.0])
def test_ssim_matches_skimage(kind, data_range):
  x, y = _pair(kind)
  ours = np.asarray(image.ssim(x, y, data_range=data_range))
  ref = [skm.structural_similarity(_f64(x[i, ..., 0]), _f64(y[i, ..., 0]),
                                   data_range=data_range, **SSIM_KW) for i in range(len(x))]
  np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_ssim_map_matches_skimage_interior():
  x, y = _pair('structured', seed=1, size=40)
  x, y = x[:, :, :36], y[:, :, :36]  # Non-square.
  m = np.asarray(image.ssim_map(x, y, data_range=2.0))
  assert m.shape == (3, 30, 26)
  for i in range(3):
    _, full = skm.structural_similarity(_f64(x[i, ..., 0]), _f64(y[i, ..., 0]), data_range=2.0,
                                        full=True, **SSIM_KW)
    # Single pixels in flat regions carry the float32 round-off of
    # E[x^2] - E[x]^2 relative to C2 = 0.0036 (a few 1e-5); the means agree
    # to 2e-5 (above). A wrong window or crop is off by > 1e-2.
    np.testing.assert_allclose(m[i], full[5:-5, 5:-5], atol=1e-4)
    np.testing.assert_allclose(m[i].mean(), full[5:-5, 5:-5].mean(), atol=2e-5)


def test_ssim_multichannel_matches_skimage():
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32)
  y = np.clip(x + 0.2 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  ours = np.asarray(image.ssim(x, y, data_range=2.0))
  ref = [skm.structural_similarity(_f64(x[i]), _f64(y[i]), data_range=2.0, channel_axis=-1,
                                   **SSIM_KW) for i in range(2)]
  np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_ssim_smaller_window_matches_reference():
  # skimage's Gaussian SSIM always uses 11 taps, so a 7-tap window is checked
  # against the single-scale case of the independent reference below.
  x, y = _pair('structured', seed=9, n=2)
  ours = np.asarray(image.ssim(x, y, data_range=2.0, win_size=7))
  ref = [_reference_ms_ssim(x[i, ..., 0], y[i, ..., 0], 2.0, (1.0,), win_size=7)
         for i in range(2)]
  np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_ssim_masked_mean_is_over_mask_centres():
  x, y = _pair('structured', seed=3)
  mask = np.zeros(x.shape, bool)
  mask[0, 8:20, 6:30] = True
  mask[1, 2:30, 2:30] = True  # Reaches into the 5-px border: those centres drop out.
  mask[2, 15:17, 15:17] = True
  ours = np.asarray(image.ssim(x, y, data_range=2.0, mask=mask))
  for i in range(3):
    _, full = skm.structural_similarity(_f64(x[i, ..., 0]), _f64(y[i, ..., 0]), data_range=2.0,
                                        full=True, **SSIM_KW)
    inside = mask[i, ..., 0].copy()
    inside[:5], inside[-5:], inside[:, :5], inside[:, -5:] = False, False, False, False
    np.testing.assert_allclose(ours[i], full[inside].mean(), atol=2e-5)
  # An empty mask is undefined: NaN, not a number.
  assert np.isnan(image.ssim(x, y, data_range=2.0, mask=np.zeros_like(mask))).all()


def test_ssim_rejects_images_smaller_than_window():
  x = np.zeros((1, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match='smaller than the 11-px window'):
    image.ssim(x, x, data_range=2.0)


def test_psnr_matches_skimage():
  x, y = _pair('structured', seed=4)
  ours = np.asarray(image.psnr(x, y, data_range=2.0))
  ref = [skm.peak_signal_noise_ratio(_f64(x[i]), _f64(y[i]), data_range=2.0) for i in range(3)]
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  mask = x > -0.9
  ours = np.asarray(image.psnr(x, y, data_range=2.0, mask=mask))
  ref = [skm.peak_signal_noise_ratio(_f64(x[i][mask[i]]), _f64(y[i][mask[i]]), data_range=2.0)
         for i in range(3)]
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  assert np.isinf(image.psnr(x, x, data_range=2.0)).all()


# --- MS-SSIM ------------------------------------------------------------------


def _reference_ms_ssim(x, y, data_range, weights, win_size=11, sigma=1.5):
  """Wang et al. 2003, from the paper, for one [H, W] pair (float64).

  Per scale: Gaussian-window local statistics (scipy, reflected borders,
  cropped to full windows), the contrast-structure term cs; the coarsest
  scale uses the full SSIM (luminance x cs). Between scales: low-pass with a
  2x2 box and subsample by 2. Scales whose image is smaller than the window
  are dropped and the weights renormalised (genjax's documented rule).
  """
  x, y = x.astype(np.float64), y.astype(np.float64)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  pad = (win_size - 1) // 2
  truncate = pad / sigma
  weights = [w for j, w in enumerate(weights) if min(x.shape) // 2 ** j >= win_size]
  weights = np.asarray(weights) / np.sum(weights)
  result = 1.0
  for j, w in enumerate(weights):
    f = lambda a: scipy.ndimage.gaussian_filter(a, sigma, truncate=truncate)[pad:-pad, pad:-pad]
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    if j == len(weights) - 1:
      cs = cs * (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
    result *= max(cs.mean(), 0.0) ** w
    h, wd = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
    y = y[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
  return result


@pytest.mark.parametrize('size,win_size,scales', [(64, 11, 3), (32, 11, 2), (32, 7, 3),
                                                   (176, 11, 5)])
def test_ms_ssim_matches_reference(size, win_size, scales):
  assert image.ms_ssim_num_scales(size, win_size) == scales
  x, y = _pair('structured', seed=5, n=2, size=size)
  ours = np.asarray(image.ms_ssim(x, y, data_range=2.0, win_size=win_size))
  ref = [_reference_ms_ssim(x[i, ..., 0], y[i, ..., 0], 2.0, image.MS_SSIM_WEIGHTS, win_size)
         for i in range(2)]
  np.testing.assert_allclose(ours, ref, atol=5e-5)
  if win_size == 11:
    # One scale is plain SSIM (skimage), which also checks the reference.
    one = np.asarray(image.ms_ssim(x, y, data_range=2.0, weights=(1.0,)))
    ref_ssim = [skm.structural_similarity(_f64(x[i, ..., 0]), _f64(y[i, ..., 0]),
                                          data_range=2.0, **SSIM_KW) for i in range(2)]
    np.testing.assert_allclose(one, ref_ssim, atol=2e-5)
    np.testing.assert_allclose(
        [_reference_ms_ssim(x[i, ..., 0], y[i, ..., 0], 2.0, (1.0,)) for i in range(2)],
        ref_ssim, atol=1e-10)


def test_ms_ssim_identity_and_degradation():
  x, y = _pair('structured', seed=6, n=2, size=64)
  np.testing.assert_allclose(image.ms_ssim(x, x, data_range=2.0), 1.0, atol=1e-6)
  noisier = np.clip(y + 0.3 * np.random.default_rng(0).standard_normal(y.shape), -1, 1)
  assert (np.asarray(image.ms_ssim(x, noisier, data_range=2.0))
          < np.asarray(image.ms_ssim(x, y, data_range=2.0))).all()


def test_pairwise_ms_ssim():
  x, _ = _pair('structured', seed=7, n=4, size=32)
  ours = image.pairwise_ms_ssim(x, data_range=2.0, batch_size=4)
  pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
  ref = np.mean([_reference_ms_ssim(x[i, ..., 0], x[j, ..., 0], 2.0, image.MS_SSIM_WEIGHTS)
                 for i, j in pairs])
  np.testing.assert_allclose(ours, ref, atol=5e-5)
  # Identical images (a collapsed generator) score 1.
  same = np.repeat(x[:1], 3, axis=0)
  np.testing.assert_allclose(image.pairwise_ms_ssim(same, data_range=2.0), 1.0, atol=1e-6)
  # Subsampled pairs: reproducible for a seed, and a mean of real pair values.
  all_values = [_reference_ms_ssim(x[i, ..., 0], x[j, ..., 0], 2.0, image.MS_SSIM_WEIGHTS)
                for i, j in pairs]
  sub = image.pairwise_ms_ssim(x, data_range=2.0, max_pairs=2, rng=3, batch_size=4)
  assert sub == image.pairwise_ms_ssim(x, data_range=2.0, max_pairs=2, rng=3, batch_size=4)
  assert any(abs(sub - (a + b) / 2) < 5e-5
             for k, a in enumerate(all_values) for b in all_values[k + 1:])
  with pytest.raises(ValueError, match='N >= 2'):
    image.pairwise_ms_ssim(x[:1], data_range=2.0)


# --- Sharpness and spectra ----------------------------------------------------


def test_sharpness_ramp_and_scipy_sobel():
  # A ramp with slope (a, b) per pixel has gradient magnitude sqrt(a^2 + b^2).
  rows, cols = np.mgrid[0:16, 0:20].astype(np.float32)
  ramp = (0.03 * rows - 0.04 * cols)[None, :, :, None]
  np.testing.assert_allclose(image.sharpness(ramp), [0.05], rtol=1e-5)
  x, _ = _pair('random', seed=8, n=2)
  ours = np.asarray(image.sharpness(x))
  ref = []
  for i in range(2):
    # scipy's Sobel is the unnormalised [1,2,1] x [-1,0,1]: 8x ours.
    gx = scipy.ndimage.sobel(x[i, ..., 0].astype(np.float64), axis=1)[1:-1, 1:-1] / 8
    gy = scipy.ndimage.sobel(x[i, ..., 0].astype(np.float64), axis=0)[1:-1, 1:-1] / 8
    ref.append(np.hypot(gx, gy).mean())
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  mask = np.zeros(x.shape, bool)
  mask[:, 0:10, 5:20] = True  # Row 0 is border: not counted.
  gx = scipy.ndimage.sobel(x[0, ..., 0].astype(np.float64), axis=1) / 8
  gy = scipy.ndimage.sobel(x[0, ..., 0].astype(np.float64), axis=0) / 8
  np.testing.assert_allclose(image.sharpness(x, mask=mask)[0],
                             np.hypot(gx, gy)[1:10, 5:20].mean(), rtol=1e-5)
  # Blur lowers it.
  blurred = scipy.ndimage.gaussian_filter(x, (0, 1.5, 1.5, 0))
  assert (np.asarray(image.sharpness(blurred)) < ours).all()


def test_high_frequency_energy_closed_form():
  # Cosines on exact FFT bins: energy splits as their squared amplitudes.
  n = 32
  rows, cols = np.mgrid[0:n, 0:n]
  low = np.cos(2 * np.pi * 4 / n * cols)  # 0.125 cycles/px < 0.25
  high = np.cos(2 * np.pi * 12 / n * rows)  # 0.375 cycles/px > 0.25
  x = np.stack([low, high, low + 0.5 * high, 3.0 + low])[..., None].astype(np.float32)
  ours = np.asarray(image.high_frequency_energy(x, cutoff=0.25))
  np.testing.assert_allclose(ours, [0.0, 1.0, 0.25 / 1.25, 0.0], atol=1e-5)
  # A diagonal frequency counts by its radius: (8, 8)/32 -> 0.354 cycles/px.
  diag = np.cos(2 * np.pi * 8 / n * (rows + cols))[None, ..., None].astype(np.float32)
  np.testing.assert_allclose(image.high_frequency_energy(diag, cutoff=0.3), [1.0], atol=1e-5)
  np.testing.assert_allclose(image.high_frequency_energy(diag, cutoff=0.4), [0.0], atol=1e-5)
  assert float(image.high_frequency_energy(np.ones((1, 8, 8, 1), np.float32))[0]) == 0.0
