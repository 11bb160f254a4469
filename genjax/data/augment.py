"""On-device data augmentation, applied inside the jitted train step.

Geometric transforms (random resized crop, flips, elastic deformation) are
composed into one sampling grid per example and applied in one resampling,
with `jax.scipy.ndimage.map_coordinates`: the image is interpolated once (one
blur, not three), and the lesion and brain masks are sampled on exactly the
same grid, so they stay aligned with the image. dm-pix offers the pieces
(`pix.affine_transform`, `pix.elastic_deformation`) but each resamples on its
own and the elastic field is drawn inside it, so composing them would mean
resampling three times and re-deriving the field for the masks; the grid
here is a few lines and needs no extra dependency.

Photometric transforms (gamma, intensity scale/shift) then act on brain
intensities; the background stays -1.

`aug_config` (`config.augment`) is read in Python, so it is static under jit:
close over it (`functools.partial(augment_batch, aug_config=...)`), do not
pass it as a traced argument.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# Every example draws one vector of uniforms, whatever is switched on: one
# random op compiles much faster than one per parameter, and switching a
# transform on or off does not change what the others draw. These are the
# slots; the elastic field has its own key.
_UNIFORMS = ("crop_area", "crop_ratio", "crop_top", "crop_left", "flip_lr",
             "flip_ud", "gamma", "scale", "shift")
_MASK_KEYS = ("mask", "brain")


def _is_geometric(aug_config):
  return bool(aug_config.crop or aug_config.flip_lr or aug_config.flip_ud
              or aug_config.elastic)


def _is_photometric(aug_config):
  return bool(aug_config.gamma or aug_config.intensity)


# --- The sampling grid --------------------------------------------------------


def _between(u, low, high):
  """Maps u ~ U[0, 1) to U[low, high)."""
  return low + (high - low) * u


def _crop_grid(u, ys, xs, height, width, scale, ratio):
  """Maps output pixels into a random crop: a random resized crop.

  The crop keeps a fraction of the area drawn uniformly from `scale` with
  an aspect ratio (relative to the image's) log-uniform in `ratio`, at a
  uniform position; sides are clipped to the image.

  Args:
    u: dict of uniforms in [0, 1) (crop_area, crop_ratio, crop_top,
      crop_left).
    ys: float32 [H, W] row coordinates to map.
    xs: float32 [H, W] column coordinates to map.
    height: H.
    width: W.
    scale: (low, high) area fraction.
    ratio: (low, high) aspect ratio (width / height).

  Returns:
    (ys, xs) in the input image, each float32 [H, W].
  """
  area = _between(u["crop_area"], *scale)
  aspect = jnp.exp(_between(u["crop_ratio"], math.log(ratio[0]),
                            math.log(ratio[1])))
  frac_h = jnp.minimum(jnp.sqrt(area / aspect), 1.0)
  frac_w = jnp.minimum(jnp.sqrt(area * aspect), 1.0)
  top = u["crop_top"] * (1.0 - frac_h) * height
  left = u["crop_left"] * (1.0 - frac_w) * width
  # Pixel centres of the output map onto pixel centres of the crop.
  return top + (ys + 0.5) * frac_h - 0.5, left + (xs + 0.5) * frac_w - 0.5


def _flip(u, coords, size):
  """Mirrors coordinates (x -> size - 1 - x) when u < 1/2."""
  return jnp.where(u < 0.5, size - 1.0 - coords, coords)


def _gaussian_matrix(size, sigma):
  """[size, size] row-normalised Gaussian smoothing operator (numpy, static)."""
  offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
  weights = np.exp(-0.5 * (offsets / sigma) ** 2)
  return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def elastic_displacement(rng, height, width, alpha, sigma):
  """A smooth random displacement field (Simard et al., 2003).

  White noise smoothed with a Gaussian of std `sigma` pixels (applied as two
  dense [H, H] and [W, W] matrix products: separable, exact, and cheap at
  these sizes), rescaled so the largest displacement is `alpha` pixels.
  Simard's alpha scales the smoothed noise instead, so its effect shrinks
  with sigma; here alpha means what `config.augment` says, pixels. Keep
  alpha / sigma below about 1 or the warp folds the image over itself.

  Args:
    rng: PRNG key.
    height: H.
    width: W.
    alpha: largest displacement, pixels.
    sigma: smoothness, pixels.

  Returns:
    float32 [2, H, W]: (dy, dx) in pixels.
  """
  noise = jax.random.normal(rng, (2, height, width))
  smooth = jnp.einsum("ij,cjk,lk->cil", _gaussian_matrix(height, sigma),
                      noise, _gaussian_matrix(width, sigma))
  peak = jnp.sqrt(jnp.max(jnp.sum(smooth**2, axis=0)))
  return alpha * smooth / jnp.maximum(peak, 1e-12)


def sampling_grid(rng, u, height, width, aug_config):
  """The input coordinates each output pixel reads, all transforms composed.

  Output pixel p is first displaced elastically, then mirrored, then mapped
  into the crop: the image is cropped, flipped and deformed, in that order.

  Args:
    rng: PRNG key of one example (for the elastic field).
    u: dict of the example's uniforms in [0, 1) (see `_UNIFORMS`).
    height: H.
    width: W.
    aug_config: `config.augment`.

  Returns:
    float32 [2, H, W]: (row, column) coordinates in the input image.
  """
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing="ij")
  if aug_config.elastic:
    dy, dx = elastic_displacement(
        rng, height, width, float(aug_config.elastic_alpha),
        float(aug_config.elastic_sigma))
    ys, xs = ys + dy, xs + dx
  if aug_config.flip_ud:
    ys = _flip(u["flip_ud"], ys, height)
  if aug_config.flip_lr:
    xs = _flip(u["flip_lr"], xs, width)
  if aug_config.crop:
    ys, xs = _crop_grid(u, ys, xs, height, width,
                        tuple(aug_config.crop_scale),
                        tuple(aug_config.crop_ratio))
  return jnp.stack([ys, xs])


def _warp(image, masks, coords):
  """Resamples the image and its masks on one grid, in one pass.

  Args:
    image: [H, W, C] in [-1, 1]; outside the input it reads -1.
    masks: dict of [H, W, 1] masks in {0, 1}; outside they read 0.
    coords: [2, H, W] input coordinates (`sampling_grid`).

  Returns:
    (image, masks) with the input dtypes; masks binary.
  """
  # One stacked resampling serves all channels (it is the costly op to
  # compile). Its fill value is static, hence 0 for all; the image's -1 fill
  # is added back through a channel of ones (1 inside, 0 outside), exactly
  # where no sample falls outside.
  stacked = jnp.concatenate(
      [image, jnp.ones_like(image[..., :1])]
      + [m.astype(image.dtype) for m in masks.values()], -1)
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(
      channel, [coords[0], coords[1]], order=1, mode="constant", cval=0.0)
  warped = jax.vmap(sample, in_axes=-1, out_axes=-1)(stacked)
  c = image.shape[-1]
  new_image = warped[..., :c] - (1.0 - warped[..., c:c + 1])
  # Linear then threshold: the mask edge is where the interpolated image
  # crosses the same level, so image and mask stay aligned and binary.
  new_masks = {k: (warped[..., c + 1 + i:c + 2 + i] >= 0.5).astype(m.dtype)
               for i, (k, m) in enumerate(masks.items())}
  return new_image.astype(image.dtype), new_masks


# --- Photometric transforms ---------------------------------------------------


def adjust_gamma(image, gamma):
  """Gamma on intensities mapped to [0, 1]: ((x + 1) / 2) ** gamma.

  Args:
    image: [H, W, C] in [-1, 1].
    gamma: scalar > 0.

  Returns:
    [H, W, C] in [-1, 1]; -1 (background) and 1 are fixed points.
  """
  unit = jnp.clip((image + 1.0) / 2.0, 0.0, 1.0)
  return 2.0 * unit**gamma - 1.0


# --- Per example and per batch ------------------------------------------------


def _augment_example(rng, image, masks, aug_config):
  """Augments one example.

  Args:
    rng: PRNG key.
    image: float [H, W, 1] in [-1, 1].
    masks: dict of float [H, W, 1] masks in {0, 1} ('mask', 'brain').
    aug_config: `config.augment`.

  Returns:
    (image, masks), same shapes and dtypes.
  """
  height, width = image.shape[:2]
  k_uniform, k_elastic = jax.random.split(rng)
  u = dict(zip(_UNIFORMS, jax.random.uniform(k_uniform, (len(_UNIFORMS),))))
  if _is_geometric(aug_config):
    coords = sampling_grid(k_elastic, u, height, width, aug_config)
    image, masks = _warp(image, masks, coords)
  brain = masks["brain"] > 0.5 if "brain" in masks else image > -1.0
  if aug_config.gamma:
    low, high = aug_config.gamma_range
    gamma = jnp.exp(_between(u["gamma"], math.log(low), math.log(high)))
    image = adjust_gamma(image, gamma).astype(image.dtype)
  if aug_config.intensity:
    scale = _between(u["scale"], *aug_config.scale_range)
    shift = _between(u["shift"], *aug_config.shift_range)
    scaled = jnp.clip(image * scale + shift, -1.0, 1.0)
    image = jnp.where(brain, scaled, image).astype(image.dtype)
  return image, masks


def augment_batch(rng: jax.Array, batch: dict, aug_config) -> dict:
  """Randomly augments a batch, independently per example.

  Args:
    rng: PRNG key; the same key gives the same augmentation.
    batch: image float32 [B, H, W, 1] in [-1, 1]; optional mask and brain
      float32 [B, H, W, 1] in {0, 1}, warped with the image. Other keys are
      passed through untouched. Without `brain`, the brain is image > -1.
    aug_config: `config.augment` (static: read in Python at trace time).

  Returns:
    A new dict with the same keys, shapes and dtypes; `batch` itself when
    every transform is switched off.
  """
  if not (_is_geometric(aug_config) or _is_photometric(aug_config)):
    return batch
  image = batch["image"]
  masks = {k: batch[k] for k in _MASK_KEYS if k in batch}
  rngs = jax.random.split(rng, image.shape[0])
  image, masks = jax.vmap(
      lambda r, x, m: _augment_example(r, x, m, aug_config))(rngs, image,
                                                              masks)
  return {**batch, "image": image, **masks}
