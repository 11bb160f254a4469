"""Realism and diversity of synthesised lesions (NumPy/SciPy).

A lesion-conditioned generator (configs/lesion_ddpm.py, configs/lesion_vae.py)
is asked for a lesion where a mask says. Whether the slice as a whole looks
real is a distance between feature distributions (genjax.metrics.distribution);
these functions look at the lesion itself:

  lesion_contrast    how the lesion stands out from the tissue around it: the
                     mean intensity inside the mask minus the mean of a ring
                     just outside it (inside the brain);
  visible_fraction   the share of generated lesions at least as conspicuous
                     as most real ones (sign-aware: hyperintense stroke on
                     FLAIR, hypointense on T1);
  region_diversity   how much several draws for ONE mask differ inside it (a
                     generator that ignores its noise paints the same lesion
                     every time: 0).

Images are genjax's normalised intensities in [-1, 1] with background -1;
masks are {0, 1}. Everything is float64 on the host.
"""

import itertools

import numpy as np
import scipy.ndimage

# A pixel is brain (not background) above this: background is exactly -1.
BACKGROUND_LEVEL = -1.0 + 1e-3


def _slices(array, name):
  """[N, H, W] or [N, H, W, 1] -> [N, H, W] (one channel only)."""
  array = np.asarray(array)
  if array.ndim == 4:
    if array.shape[-1] != 1:
      raise ValueError(f"{name}: one channel expected, got shape "
                       f"{array.shape}.")
    array = array[..., 0]
  if array.ndim != 3:
    raise ValueError(f"{name}: expected [N, H, W] or [N, H, W, 1], got shape "
                     f"{array.shape}.")
  return array


def lesion_contrast(images, masks, brains=None, ring=3):
  """Per slice: mean intensity inside the lesion, around it, and the difference.

  The ring around a lesion is its mask dilated `ring` times with
  `scipy.ndimage.binary_dilation` (default structure: the 4-neighbourhood,
  so the ring is `ring` pixels wide in city-block distance), minus the mask,
  restricted to the brain: background pixels next to a lesion at the brain's
  edge are not tissue to compare it with. The inside mean is over every mask
  pixel.

  Args:
    images: [N, H, W] or [N, H, W, 1] intensities.
    masks: the same shape; > 0.5 is lesion.
    brains: the same shape, > 0.5 is brain; None: every pixel of the image
      above -1 + 1e-3 (genjax's background is exactly -1). For generated
      slices this is the brain the generator drew.
    ring: width of the ring in dilation iterations (>= 1).

  Returns:
    {'inside': [N], 'ring': [N], 'contrast': [N] = inside - ring} float64.
    A slice with an empty mask has NaN everywhere; a slice whose ring is
    empty (the dilation adds no brain pixel, e.g. a mask covering the whole
    brain) has a NaN ring and contrast.

  Raises:
    ValueError: shapes that differ or are not slices; ring < 1.
  """
  images = _slices(images, "lesion_contrast (images)").astype(np.float64)
  masks = _slices(masks, "lesion_contrast (masks)") > 0.5
  if brains is None:
    brains = images > BACKGROUND_LEVEL
  else:
    brains = _slices(brains, "lesion_contrast (brains)") > 0.5
  if not images.shape == masks.shape == brains.shape:
    raise ValueError(f"lesion_contrast: shapes differ: images {images.shape}, "
                     f"masks {masks.shape}, brains {brains.shape}.")
  if int(ring) != ring or ring < 1:
    raise ValueError(f"lesion_contrast: ring={ring!r} must be an integer "
                     ">= 1.")
  n = len(images)
  inside, around = np.full(n, np.nan), np.full(n, np.nan)
  for i in range(n):
    if not masks[i].any():
      continue
    inside[i] = images[i][masks[i]].mean()
    band = (scipy.ndimage.binary_dilation(masks[i], iterations=int(ring))
            & ~masks[i] & brains[i])
    if band.any():
      around[i] = images[i][band].mean()
  return {"inside": inside, "ring": around, "contrast": inside - around}


def visible_fraction(contrast_generated, contrast_real, percentile=10):
  """The share of generated lesions as conspicuous as most real ones.

  Conspicuity is the contrast times the sign of the real lesions' median
  contrast (hyperintense lesions: +1; hypointense: -1; a median of exactly
  0 counts as +1), so that more conspicuous is larger either way. The bar is
  the `percentile`-th percentile of the real conspicuities (numpy's linear
  interpolation): 100 - `percentile` % of the real lesions reach it (the
  weakest `percentile` % do not). The result is the fraction of generated
  lesions whose conspicuity is >= the bar; applied to real lesions it is
  about 1 - percentile / 100.

  Args:
    contrast_generated: [N] contrasts (`lesion_contrast`'s 'contrast') of
      generated lesions; NaN entries (no mask, no ring) are left out.
    contrast_real: [M] contrasts of real lesions; NaN entries left out.
    percentile: in [0, 100].

  Returns:
    A float in [0, 1]; NaN when either set has no finite contrast.
  """
  if not 0 <= percentile <= 100:
    raise ValueError(f"visible_fraction: percentile={percentile!r} must be "
                     "in [0, 100].")
  generated = np.asarray(contrast_generated, np.float64).ravel()
  real = np.asarray(contrast_real, np.float64).ravel()
  generated, real = generated[np.isfinite(generated)], real[np.isfinite(real)]
  if not len(generated) or not len(real):
    return float("nan")
  sign = -1.0 if np.median(real) < 0 else 1.0
  bar = np.percentile(sign * real, percentile)
  return float(np.mean(sign * generated >= bar))


def region_diversity(draws, mask):
  """Mean over pairs of draws of their RMS difference inside one mask.

  Args:
    draws: [K, H, W] or [K, H, W, 1], K >= 2 images generated for the same
      mask (different noise).
    mask: [H, W] or [H, W, 1], > 0.5 is lesion.

  Returns:
    mean over the K (K - 1) / 2 pairs i < j of
    sqrt(mean over mask pixels of (draw_i - draw_j)^2), a float (same units
    as the images; 0 when every draw is the same inside the mask); NaN for
    an empty mask.

  Raises:
    ValueError: fewer than two draws, or shapes that do not match.
  """
  draws = _slices(draws, "region_diversity (draws)").astype(np.float64)
  mask = np.asarray(mask)
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  mask = mask > 0.5
  if mask.shape != draws.shape[1:]:
    raise ValueError(f"region_diversity: mask of shape {mask.shape} for "
                     f"draws of shape {draws.shape}.")
  if len(draws) < 2:
    raise ValueError(f"region_diversity: needs at least 2 draws, got "
                     f"{len(draws)}.")
  if not mask.any():
    return float("nan")
  inside = draws[:, mask]  # [K, P]
  return float(np.mean([np.sqrt(np.mean((inside[i] - inside[j]) ** 2))
                        for i, j in itertools.combinations(range(len(inside)),
                                                           2)]))
