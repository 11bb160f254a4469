"""Image-quality metrics in JAX: SSIM, MS-SSIM, PSNR, sharpness, spectra.

All functions take batches of images `[B, H, W, C]` (genjax slices are
`[B, H, W, 1]` in [-1, 1], so `data_range=2.0`) and return one number per
image, `[B]`. They are pure jnp code and jit-compiled (window sizes and
weights are static arguments), so they run on whatever device holds the
images; results are float32.

Conventions, chosen to match scikit-image (the tests compare against it):

* SSIM uses a normalised Gaussian window (`sigma=1.5`, 11 taps, like
  `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)`) and population (biased) local variances.
  Only *valid* windows are used: the map is `[B, H - w + 1, W - w + 1]` for
  window size `w`. scikit-image filters the whole image with reflected
  borders but then averages only the pixels at least `(w - 1) // 2` from the
  border, which are exactly these valid windows, so the means agree.
* Several channels: the SSIM map is averaged over channels (scikit-image's
  `channel_axis` does the same).
* Masks are `[B, H, W, 1]` (or `[B, H, W]`) with nonzero = inside. A masked
  mean over a valid-window map counts the window centred on every mask
  pixel that lies at least `(w - 1) // 2` pixels from the border; windows near
  the mask's edge still see some outside pixels (that is what a window is).
  A mask with no such pixel gives NaN, never a made-up number.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003.

_HIGHEST = jax.lax.Precision.HIGHEST  # No TF32/bf16 shortcuts on GPU/TPU.


def _gaussian_window(win_size: int, sigma: float) -> np.ndarray:
  """Normalised 1D Gaussian taps, the same as scipy.ndimage's kernel."""
  radius = (win_size - 1) / 2
  taps = np.exp(-0.5 * ((np.arange(win_size) - radius) / sigma) ** 2)
  return (taps / taps.sum()).astype(np.float32)


def _filter_valid(x: Array, taps_h: np.ndarray, taps_w: np.ndarray) -> Array:
  """Separable per-channel correlation, 'valid' region only.

  Args:
    x: [B, H, W, C].
    taps_h: [kh] taps along H.
    taps_w: [kw] taps along W.

  Returns:
    [B, H - kh + 1, W - kw + 1, C].
  """
  c = x.shape[-1]
  dn = ('NHWC', 'HWIO', 'NHWC')
  kh = jnp.tile(jnp.asarray(taps_h).reshape(-1, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(jnp.asarray(taps_w).reshape(1, -1, 1, 1), (1, 1, 1, c))
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), 'VALID', dimension_numbers=dn,
                                   feature_group_count=c, precision=_HIGHEST)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), 'VALID', dimension_numbers=dn,
                                      feature_group_count=c, precision=_HIGHEST)


def _check_pair(x: Array, y: Array, name: str):
  if x.ndim != 4 or x.shape != y.shape:
    raise ValueError(f'{name}: needs two [B, H, W, C] batches of the same shape, '
                     f'got {x.shape} and {y.shape}.')


def _ssim_and_cs(x, y, data_range, win_size, sigma, k1, k2):
  """Per-channel SSIM and contrast-structure maps over valid windows.

  Returns:
    (ssim, cs), each [B, H - win_size + 1, W - win_size + 1, C] float32.
  """
  if win_size % 2 != 1 or win_size < 3:
    raise ValueError(f'SSIM: win_size must be odd and >= 3, got {win_size}.')
  if min(x.shape[1:3]) < win_size:
    raise ValueError(f'SSIM: images of {x.shape[1]}x{x.shape[2]} px are smaller than '
                     f'the {win_size}-px window; pass a smaller win_size.')
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  # Variances are E[x^2] - E[x]^2: centring both images on one per-image
  # constant first leaves them unchanged but avoids float32 cancellation
  # (a [-1, 1] slice's background is far from 0).
  shift = 0.5 * (x.mean(axis=(1, 2), keepdims=True) + y.mean(axis=(1, 2), keepdims=True))
  x, y = x - shift, y - shift
  taps = _gaussian_window(win_size, sigma)
  stats = _filter_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), taps, taps)
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(stats, 5, axis=-1)
  var_x = e_xx - mu_x * mu_x
  var_y = e_yy - mu_y * mu_y
  cov = e_xy - mu_x * mu_y
  mu_x, mu_y = mu_x + shift, mu_y + shift
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  cs = (2 * cov + c2) / (var_x + var_y + c2)
  luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
  return luminance * cs, cs


def _masked_mean(values: Array, mask: Array | None, crop: int) -> Array:
  """Mean of [B, H', W'] values over the pixels of a [B, H, W(, 1)] mask.

  Entry (i, j) of `values` belongs to pixel (i + crop, j + crop).
  """
  if mask is None:
    return values.mean(axis=(1, 2))
  if mask.ndim == 4:
    if mask.shape[-1] != 1:
      raise ValueError(f'mask: expected [B, H, W, 1] or [B, H, W], got {mask.shape}.')
    mask = mask[..., 0]
  h, w = values.shape[1:3]
  if mask.shape != (values.shape[0], h + 2 * crop, w + 2 * crop):
    raise ValueError(f'mask: shape {mask.shape} does not match the images '
                     f'({values.shape[0]} x {h + 2 * crop} x {w + 2 * crop}).')
  inside = (mask[:, crop:crop + h, crop:crop + w] > 0).astype(jnp.float32)
  count = inside.sum(axis=(1, 2))
  total = (values * inside).sum(axis=(1, 2))
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


@functools.partial(jax.jit, static_argnames=('win_size', 'sigma', 'k1', 'k2'))
def ssim_map(x: Array, y: Array, *, data_range: float, win_size: int = 11,
             sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Array:
  """The local SSIM of Wang et al. (2004), Gaussian window, valid region.

  Args:
    x: [B, H, W, C] images.
    y: [B, H, W, C] images (the order does not matter: SSIM is symmetric).
    data_range: max - min of the intensity scale (2.0 for [-1, 1]).
    win_size: odd window size; 11 with sigma 1.5 is the standard window.
    sigma: standard deviation of the Gaussian window, pixels.
    k1: luminance constant, C1 = (k1 * data_range)^2.
    k2: contrast constant, C2 = (k2 * data_range)^2.

  Returns:
    [B, H - win_size + 1, W - win_size + 1] float32, averaged over channels;
    entry (i, j) is the window centred on pixel (i + r, j + r), r = win_size // 2.
  """
  _check_pair(x, y, 'ssim_map')
  s, _ = _ssim_and_cs(x, y, data_range, win_size, sigma, k1, k2)
  return s.mean(axis=-1)


@functools.partial(jax.jit, static_argnames=('win_size', 'sigma', 'k1', 'k2'))
def ssim(x: Array, y: Array, *, data_range: float, mask: Array | None = None,
         win_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> Array:
  """Mean SSIM per image (whole slice, or inside a mask).

  Args:
    x: [B, H, W, C] images.
    y: [B, H, W, C] images.
    data_range: max - min of the intensity scale (2.0 for [-1, 1]).
    mask: optional [B, H, W, 1] (or [B, H, W]) mask, nonzero = inside. The
      mean is over the windows centred on mask pixels; mask pixels closer
      than win_size // 2 to the border have no valid window and are not
      counted (brain masks do not reach the border). An empty mask gives NaN.
    win_size, sigma, k1, k2: see `ssim_map`.

  Returns:
    [B] float32 mean SSIM.
  """
  m = ssim_map(x, y, data_range=data_range, win_size=win_size, sigma=sigma, k1=k1, k2=k2)
  return _masked_mean(m, mask, win_size // 2)


def ms_ssim_num_scales(size: int, win_size: int = 11, max_scales: int = 5) -> int:
  """How many scales MS-SSIM uses on images whose smaller side is `size`.

  Scale j (0-based) sees the image downsampled 2^j times; it is used only
  if its smaller side is still >= win_size. E.g. with an 11-px window: 5
  scales from 176 px up, 3 at 64 px, 2 at 32 px; with a 7-px window 3 at 32 px.
  """
  scales = 0
  while scales < max_scales and size // 2 ** scales >= win_size:
    scales += 1
  return scales


def _downsample(x: Array) -> Array:
  """2x2 average pooling (odd trailing rows/columns are dropped)."""
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim(x: Array, y: Array, *, data_range: float,
            weights: tuple[float, ...] = MS_SSIM_WEIGHTS, win_size: int = 11,
            sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Array:
  """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003).

  MS-SSIM = l_M^{w_M} * prod_{j=1..M} cs_j^{w_j}, where cs_j is the mean
  contrast-structure term at scale j and the coarsest scale M contributes
  its mean full SSIM (luminance included), as in the reference MATLAB code,
  tf.image.ssim_multiscale and pytorch_msssim. Between scales the images are
  2x2 average-pooled. Negative per-scale means are clipped to 0 before the
  fractional powers (as TF and pytorch_msssim do), so the result is in [0, 1].

  Small images: the standard 5 scales with an 11-px window need >= 176 px.
  Here the coarsest scales that would be smaller than the window are
  dropped and the remaining weights are renormalised to sum to 1 (see
  `ms_ssim_num_scales`: 3 scales at 64 px, 2 at 32 px with win_size=11).
  Pass a smaller `win_size` (e.g. 7) to keep more scales on 32-64 px slices;
  report the setting with the number, since values depend on it.

  Args:
    x: [B, H, W, C] images.
    y: [B, H, W, C] images.
    data_range: max - min of the intensity scale (2.0 for [-1, 1]).
    weights: per-scale exponents, finest first (a tuple: it is static).
    win_size, sigma, k1, k2: see `ssim_map`.

  Returns:
    [B] float32.
  """
  return _ms_ssim(x, y, data_range=data_range, weights=tuple(float(w) for w in weights),
                  win_size=win_size, sigma=sigma, k1=k1, k2=k2)


@functools.partial(jax.jit, static_argnames=('weights', 'win_size', 'sigma', 'k1', 'k2'))
def _ms_ssim(x, y, *, data_range, weights, win_size, sigma, k1, k2):
  _check_pair(x, y, 'ms_ssim')
  scales = ms_ssim_num_scales(min(x.shape[1:3]), win_size, len(weights))
  if scales == 0:
    raise ValueError(f'ms_ssim: images of {x.shape[1]}x{x.shape[2]} px are smaller '
                     f'than the {win_size}-px window; pass a smaller win_size.')
  w = np.asarray(weights[:scales], np.float64)
  w = (w / w.sum()).astype(np.float32)
  result = jnp.ones(x.shape[0], jnp.float32)
  for j in range(scales):
    s, cs = _ssim_and_cs(x, y, data_range, win_size, sigma, k1, k2)
    value = (s if j == scales - 1 else cs).mean(axis=(1, 2, 3))
    result = result * jnp.maximum(value, 0.0) ** w[j]
    if j < scales - 1:
      x, y = _downsample(x), _downsample(y)
  return result


@jax.jit
def psnr(x: Array, y: Array, *, data_range: float, mask: Array | None = None) -> Array:
  """Peak signal-to-noise ratio per image, 10 log10(data_range^2 / MSE).

  Args:
    x: [B, H, W, C] reference images.
    y: [B, H, W, C] images (PSNR is symmetric).
    data_range: max - min of the intensity scale (2.0 for [-1, 1]).
    mask: optional [B, H, W, 1] (or [B, H, W]) mask: the MSE is over mask
      pixels (all channels). An empty mask gives NaN.

  Returns:
    [B] float32 PSNR in dB; +inf for identical images (as scikit-image).
  """
  _check_pair(x, y, 'psnr')
  err = ((x.astype(jnp.float32) - y.astype(jnp.float32)) ** 2).mean(axis=-1)
  mse = _masked_mean(err, mask, 0)
  return 10.0 * jnp.log10(jnp.asarray(data_range, jnp.float32) ** 2 / mse)


# Sobel = [1, 2, 1]/4 smoothing x [1, 0, -1]/2 central difference, so the
# gradient of a ramp of slope a (intensity per pixel) is exactly a.
_SMOOTH = np.array([1.0, 2.0, 1.0], np.float32) / 4
_DIFF = np.array([1.0, 0.0, -1.0], np.float32) / 2


@jax.jit
def sharpness(x: Array, mask: Array | None = None) -> Array:
  """Mean Sobel gradient magnitude per image (intensity units per pixel).

  Blurry images (VAE samples) score lower than sharp ones; compare models
  against the same number on real slices. The Sobel filters are normalised so
  that a linear ramp of slope a scores |a|; they are applied to valid 3x3
  neighbourhoods only (no border effects), and channels are averaged.

  Args:
    x: [B, H, W, C] images.
    mask: optional [B, H, W, 1] (or [B, H, W]) mask: average over mask
      pixels that are not on the image border. An empty mask gives NaN.

  Returns:
    [B] float32.
  """
  if x.ndim != 4:
    raise ValueError(f'sharpness: needs [B, H, W, C] images, got {x.shape}.')
  x = x.astype(jnp.float32)
  # d/dW (columns) and d/dH (rows); the sign does not matter for the magnitude.
  gw = _filter_valid(x, _SMOOTH, _DIFF)
  gh = _filter_valid(x, _DIFF, _SMOOTH)
  magnitude = jnp.sqrt(gw * gw + gh * gh).mean(axis=-1)
  return _masked_mean(magnitude, mask, 1)


@functools.partial(jax.jit, static_argnames=('cutoff',))
def high_frequency_energy(x: Array, cutoff: float = 0.25) -> Array:
  """Fraction of an image's spectral energy above a radial frequency.

  The per-channel mean is removed first, so this is the fraction of the
  image's *variance* (Parseval) carried by spatial frequencies
  sqrt(fx^2 + fy^2) > cutoff, in cycles per pixel (0.5 = Nyquist along an
  axis; the default 0.25 is half of it). Blur lowers it. A constant image has
  no variance and scores 0.

  Args:
    x: [B, H, W, C] images.
    cutoff: radial frequency in cycles per pixel.

  Returns:
    [B] float32 in [0, 1].
  """
  if x.ndim != 4:
    raise ValueError(f'high_frequency_energy: needs [B, H, W, C] images, got {x.shape}.')
  x = x.astype(jnp.float32)
  x = x - x.mean(axis=(1, 2), keepdims=True)
  power = jnp.abs(jnp.fft.fft2(x, axes=(1, 2))) ** 2
  fy = np.fft.fftfreq(x.shape[1])[:, None]
  fx = np.fft.fftfreq(x.shape[2])[None, :]
  high = jnp.asarray(np.sqrt(fy ** 2 + fx ** 2) > cutoff, jnp.float32)[None, :, :, None]
  total = power.sum(axis=(1, 2, 3))
  above = (power * high).sum(axis=(1, 2, 3))
  return jnp.where(total > 0, above / jnp.where(total > 0, total, 1.0), 0.0)


def pairwise_ms_ssim(images, *, data_range: float, max_pairs: int = 1000,
                     rng: int | np.random.Generator = 0, batch_size: int = 64,
                     **kwargs) -> float:
  """Diversity: the mean MS-SSIM over distinct pairs of a set of images.

  Lower means more diverse (a mode-collapsed GAN scores near 1). All
  n(n-1)/2 pairs are used when there are at most `max_pairs`; otherwise
  `max_pairs` distinct pairs are drawn uniformly without replacement with
  `rng`, so the figure is reproducible.

  Args:
    images: [N, H, W, C] images, N >= 2 (numpy or jax).
    data_range: max - min of the intensity scale (2.0 for [-1, 1]).
    max_pairs: the most pairs evaluated.
    rng: seed or numpy Generator used to draw the pairs.
    batch_size: pairs per MS-SSIM call (bounds memory; one compile).
    **kwargs: passed to `ms_ssim` (weights, win_size, ...).

  Returns:
    The mean MS-SSIM, a Python float.
  """
  images = jnp.asarray(images)
  n = images.shape[0]
  if images.ndim != 4 or n < 2:
    raise ValueError(f'pairwise_ms_ssim: needs [N, H, W, C] images with N >= 2, '
                     f'got {images.shape}.')
  first, second = np.triu_indices(n, k=1)
  if len(first) > max_pairs:
    rng = np.random.default_rng(rng)
    chosen = np.sort(rng.choice(len(first), size=max_pairs, replace=False))
    first, second = first[chosen], second[chosen]
  values = []
  for start in range(0, len(first), batch_size):
    i, j = first[start:start + batch_size], second[start:start + batch_size]
    pad = batch_size - len(i) if len(first) > batch_size else 0
    # Pad the last chunk to the full batch so that every call has one shape.
    i_p, j_p = np.pad(i, (0, pad)), np.pad(j, (0, pad))
    out = ms_ssim(images[i_p], images[j_p], data_range=data_range, **kwargs)
    values.append(np.asarray(out)[:len(i)])
  return float(np.concatenate(values).astype(np.float64).mean())
