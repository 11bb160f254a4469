"""pDDPM (genjax/methods/pddpm.py) against independent references.

The tiling against brute-force counts; the batched patched reconstruction
against separate `samplers.one_step_x0(..., region=tile)` calls in a Python
loop, with the exact Gaussian denoiser of tests/test_diffusion.py as the
network (plus, in one case, a term that reads the whole slice, so that each
tile's estimate depends on its context); the region loss against numpy; and
the method end to end on the phantom at :smoke scale.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pddpm as pddpm_config
from genjax import methods
from genjax.config import ConfigError
from genjax.data import pipeline
from genjax.diffusion import losses
from genjax.diffusion import samplers
from genjax.diffusion import schedules as sch
from genjax.methods import ddpm
from genjax.methods import pddpm
from tests.test_diffusion import discrete_alpha_sigma
from tests.test_diffusion import exact_denoiser
from tests.test_diffusion import MU
from tests.test_diffusion import SD

T = 1000
SIZE = 4  # MU and SD of the exact denoiser are 4 x 4.


@pytest.fixture(scope="module")
def linear():
  return sch.make_schedule("linear", T)


def _brute_force_weights(size, patch, stride):
  """Tiles at k * stride (while inside) and at size - patch, by pixel."""
  starts = {k * stride for k in range(size) if k * stride + patch <= size}
  starts.add(size - patch)
  count = np.zeros((size, size), np.int64)
  for r, c in itertools.product(starts, starts):
    for y in range(size):
      for x in range(size):
        count[y, x] += (r <= y < r + patch) and (c <= x < c + patch)
  return count


@pytest.mark.parametrize("size,patch,stride", [
    (32, 16, 8), (10, 4, 3), (30, 15, 7), (7, 7, 7), (9, 1, 1), (12, 5, 5),
    (8, 3, 2),
])
def test_tile_weights_match_a_brute_force_count(size, patch, stride):
  offsets = pddpm.tile_offsets(size, patch, stride)
  assert offsets == sorted(offsets) and offsets[0] == 0
  assert offsets[-1] == size - patch
  assert all(0 < b - a <= stride for a, b in zip(offsets, offsets[1:]))
  np.testing.assert_array_equal(pddpm.tile_weights(size, patch, stride),
                                _brute_force_weights(size, patch, stride))


def test_tiles_cover_every_pixel():
  for size in range(1, 21):
    for patch in range(1, size + 1):
      for stride in range(1, patch + 1):
        weights = pddpm.tile_weights(size, patch, stride)
        assert weights.min() >= 1, (size, patch, stride)


def test_train_region_is_one_uniform_square_per_example():
  config = pddpm_config.get_config("smoke")
  size, patch = 32, 16
  mask = np.asarray(pddpm.train_region(config)(jax.random.key(0),
                                               (2000, size, size, 1)))
  assert mask.shape == (2000, size, size, 1)
  assert set(np.unique(mask)) == {0.0, 1.0}
  assert np.all(mask.sum(axis=(1, 2, 3)) == patch * patch)
  rows = np.argmax(mask[..., 0].any(axis=2), axis=1)
  cols = np.argmax(mask[..., 0].any(axis=1), axis=1)
  for m, r, c in zip(mask[:50, ..., 0], rows, cols):
    square = np.zeros((size, size))
    square[r:r + patch, c:c + patch] = 1.0
    np.testing.assert_array_equal(m, square)
  # Every integer position in [0, size - patch] on both axes, near uniform.
  for pos in (rows, cols):
    counts = np.bincount(pos, minlength=size - patch + 1)
    assert len(counts) == size - patch + 1 and counts.min() > 0
    assert counts.max() < 3 * counts.min()  # Expected 118 each.
  assert len({(r, c) for r, c in zip(rows, cols)}) > 200


def _config(size, patch, stride):
  config = pddpm_config.get_config("smoke")
  config.data.image_size = size
  config.pddpm.patch_size = patch
  config.pddpm.patch_stride = stride
  return config


def _denoiser(model, schedule, prediction="eps"):
  return ddpm.Denoiser(model=model, schedule=schedule, prediction=prediction,
                       noise_fn=losses.gaussian_noise, sampler="one_step",
                       sampler_kwargs={})


def _with_context(model):
  """The exact denoiser plus a term reading the whole (partly noised) slice."""
  def model_fn(x, t):
    return model(x, t) + 0.3 * jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return model_fn


def _loop_reference(model, schedule, images, rng, level, patch, stride):
  """Each tile alone, its pixels kept, averaged by a brute-force count."""
  size = images.shape[1]
  starts = pddpm.tile_offsets(size, patch, stride)
  total = np.zeros(images.shape, np.float64)
  for r, c in itertools.product(starts, starts):
    tile = np.zeros((1, size, size, 1), np.float32)
    tile[:, r:r + patch, c:c + patch] = 1.0
    x0 = samplers.one_step_x0(model, schedule, rng, images, level,
                              region=jnp.asarray(tile))
    total += tile * np.asarray(x0)
  return total / _brute_force_weights(size, patch, stride)[None, :, :, None]


@pytest.mark.parametrize("patch,stride,context", [
    (2, 1, False), (3, 2, True), (2, 2, True),
])
def test_reconstruct_at_is_the_weighted_mean_of_per_tile_calls(
    linear, patch, stride, context):
  model = exact_denoiser(discrete_alpha_sigma(linear))
  if context:
    model = _with_context(model)
  images = MU + SD * jax.random.normal(jax.random.key(0), (3, SIZE, SIZE, 1))
  rng, level = jax.random.key(1), 400
  got = pddpm.reconstruct_at(_config(SIZE, patch, stride))(
      _denoiser(model, linear), images, rng, level)
  want = _loop_reference(model, linear, images, rng, level, patch, stride)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_pixel_comes_only_from_tiles_that_noised_it(linear):
  # An x0-"network" that returns its input: a pixel's estimate is x_t there,
  # i.e. the noised pixel when the tile noised it and the clean one when not.
  # With the same noise in every tile, every estimate is the noised pixel.
  images = MU + SD * jax.random.normal(jax.random.key(2), (2, SIZE, SIZE, 1))
  rng, level = jax.random.key(3), 300
  denoiser = _denoiser(lambda x, t: x, linear, prediction="x0")
  got = pddpm.reconstruct_at(_config(SIZE, 3, 2))(denoiser, images, rng,
                                                  level)
  noise = np.asarray(jax.random.normal(jax.random.split(rng)[0],
                                       images.shape))
  a2 = float(linear.alphas_cumprod[level - 1])
  want = np.sqrt(a2) * np.asarray(images) + np.sqrt(1.0 - a2) * noise
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_one_tile_covering_the_slice_is_plain_one_step(linear):
  model = _with_context(exact_denoiser(discrete_alpha_sigma(linear)))
  images = MU + SD * jax.random.normal(jax.random.key(4), (2, SIZE, SIZE, 1))
  rng = jax.random.key(5)
  got = pddpm.reconstruct_at(_config(SIZE, SIZE, SIZE))(
      _denoiser(model, linear), images, rng, 250)
  want = samplers.one_step_x0(model, linear, rng, images, 250)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_region_loss_matches_numpy(linear):
  rng = jax.random.key(6)
  x0 = np.asarray(jax.random.uniform(jax.random.key(7), (3, 5, 5, 1),
                                     minval=-1.0, maxval=1.0))
  t = np.array([10, 500, 999])
  region = np.zeros_like(x0)
  region[0, 1:4, 1:4] = 1.0
  region[1, :2, 3:] = 1.0
  region[2] = 1.0
  model = lambda x, tt: 0.5 * x + 1e-3 * tt.reshape(-1, 1, 1, 1)
  got = losses.denoising_loss(model, linear, jnp.asarray(x0), rng,
                              t=jnp.asarray(t), region=jnp.asarray(region))
  noise = np.asarray(jax.random.normal(jax.random.split(rng)[1], x0.shape))
  a2 = np.asarray(linear.alphas_cumprod)[t].reshape(-1, 1, 1, 1)
  x_t = np.where(region > 0, np.sqrt(a2) * x0 + np.sqrt(1 - a2) * noise, x0)
  se = (0.5 * x_t + 1e-3 * t.reshape(-1, 1, 1, 1) - noise) ** 2
  want = [se[i][region[i] > 0].mean() for i in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  whole = losses.denoising_loss(model, linear, jnp.asarray(x0), rng,
                                t=jnp.asarray(t))
  assert not np.allclose(got[:2], whole[:2], rtol=1e-3)


@pytest.mark.parametrize("field,value,match", [
    ("pddpm.patch_size", 0, "patch_size"),
    ("pddpm.patch_size", 33, "patch_size"),
    ("pddpm.patch_stride", 0, "patch_stride"),
    ("pddpm.patch_stride", 17, "patch_stride=17 is larger"),
    ("anomaly.sampler", "ddim", "clean"),
    ("anomaly.sampler", "aggregate", "anomaly.sampler"),
])
def test_validate_names_the_bad_field(field, value, match):
  config = pddpm_config.get_config("smoke")
  methods.validate(config)  # The defaults are valid.
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=match):
    methods.validate(config)


def test_defaults_follow_the_image_size():
  for variant, size in (("smoke", 32), ("cpu", 64), ("", 128)):
    config = pddpm_config.get_config(variant)
    assert pddpm.patch_geometry(config) == (size, size // 2, size // 4)
    assert pddpm.n_tiles(config) == 9
  config = pddpm_config.get_config("smoke")
  config.data.image_size = 48
  assert pddpm.patch_geometry(config) == (48, 24, 12)


def _key(seed):
  # 'rbg' keys: XLA compiles their draws faster than threefry's on CPU.
  return jax.random.key(seed, impl="rbg")


def test_smoke_method_trains_and_reconstructs(smoke_config):
  config = smoke_config(pddpm_config)
  methods.validate(config)
  method = methods.get(config)
  batch = next(pipeline.train_iterator(config.data, config.train.batch_size,
                                       seed=0))
  batch = {k: v for k, v in batch.items() if k != "subject"}
  state = jax.jit(method.init)(_key(0), batch)
  step = jax.jit(method.train_step)
  for i in range(2):
    state, metrics = step(state, batch, _key(i + 1))
    assert np.isfinite(float(metrics["loss"]))
  assert int(state.step) == 2
  recon = jax.jit(method.reconstruct)(state, batch["image"], _key(9))
  assert recon.shape == batch["image"].shape
  assert np.all(np.isfinite(recon)) and np.abs(recon).max() <= 1.0
  assert method.reconstruct.network_calls == 9
