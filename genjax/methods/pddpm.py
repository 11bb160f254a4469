"""pDDPM: the patched diffusion model of Behrendt et al. (MIDL 2023).

"Patched Diffusion Models for Unsupervised Anomaly Detection in Brain MRI"
reformulates AnoDDPM's reconstruction as patch-wise inpainting: noise only a
patch of the slice, keep the rest (the context) clean, and let the network
estimate the healthy patch from its noised pixels and the clean context.

Training (`train_region`): each example gets ONE patch_size x patch_size
square at a uniformly random integer position; only its pixels are noised
(x_t = x0 elsewhere) and only they are scored (`losses.denoising_loss(...,
region=)`). The timestep is uniform over the whole schedule, as in the DDPM.

Reconstruction (`reconstruct_at`, one noise level): the slice is covered by
tiles, patch_size wide, at offsets 0, stride, 2 stride, ... per axis (plus
image_size - patch_size where the stride does not land on it, so the last
tile ends at the border: `tile_offsets`). For each tile the one-step x0
estimate is computed with only that tile noised to the level
(`samplers.one_step_x0(..., region=tile)`), the tile's own pixels are kept,
and where tiles overlap their estimates are averaged (`tile_weights` counts
the tiles covering each pixel). A pixel thus only ever comes from a tile
that noised it; the network sees every other pixel clean. All tiles run as
ONE network call of batch n_tiles x B (one compiled program), and every
tile uses the SAME key: a pixel gets the same noise in every tile that
covers it, so the estimates being averaged differ only by their context.
`reconstruct.network_calls` is n_tiles per level (9 at the defaults).

Config (configs/pddpm.py): config.pddpm.patch_size and patch_stride, None
meaning image_size // 2 and image_size // 4 (3 x 3 = 9 tiles at 32, 64 and
128 px); config.anomaly.sampler must be 'one_step'. The step-by-step samplers
keep the context known only by replacing it after each step with the image
noised to that step (RePaint-style `known`), so the network sees a NOISED
context, not the clean one it was trained with; pDDPM's premise is a clean
context, which only the one-step estimate gives.

What genjax does differently from the authors' code (FinnBehrendt/
patched-Diffusion-Models-UAD, configs/experiment/MIDL23_DDPM/
DDPM_patched.yaml):
  - the network, objective and loss are the genjax DDPM's (config.model,
    config.diffusion: eps prediction and L2 by default) where the authors
    use an OpenAI UNet predicting x0 with an L1 loss, on simplex noise
    (config.diffusion.noise / anomaly.noise='simplex' select it here);
  - training patches are drawn at any integer position, not from the fixed
    grid of the reconstruction tiles (their `grid_boxes`);
  - overlapping tiles are averaged (their `overlap` with `agg_overlap:
    avg`); their MIDL config leaves `overlap` off, tiling 96 px slices with
    48 px patches (patch_size = image_size // 2, as here);
  - the multi-t ensemble (config.anomaly.noise_levels) of the DDPM builder
    applies unchanged: each level is a full patched reconstruction.
`sample` is the DDPM's sampler from pure noise; a pDDPM network never sees a
fully noised slice in training (unless patch_size = image_size), so expect
poor samples: the method is meant for reconstruction (--mode=detect).

Memory: the one call of batch n_tiles x B holds n_tiles times the
activations of a plain one-step reconstruction; lower config.eval.batch_size
if a detection run does not fit.
"""

import jax
import jax.numpy as jnp
import numpy as np

from genjax.diffusion import losses
from genjax.methods import ddpm


def _is_int(value):
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def patch_geometry(config):
  """(image_size, patch_size, stride), the None defaults resolved.

  Args:
    config: the run's config; reads data.image_size and
      pddpm.patch_size / pddpm.patch_stride (None: image_size // 2 and
      image_size // 4, at least 1).

  Returns:
    Three values (ints where the config is valid; `validate` checks them).
  """
  size = config.data.image_size
  section = config.get("pddpm", {})
  patch = section.get("patch_size")
  stride = section.get("patch_stride")
  if patch is None:
    patch = max(size // 2, 1)
  if stride is None:
    stride = max(size // 4, 1)
  return size, patch, stride


def validate(config):
  """Config values pDDPM cannot work with; raises ConfigError.

  Runs `ddpm.validate` first (network, schedule, samplers, noise levels).
  """
  from genjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  ddpm.validate(config)
  size, patch, stride = patch_geometry(config)
  if not (_is_int(patch) and 1 <= patch <= size):
    raise ConfigError(
        f"config.pddpm.patch_size={patch!r} must be an integer in [1, {size}] "
        f"(config.data.image_size={size}); None means image_size // 2.")
  if not _is_int(stride) or stride < 1:
    raise ConfigError(
        f"config.pddpm.patch_stride={stride!r} must be an integer >= 1 (the "
        "step between reconstruction tiles); None means image_size // 4.")
  if stride > patch:
    raise ConfigError(
        f"config.pddpm.patch_stride={stride} is larger than "
        f"config.pddpm.patch_size={patch}: the tiles would leave gaps of "
        f"{stride - patch} px that no tile covers, so those pixels would have "
        "no reconstruction. Use a stride <= patch_size.")
  sampler = config.anomaly.sampler
  if sampler != "one_step":
    raise ConfigError(
        f"config.anomaly.sampler={sampler!r}: pDDPM reconstructs each tile "
        "with sampler='one_step'. pDDPM keeps the context around the noised "
        "patch clean, as in training; the step-by-step samplers ('ddpm', "
        "'ddim', ...) keep known pixels by RePaint-style replacement with the "
        "image noised to each step, i.e. a noised context the network never "
        "saw, and 'aggregate' noises the whole slice. Set "
        "config.anomaly.sampler='one_step'.")


def tile_offsets(size, patch, stride):
  """Top-left offsets of the tiles along one axis, covering [0, size).

  Args:
    size: the axis length.
    patch: the tile length, in [1, size].
    stride: the step between tiles, in [1, patch].

  Returns:
    Sorted list 0, stride, 2 stride, ... up to size - patch, with
    size - patch appended when the stride does not land on it.
  """
  offsets = list(range(0, size - patch + 1, stride))
  if offsets[-1] != size - patch:
    offsets.append(size - patch)
  return offsets


def tile_weights(size, patch, stride):
  """[size, size] numpy count of the tiles covering each pixel."""
  axis = np.zeros((size,), np.int64)
  for o in tile_offsets(size, patch, stride):
    axis[o:o + patch] += 1
  # A tile is (row offset) x (col offset): the counts are separable.
  return np.outer(axis, axis)


def tile_masks(size, patch, stride):
  """[P, size, size, 1] float32 masks of the P tiles, row-major."""
  offsets = tile_offsets(size, patch, stride)
  masks = np.zeros((len(offsets) ** 2, size, size, 1), np.float32)
  for i, (r, c) in enumerate((r, c) for r in offsets for c in offsets):
    masks[i, r:r + patch, c:c + patch] = 1.0
  return masks


def train_region(config):
  """The training patch: fn(rng, shape) -> [B, H, W, 1] mask in {0, 1}.

  One patch_size x patch_size square per example, its top-left corner
  uniform over the integer positions [0, H - patch] x [0, W - patch].
  """
  _, patch, _ = patch_geometry(config)

  def region(rng, shape):
    batch, height, width = shape[0], shape[1], shape[2]
    row_rng, col_rng = jax.random.split(rng)
    rows = jax.random.randint(row_rng, (batch, 1, 1, 1), 0, height - patch + 1)
    cols = jax.random.randint(col_rng, (batch, 1, 1, 1), 0, width - patch + 1)
    y = jnp.arange(height).reshape(1, height, 1, 1)
    x = jnp.arange(width).reshape(1, 1, width, 1)
    inside = ((y >= rows) & (y < rows + patch)
              & (x >= cols) & (x < cols + patch))
    return inside.astype(jnp.float32)
  return region


def reconstruct_at(config):
  """pDDPM's reconstruction from one level (see the module docstring).

  Returns:
    fn(denoiser, images [B, H, W, 1], rng, level) -> x0 [B, H, W, 1] (the
    builder clips it): the tile-count-weighted mean over the tiles of each
    tile's one-step x0 estimate on its own pixels.
  """
  size, patch, stride = patch_geometry(config)
  masks = tile_masks(size, patch, stride)
  inv_weights = (1.0 / tile_weights(size, patch, stride)).astype(np.float32)
  n_tiles = masks.shape[0]

  def level_fn(denoiser, images, rng, level):
    b = images.shape[0]
    base_noise = denoiser.noise_fn or losses.gaussian_noise

    def same_noise_per_tile(key, shape):
      # One draw for the B images, repeated for every tile: the noise a
      # separate per-tile call with this key would draw.
      return jnp.tile(base_noise(key, (b,) + tuple(shape[1:])),
                      (n_tiles,) + (1,) * (len(shape) - 1))

    # Tile-major batch: example p * B + i is image i with tile p noised.
    region = jnp.repeat(jnp.asarray(masks), b, axis=0)
    tiled = jnp.tile(images, (n_tiles,) + (1,) * (images.ndim - 1))
    x0 = denoiser._replace(noise_fn=same_noise_per_tile).anoddpm(
        tiled, rng, level, region=region)
    x0 = x0.reshape((n_tiles, b) + images.shape[1:])
    kept = jnp.sum(x0 * region.reshape(x0.shape), axis=0)
    return kept * jnp.asarray(inv_weights)[None, :, :, None]
  return level_fn


def n_tiles(config):
  """Tiles per reconstruction (network calls per image and level)."""
  size, patch, stride = patch_geometry(config)
  return len(tile_offsets(size, patch, stride)) ** 2


def make(config):
  """pDDPM as a `Method` (see genjax.methods), built by `ddpm.make`."""
  tiles = n_tiles(config)
  return ddpm.make(config, ddpm.Variant(
      train_region=train_region(config),
      reconstruct_at=reconstruct_at(config),
      network_calls=lambda level, calls: tiles * calls))
