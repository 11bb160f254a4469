"""Tests of the tf.data pipeline on synthetic slices of the builders' schema."""

import numpy as np
import pytest
import tensorflow as tf

from configs import base
from genjax.data import builders
from genjax.data import pipeline

PERCENTILES = builders.PERCENTILES


# --- Synthetic data of the builders' schema -----------------------------------


def make_volume(rng, subject, depth=12, height=32, width=32,
                lesion_slices=()):
  """One subject's slices: an ellipse of brain that shrinks towards the ends.

  Returns:
    A dict of stacked numpy arrays, one row per axial slice, with the keys
    and dtypes `builders.load_split` yields.
  """
  yy, xx = np.mgrid[:height, :width]
  cy, cx = (height - 1) / 2, (width - 1) / 2
  image = np.zeros((depth, height, width, 1), np.float32)
  brain = np.zeros((depth, height, width, 1), np.uint8)
  mask = np.zeros((depth, height, width, 1), np.uint8)
  for z in range(depth):
    radius = 0.48 * np.sin(np.pi * (z + 0.5) / depth)  # 0.06 .. 0.48
    inside = ((yy - cy) / height) ** 2 + ((xx - cx) / width) ** 2 < radius**2
    brain[z, ..., 0] = inside
    image[z, ..., 0] = np.where(
        inside, rng.uniform(100.0, 1000.0, (height, width)), 0.0)
    if z in lesion_slices:
      lesion = inside & ((yy - cy) ** 2 + (xx - cx) ** 2 < 9)
      mask[z, ..., 0] = lesion
      image[z, ..., 0] = np.where(lesion, 1500.0, image[z, ..., 0])
  percentiles = np.percentile(image[brain > 0], PERCENTILES).astype(np.float32)
  return {
      "image": image,
      "mask": mask,
      "brain": brain,
      "label": mask.reshape(depth, -1).max(1).astype(np.int64),
      "subject": np.array([subject] * depth),
      "slice": np.arange(depth, dtype=np.int32),
      "percentiles": np.tile(percentiles, (depth, 1)),
      "affine": np.tile(np.eye(4, dtype=np.float32), (depth, 1, 1)),
  }


def make_split(num_subjects=3, seed=0, lesion_slices=(), **kwargs):
  rng = np.random.default_rng(seed)
  volumes = [make_volume(rng, f"sub-{i:02d}", lesion_slices=lesion_slices,
                         **kwargs) for i in range(num_subjects)]
  return {k: np.concatenate([v[k] for v in volumes]) for k in volumes[0]}


@pytest.fixture
def use_splits(monkeypatch):
  """Makes pipeline read the given {split: arrays} instead of TFDS."""

  def install(splits):
    monkeypatch.setattr(
        builders, "load_split",
        lambda data_config, split, **kwargs: (
            tf.data.Dataset.from_tensor_slices(splits[split])))

  return install


def data_config(**overrides):
  config = base.get_base_config("smoke").data
  config.min_brain_fraction = 0.0
  config.shuffle_buffer = 100
  for key, value in overrides.items():
    config[key] = value
  return config


def preprocessed(arrays, config):
  ds = pipeline.preprocess(tf.data.Dataset.from_tensor_slices(arrays), config)
  return list(ds.as_numpy_iterator())


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def keys_of(batch):
  return [(s, int(z)) for s, z in zip(batch["subject"], batch["slice"])]


# --- preprocess ---------------------------------------------------------------


@pytest.mark.parametrize("clip", [(0.5, 99.5), (2.0, 98.0)])
def test_normalisation_matches_numpy_reference(use_splits, clip):
  use_splits({})
  arrays = make_split(num_subjects=2)
  examples = preprocessed(arrays, data_config(clip_percentiles=clip))
  assert len(examples) == len(arrays["image"])
  for i, ex in enumerate(examples):
    # Reference: percentiles of the subject's brain voxels, recomputed here.
    subject = arrays["subject"] == arrays["subject"][i]
    voxels = arrays["image"][subject][arrays["brain"][subject] > 0]
    p_lo, p_hi = np.percentile(voxels, clip)
    unit = np.clip((arrays["image"][i] - p_lo) / (p_hi - p_lo), 0, 1)
    expected = np.where(arrays["brain"][i] > 0, 2 * unit - 1, -1)
    np.testing.assert_allclose(ex["image"], expected, atol=1e-5)
    assert ex["image"].dtype == np.float32 and ex["image"].shape == (32, 32, 1)
    assert ex["mask"].dtype == np.float32 and ex["brain"].dtype == np.float32
    assert ex["label"].dtype == np.int32 and ex["slice"].dtype == np.int32
    assert set(ex) == {"image", "mask", "brain", "label", "subject", "slice"}


def test_background_maps_to_minus_one(use_splits):
  use_splits({})
  arrays = make_split(num_subjects=1)
  # Non-brain tissue left by skull stripping is background too.
  arrays["image"][:, :3, :3] = 500.0
  assert np.all(arrays["brain"][:, :3, :3] == 0)
  for ex, brain in zip(preprocessed(arrays, data_config()), arrays["brain"]):
    assert np.all(ex["image"][brain == 0] == -1.0)
    assert ex["image"].min() >= -1.0 and ex["image"].max() <= 1.0
    # The brain is not all background: normalisation spreads it over [-1, 1].
    assert ex["image"][brain > 0].max() > 0.5


def test_filters_drop_exactly_the_expected_slices(use_splits):
  use_splits({})
  arrays = make_split(num_subjects=2)
  config = data_config(slice_range=(1, 7), min_brain_fraction=0.3)
  fraction = arrays["brain"].reshape(len(arrays["brain"]), -1).mean(1)
  in_range = (arrays["slice"] >= 1) & (arrays["slice"] < 7)
  keep = in_range & (fraction >= 0.3)
  # Both filters matter on this data, or the test would prove nothing.
  assert (in_range & ~keep).any() and (~in_range & (fraction >= 0.3)).any()
  expected = [(s, int(z)) for s, z in
              zip(arrays["subject"][keep], arrays["slice"][keep])]
  got = [(ex["subject"].decode(), int(ex["slice"]))
         for ex in preprocessed(arrays, config)]
  assert got == expected


def _square_volume(height, width, box):
  """A brain covering the slice with a bright square lesion at `box`."""
  top, left, size = box
  image = np.full((1, height, width, 1), 100.0, np.float32)
  mask = np.zeros((1, height, width, 1), np.uint8)
  mask[0, top:top + size, left:left + size] = 1
  image[mask > 0] = 1000.0
  return {
      "image": image, "mask": mask, "brain": np.ones_like(mask),
      "label": np.ones(1, np.int64), "subject": np.array(["sq"]),
      "slice": np.zeros(1, np.int32),
      "percentiles": np.percentile(image, PERCENTILES)[None].astype(
          np.float32),
      "affine": np.eye(4, dtype=np.float32)[None],
  }


@pytest.mark.parametrize("height,width,box", [
    (48, 40, (12, 10, 15)),   # Shrunk: 48x40 -> 32x27, padded left/right.
    (16, 24, (4, 14, 6)),     # Enlarged: 16x24 -> 21x32, padded top/bottom.
])
def test_resize_pad_keeps_masks_binary_and_aligned(use_splits, height, width,
                                                   box):
  use_splits({})
  (ex,) = preprocessed(_square_volume(height, width, box), data_config())
  image, mask, brain = ex["image"][..., 0], ex["mask"][..., 0], ex["brain"][
      ..., 0]
  assert image.shape == (32, 32)
  assert set(np.unique(mask)) == {0.0, 1.0}
  assert set(np.unique(brain)) == {0.0, 1.0}
  # The padded border is background: image -1 and both masks 0.
  scale = 32 / max(height, width)
  new_h, new_w = round(height * scale), round(width * scale)
  top, left = (32 - new_h) // 2, (32 - new_w) // 2
  inside = np.zeros((32, 32), bool)
  inside[top:top + new_h, left:left + new_w] = True
  assert np.all(image[~inside] == -1) and np.all(brain[~inside] == 0)
  assert np.all(brain[inside] == 1)
  # The bright square and its mask stay co-located.
  bright = image > 0.0
  assert np.mean(bright == (mask > 0)) >= 0.98
  expected_centre = (top + (box[0] + box[2] / 2) * scale - 0.5,
                     left + (box[1] + box[2] / 2) * scale - 0.5)
  np.testing.assert_allclose(np.argwhere(mask > 0).mean(0), expected_centre,
                             atol=0.75)


def test_clip_percentiles_off_the_grid_raise(use_splits):
  use_splits({})
  with pytest.raises(ValueError, match=r"97.0.*not on it|grid"):
    pipeline.preprocess(tf.data.Dataset.from_tensor_slices(make_split(1)),
                        data_config(clip_percentiles=(0.5, 97.0)))
  with pytest.raises(ValueError, match="increasing"):
    pipeline.percentile_indices((99.5, 0.5))


# --- train_iterator -----------------------------------------------------------


@pytest.fixture
def train_splits(use_splits):
  splits = {"train": make_split(num_subjects=3, lesion_slices=(5, 6))}
  use_splits(splits)
  return splits


def test_train_batches_are_numpy_dicts(train_splits):
  batch = next(pipeline.train_iterator(data_config(), 4, seed=0))
  assert batch["image"].shape == (4, 32, 32, 1)
  assert batch["image"].dtype == np.float32
  assert batch["mask"].shape == batch["brain"].shape == (4, 32, 32, 1)
  assert batch["label"].dtype == np.int32 and batch["slice"].dtype == np.int32
  assert batch["subject"].dtype.kind == "U"
  assert all(s.startswith("sub-") for s in batch["subject"])


def test_train_order_is_deterministic_per_seed(train_splits):
  def stream(seed):
    batches = take(pipeline.train_iterator(data_config(), 4, seed=seed), 12)
    return [k for b in batches for k in keys_of(b)]

  first = stream(0)
  assert first == stream(0)
  assert first != stream(1)
  # Shuffled, and every slice appears within the first epoch.
  n = len(train_splits["train"]["slice"])
  assert first[:n] != sorted(first[:n]) and len(set(first[:n])) == n


def test_start_step_resumes_the_same_stream(train_splits):
  uninterrupted = take(pipeline.train_iterator(data_config(), 4, seed=3), 14)
  resumed = take(pipeline.train_iterator(data_config(), 4, seed=3,
                                         start_step=9), 5)
  for a, b in zip(uninterrupted[9:], resumed):
    assert keys_of(a) == keys_of(b)
    np.testing.assert_array_equal(a["image"], b["image"])


def _examples(batches):
  """[(subject, slice)] and the images, batch after batch."""
  keys = [k for b in batches for k in keys_of(b)]
  return keys, np.concatenate([b["image"] for b in batches])


@pytest.mark.parametrize("batch_size,fraction,process_count,steps", [
    # 36 slices, 5 a batch: epochs end inside batches 7, 14, 21.
    (5, None, 1, (1, 7, 8, 14, 20)),
    # Host batch 2 of 18 slices per host: epoch boundaries at 9, 18.
    (4, None, 2, (8, 9, 17)),
    # Oversampling: a block of 1024 draws ends at batch 128 (batch 8); the
    # 6 lesion slices run through an epoch every ~15 draws.
    (8, 0.4, 1, (3, 127, 128, 130)),
])
def test_resume_equals_the_uninterrupted_stream(train_splits, batch_size,
                                                fraction, process_count,
                                                steps):
  config = data_config(lesion_fraction=fraction)
  kwargs = dict(seed=3, process_index=process_count - 1,
                process_count=process_count)
  n = max(steps) + 3
  uninterrupted = take(pipeline.train_iterator(config, batch_size, **kwargs),
                       n)
  for k in steps:
    resumed = take(pipeline.train_iterator(config, batch_size, start_step=k,
                                           **kwargs), n - k)
    keys, images = _examples(resumed)
    want_keys, want_images = _examples(uninterrupted[k:])
    assert keys == want_keys, k
    np.testing.assert_array_equal(images, want_images)


def test_every_epoch_is_a_permutation_of_the_split(train_splits):
  n = len(train_splits["train"]["slice"])  # 36: 9 batches of 4 per epoch.
  everything = set(zip(train_splits["train"]["subject"].tolist(),
                       train_splits["train"]["slice"].tolist()))
  keys, _ = _examples(take(pipeline.train_iterator(data_config(), 4, seed=0),
                           27))
  epochs = [keys[i:i + n] for i in range(0, 3 * n, n)]
  assert all(sorted(e) == sorted(everything) for e in epochs)
  assert len({tuple(e) for e in epochs}) == 3  # Reshuffled every epoch.
  # Epoch 10**8, reached directly, is a permutation too.
  far = take(pipeline.train_iterator(data_config(), 4, seed=0,
                                     start_step=9 * 10**8), 9)
  assert sorted(_examples(far)[0]) == sorted(everything)


@pytest.mark.parametrize("fraction", [None, 0.4])
def test_resuming_far_into_a_run_is_one_consistent_stream(train_splits,
                                                          fraction):
  # Batch k of a stream resumed at k - 1 is the first batch of one resumed at
  # k, however far k is (4 * 10**9 examples in). A resume that restarted the
  # epoch count, or skipped from epoch 0 with other epoch seeds, fails this.
  # Its cost is not what this checks: a plain skip of 4 * 10**9 examples from
  # epoch 0 also returns within seconds here (tf.data skips without reading).
  config = data_config(lesion_fraction=fraction)
  k = 10**9
  at_k = next(pipeline.train_iterator(config, 4, seed=1, start_step=k))
  before = take(pipeline.train_iterator(config, 4, seed=1, start_step=k - 1),
                2)
  assert keys_of(before[1]) == keys_of(at_k)
  np.testing.assert_array_equal(before[1]["image"], at_k["image"])


def test_oversampling_blocks_hold_the_exact_fraction(train_splits):
  # Each block of 1024 draws holds round(cumulative 1024 * f) lesion draws.
  config = data_config(lesion_fraction=0.3)
  labels = np.concatenate([b["label"] for b in take(
      pipeline.train_iterator(config, 16, seed=0), 128)])
  per_block = labels.reshape(2, 1024).sum(1)
  np.testing.assert_array_equal(per_block, [307, 307])  # 307.2, 614.4.


def test_lesion_oversampling_reaches_the_target_fraction(train_splits):
  labels = train_splits["train"]["label"]
  assert labels.mean() < 0.2  # Natural ratio: 2 of 12 slices.
  config = data_config(lesion_fraction=0.4)
  batches = take(pipeline.train_iterator(config, 8, seed=0), 60)
  fraction = np.concatenate([b["label"] for b in batches]).mean()
  assert abs(fraction - 0.4) < 0.07  # 480 draws: std 0.022.
  again = take(pipeline.train_iterator(config, 8, seed=0), 5)
  assert [keys_of(b) for b in again] == [keys_of(b) for b in batches[:5]]


def test_oversampling_without_lesions_is_an_error(use_splits):
  use_splits({"train": make_split(num_subjects=2)})
  with pytest.raises(ValueError, match="no lesion slices"):
    pipeline.train_iterator(data_config(lesion_fraction=0.5), 4, seed=0)


def test_hosts_get_disjoint_complete_shards(train_splits):
  n = len(train_splits["train"]["slice"])  # 36, 18 per host.
  shards = []
  for index in range(2):
    stream = pipeline.train_iterator(data_config(), 4, seed=0,
                                     process_index=index, process_count=2)
    # Host batch 2; the first 9 batches are this host's first epoch.
    shards.append([k for b in take(stream, 9) for k in keys_of(b)])
  assert all(len(set(shard)) == n // 2 for shard in shards)
  assert not set(shards[0]) & set(shards[1])
  all_keys = {(s, int(z)) for s, z in zip(train_splits["train"]["subject"],
                                          train_splits["train"]["slice"])}
  assert set(shards[0]) | set(shards[1]) == all_keys


def test_batch_size_must_divide_by_process_count(train_splits):
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    pipeline.train_iterator(data_config(), 5, seed=0, process_index=0,
                            process_count=2)
  with pytest.raises(ValueError, match="multiple"):
    pipeline.eval_batches(data_config(), "train", 3, process_index=1,
                          process_count=2)


def test_empty_split_after_filters_is_a_clear_error(train_splits):
  config = data_config(slice_range=(0, 1), min_brain_fraction=0.9)
  with pytest.raises(ValueError, match=r"'train'.*min_brain_fraction=0.9"):
    pipeline.train_iterator(config, 4, seed=0)
  with pytest.raises(ValueError, match=r"slice_range=\(0, 1\)"):
    pipeline.eval_batches(config, "train", 4)


# --- eval_batches -------------------------------------------------------------


def test_eval_batches_pad_the_last_batch(use_splits):
  arrays = make_split(num_subjects=1)  # 12 slices; kept: 10 (see below).
  use_splits({"test": arrays})
  config = data_config(min_brain_fraction=0.1)
  expected = [(ex["subject"].decode(), int(ex["slice"]))
              for ex in preprocessed(arrays, config)]
  assert len(expected) % 4  # The last batch needs padding.
  batches = list(pipeline.eval_batches(config, "test", 4))
  assert len(batches) == -(-len(expected) // 4)
  for batch in batches:
    assert batch["image"].shape == (4, 32, 32, 1)
    assert batch["valid"].dtype == bool and batch["valid"].shape == (4,)
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.sum() == len(expected) and not valid[-1]
  assert np.all(valid[:len(expected)])
  got = [k for b in batches for k, v in zip(keys_of(b), b["valid"]) if v]
  assert got == expected  # Ordered, no shuffle.
  last = batches[-1]
  assert np.all(last["image"][~last["valid"]] == -1)
  assert np.all(last["mask"][~last["valid"]] == 0)
  # Evenly divisible: no padding batch.
  assert len(list(pipeline.eval_batches(config, "test", len(expected)))) == 1


def test_eval_shards_are_disjoint_complete_and_equally_long(use_splits):
  arrays = make_split(num_subjects=1)
  use_splits({"test": arrays})
  config = data_config(min_brain_fraction=0.1)
  expected = {(ex["subject"].decode(), int(ex["slice"]))
              for ex in preprocessed(arrays, config)}
  per_host = [list(pipeline.eval_batches(config, "test", 6, process_index=i,
                                         process_count=2)) for i in range(2)]
  assert len(per_host[0]) == len(per_host[1])
  shards = [[k for b in host for k, v in zip(keys_of(b), b["valid"]) if v]
            for host in per_host]
  assert not set(shards[0]) & set(shards[1])
  assert set(shards[0]) | set(shards[1]) == expected
  assert all(b["image"].shape[0] == 3 for host in per_host for b in host)


def test_dataset_stats(use_splits):
  arrays = make_split(num_subjects=2, lesion_slices=(6,))
  use_splits({"test": arrays})
  config = data_config(min_brain_fraction=0.1)
  kept = preprocessed(arrays, config)
  stats = pipeline.dataset_stats(config, "test")
  assert stats["n_subjects"] == 2
  assert stats["n_slices"] == len(kept) < stats["n_slices_before_filters"]
  assert stats["n_slices_before_filters"] == 24
  assert stats["n_lesion_slices"] == 2
  assert stats["image_shape"] == [32, 32, 1]
  assert stats["intensity_min"] == -1.0 and stats["intensity_max"] == 1.0
  empty = pipeline.dataset_stats(data_config(slice_range=(50, 60)), "test")
  assert empty["n_slices"] == 0 and empty["intensity_min"] is None


def test_tensorflow_sees_no_accelerators():
  assert not tf.config.get_visible_devices("GPU")
  assert not tf.config.get_visible_devices("TPU")


# --- Through the real builder -------------------------------------------------


def test_pipeline_on_the_tiny_phantom(phantom_data_dir):
  # brain_phantom/tiny, built once per session (tests/conftest.py).
  config = base.get_base_config("smoke").data
  config.data_dir = phantom_data_dir
  batch = next(pipeline.train_iterator(config, 4, seed=0))
  assert batch["image"].shape == (4, 32, 32, 1)
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  assert np.all(batch["image"][batch["brain"] == 0] == -1)
  fractions = batch["brain"].mean(axis=(1, 2, 3))
  assert np.all(fractions >= config.min_brain_fraction)
  assert np.all(batch["label"] == 0)  # 'train' is healthy.

  stats = pipeline.dataset_stats(config, "test")
  batches = list(pipeline.eval_batches(config, "test", 8))
  valid = np.concatenate([b["valid"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[valid]
  assert valid.sum() == stats["n_slices"] > 0
  assert labels.sum() == stats["n_lesion_slices"] > 0
  assert stats["n_subjects"] == len(
      {s for b in batches for s in b["subject"][b["valid"]]})
  lesion = np.concatenate([b["mask"] for b in batches])[valid]
  assert set(np.unique(lesion)) == {0.0, 1.0}
  # Lesions lie inside the brain.
  brain = np.concatenate([b["brain"] for b in batches])[valid]
  assert np.mean(brain[lesion > 0]) > 0.95
