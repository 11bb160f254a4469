"""Tests of the on-device augmentation."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from genjax.data import augment

SIZE = 32
ALL_GEOMETRIC = dict(crop=True, flip_lr=True, flip_ud=True, elastic=True)


def aug_config(**switches):
  config = base.get_base_config("smoke").augment
  for key, value in switches.items():
    config[key] = value
  return config


def blob_batch(batch_size=8, seed=0):
  """Off-centre lesion blobs inside a brain disk; image = 2 * mask - 1.

  Returns:
    image, mask, brain float32 [B, 32, 32, 1], plus a label key that
    augmentation must pass through.
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:SIZE, :SIZE]
  brain = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 14**2).astype(np.float32)
  masks = []
  for _ in range(batch_size):
    cy, cx = rng.uniform(9, 22, 2)
    ry, rx = rng.uniform(3, 7, 2)
    masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
  mask = np.stack(masks)[..., None].astype(np.float32)
  return {
      "image": 2 * mask - 1,
      "mask": mask,
      "brain": np.broadcast_to(brain[None, ..., None], mask.shape).copy(),
      "label": np.ones(batch_size, np.int32),
  }


def textured_batch(batch_size=8, seed=0):
  """Brain intensities spread over (-1, 1), background -1, a lesion mask."""
  batch = blob_batch(batch_size, seed)
  rng = np.random.default_rng(seed + 1)
  tissue = rng.uniform(-0.9, 0.95, batch["image"].shape).astype(np.float32)
  batch["image"] = np.where(batch["brain"] > 0, tissue, -1.0).astype(
      np.float32)
  return batch


@functools.cache
def _jitted(switches):
  config = aug_config(**dict(switches))
  return jax.jit(lambda rng, batch: augment.augment_batch(rng, batch, config))


def run(batch, seed=0, **switches):
  """augment_batch under jit, as in the train step (and faster than eager)."""
  fn = _jitted(tuple(sorted(switches.items())))
  return jax.tree.map(np.asarray, fn(jax.random.key(seed), batch))


def test_identity_when_every_switch_is_off():
  batch = blob_batch()
  assert augment.augment_batch(jax.random.key(0), batch, aug_config()) is batch


def test_other_keys_pass_through_untouched():
  batch = dict(textured_batch(), subject=np.array(["a", "b"] * 4))
  out = augment.augment_batch(jax.random.key(0), batch,
                               aug_config(gamma=True))
  assert out["label"] is batch["label"] and out["subject"] is batch["subject"]
  # Eager and jitted agree.
  batch.pop("subject")
  np.testing.assert_allclose(out["image"], run(batch, gamma=True)["image"],
                             atol=1e-6)


@pytest.mark.parametrize("switches", [
    ALL_GEOMETRIC,
    dict(gamma=True, intensity=True),
    dict(ALL_GEOMETRIC, gamma=True, intensity=True),
])
def test_shapes_dtypes_ranges_and_binary_masks(switches):
  batch = textured_batch()
  out = run(batch, **switches)
  assert set(out) == set(batch)
  for key in ("image", "mask", "brain"):
    assert out[key].shape == batch[key].shape
    assert out[key].dtype == jnp.float32
  np.testing.assert_array_equal(out["label"], batch["label"])
  image = out["image"]
  assert image.min() >= -1.0 and image.max() <= 1.0
  for key in ("mask", "brain"):
    assert set(np.unique(out[key])) <= {0.0, 1.0}
  assert not np.array_equal(image, batch["image"])


def test_geometric_transforms_keep_image_and_mask_aligned():
  batch = blob_batch(batch_size=16)
  out = run(batch, **ALL_GEOMETRIC, elastic_alpha=3.0, elastic_sigma=4.0)
  bright = out["image"] > 0.0
  mask = out["mask"] > 0.5
  assert mask.any(axis=(1, 2, 3)).mean() > 0.5  # Blobs mostly stay in view.
  for b in range(16):
    assert np.mean(bright[b] == mask[b]) >= 0.95
  # The transform moved things: masks are not the originals.
  assert np.mean(mask != (batch["mask"] > 0.5)) > 0.02


def test_outside_the_input_reads_background():
  # A slice full of brain at 1: the elastic field pulls in from outside the
  # border, which must read as background (-1, brain 0), not 0.
  ones = np.ones((4, SIZE, SIZE, 1), np.float32)
  out = run({"image": ones, "brain": ones}, elastic=True, elastic_alpha=6.0,
            elastic_sigma=4.0)
  outside = out["brain"] == 0
  assert outside.any() and out["image"].min() < -0.5
  assert np.mean((out["image"] > 0) == (out["brain"] > 0)) >= 0.99


@pytest.mark.parametrize("switch,axis", [("flip_lr", 1), ("flip_ud", 0)])
def test_flips_match_np_flip_exactly(switch, axis):
  batch = textured_batch(batch_size=16)
  out = run(batch, **{switch: True})
  flipped = []
  for b in range(16):
    image, mask = out["image"][b], out["mask"][b]
    if np.array_equal(image, batch["image"][b]):
      np.testing.assert_array_equal(mask, batch["mask"][b])
      flipped.append(False)
    else:
      np.testing.assert_array_equal(image, np.flip(batch["image"][b], axis))
      np.testing.assert_array_equal(mask, np.flip(batch["mask"][b], axis))
      np.testing.assert_array_equal(out["brain"][b],
                                    np.flip(batch["brain"][b], axis))
      flipped.append(True)
  assert 0 < sum(flipped) < 16  # Each example flips with probability 1/2.


def test_crop_of_the_whole_image_and_zero_elastic_are_identities():
  batch = textured_batch()
  out = run(batch, crop=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
            elastic=True, elastic_alpha=0.0)
  for key in ("image", "mask", "brain"):
    np.testing.assert_array_equal(out[key], batch[key])


def test_crop_zooms_by_the_area_fraction():
  # A plane: a square crop of area fraction a stretches it by 1/sqrt(a) along
  # both axes, so its slopes shrink by sqrt(a) = 0.5.
  yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
  plane = -0.9 + 0.03 * xx + 0.025 * yy
  image = np.broadcast_to(plane[None, ..., None], (4, SIZE, SIZE, 1))
  batch = {"image": image.copy(), "brain": np.ones_like(image)}
  out = run(batch, crop=True, crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0))
  out = out["image"][..., 0]
  np.testing.assert_allclose(np.diff(out, axis=2), 0.03 * 0.5, atol=1e-5)
  np.testing.assert_allclose(np.diff(out, axis=1), 0.025 * 0.5, atol=1e-5)
  # Crops are at random positions.
  assert len({float(out[b, 0, 0]) for b in range(4)}) > 1


def test_elastic_field_is_smooth_with_peak_alpha():
  field = np.asarray(
      augment.elastic_displacement(jax.random.key(0), 64, 64, 4.0, 6.0))
  assert field.shape == (2, 64, 64)
  np.testing.assert_allclose(np.sqrt((field**2).sum(0)).max(), 4.0,
                             rtol=1e-5)
  # Smooth: neighbours move together, so the warp does not fold the image
  # (the diagonal of the Jacobian, 1 + d(displacement)/dx, stays > 0).
  assert np.abs(np.diff(field, axis=2)).max() < 1.0
  assert np.abs(np.diff(field, axis=1)).max() < 1.0


def test_gamma_matches_the_closed_form():
  batch = textured_batch()
  out = run(batch, gamma=True, gamma_range=(0.7, 0.7))
  unit = (batch["image"] + 1) / 2
  np.testing.assert_allclose(out["image"], 2 * unit**0.7 - 1,
                             atol=1e-5)
  assert np.all(out["image"][batch["brain"] == 0] == -1.0)
  np.testing.assert_array_equal(out["mask"], batch["mask"])


def test_gamma_is_drawn_per_example_within_the_range():
  batch = textured_batch(batch_size=16)
  out = run(batch, gamma=True, gamma_range=(0.7, 1.5))
  inside = (batch["brain"][0, ..., 0] > 0) & (
      np.abs(batch["image"][0, ..., 0]) < 0.8)
  gammas = []
  for b in range(16):
    u_in = (batch["image"][b, ..., 0][inside] + 1) / 2
    u_out = (out["image"][b, ..., 0][inside] + 1) / 2
    per_pixel = np.log(u_out) / np.log(u_in)
    np.testing.assert_allclose(per_pixel, per_pixel.mean(), rtol=1e-3)
    gammas.append(per_pixel.mean())
  assert 0.7 - 1e-3 <= min(gammas) and max(gammas) <= 1.5 + 1e-3
  assert np.std(gammas) > 0.05


def test_intensity_scales_and_shifts_the_brain_only():
  batch = textured_batch()
  out = run(batch, intensity=True, scale_range=(1.1, 1.1),
            shift_range=(0.2, 0.2))
  expected = np.where(batch["brain"] > 0,
                      np.clip(1.1 * batch["image"] + 0.2, -1, 1),
                      batch["image"])
  np.testing.assert_allclose(out["image"], expected, atol=1e-6)
  assert out["image"].max() == 1.0  # Clipped.


def test_same_rng_same_result_and_other_rng_differs():
  batch = textured_batch()
  switches = dict(ALL_GEOMETRIC, gamma=True, intensity=True)
  first, again = run(batch, seed=1, **switches), run(batch, seed=1, **switches)
  other = run(batch, seed=2, **switches)
  for key in ("image", "mask", "brain"):
    np.testing.assert_array_equal(first[key],
                                  again[key])
  assert not np.array_equal(first["image"],
                            other["image"])
  # Examples of one batch are augmented independently.
  same = {k: np.repeat(batch[k][:1], 4, axis=0)
          for k in ("image", "mask", "brain")}
  out = np.asarray(run(same, **switches)["image"])
  assert not np.array_equal(out[0], out[1])


def test_jit_traces_once():
  config = aug_config(**ALL_GEOMETRIC, gamma=True, intensity=True)
  batch = {k: jnp.asarray(v) for k, v in textured_batch().items()}

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(rng, batch):
    return augment.augment_batch(rng, batch, config)

  first = step(jax.random.key(0), batch)
  second = step(jax.random.key(1), batch)  # A new key must not retrace.
  assert not np.array_equal(first["image"], second["image"])


def test_switching_one_transform_leaves_the_others_draws_alone():
  batch = textured_batch()
  flip_only = run(batch, seed=3, flip_lr=True)
  flip_gamma = run(batch, seed=3, flip_lr=True, gamma=True,
                   gamma_range=(1.0, 1.0))
  np.testing.assert_allclose(flip_gamma["image"],
                             flip_only["image"], atol=1e-6)


def test_config_is_closed_over_not_traced():
  config = aug_config(flip_lr=True)
  fn = jax.jit(functools.partial(augment.augment_batch, aug_config=config))
  batch = {"image": jnp.zeros((2, 8, 8, 1)) - 1}
  out = fn(jax.random.key(0), batch)
  assert out["image"].shape == (2, 8, 8, 1) and "mask" not in out
