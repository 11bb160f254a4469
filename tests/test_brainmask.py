"""genjax.data.brainmask: the default brain mask against hand-built truth."""

import json

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
from skimage import filters
import tensorflow as tf

from configs import ddpm as ddpm_config
from genjax.data import brainmask
from genjax.data import builders
from genjax.data import phantom
from genjax.data import report
from genjax.data import slices

PAD = 4  # Background added around the phantom's grid, room for a skull.


def _dice(a, b):
  a, b = a > 0, b > 0
  return 2 * (a & b).sum() / (a.sum() + b.sum())


def _rician(rng, clean, sigma):
  return np.hypot(clean + sigma * rng.standard_normal(clean.shape),
                  sigma * rng.standard_normal(clean.shape))


@pytest.fixture(scope="module")
def subject():
  return phantom.make_subject(32, 0, False)


@pytest.fixture(scope="module")
def head(subject):
  """An unstripped, FLAIR-like 8-bit head: (image, true head mask).

  The phantom's brain (99th brain percentile -> 100), a 1-voxel dark CSF
  layer (30) and a 2-voxel bright skull ring (180) around it, Rician noise
  of 5 % of the brain everywhere (background values ~1-15), rounded to 8
  bits.
  """
  brain = np.pad(subject.brain > 0, PAD)
  image = np.pad(subject.image, PAD).astype(np.float64)
  image *= 100 / np.percentile(image[brain], 99)
  csf = ndimage.binary_dilation(brain, iterations=1)
  truth = ndimage.binary_fill_holes(
      ndimage.binary_dilation(brain, iterations=3))
  clean = np.where(brain, image, 0.0)
  clean[csf & ~brain] = 30
  clean[truth & ~csf] = 180
  noisy = _rician(np.random.default_rng(0), clean, 5.0)
  return np.clip(np.round(noisy), 0, 255), truth


def test_phantom_volume_and_slices_give_the_brain(subject):
  image, brain = subject.image, subject.brain
  assert brainmask.background_kind(image) == "constant"
  mask = brainmask.default_brain_mask(image)
  assert mask.dtype == np.uint8 and mask.shape == image.shape
  np.testing.assert_array_equal(mask, brain)
  # Per slice, as slice_folder sees the phantom's exported slices: 2D holes
  # (sulci open in 3D) and islands near the brain stay as they are.
  for z in range(image.shape[2]):
    np.testing.assert_array_equal(
        brainmask.default_brain_mask(image[:, :, z]), brain[:, :, z],
        err_msg=f"slice {z}")


def test_zscored_constant_negative_background(subject):
  image, brain = subject.image, subject.brain > 0
  mean, std = image[brain].mean(), image[brain].std()
  zscored = np.where(brain, (image - mean) / std, -mean / std).astype(
      np.float32)
  bg = brainmask.background(zscored)
  assert bg.kind == "constant" and bg.value == pytest.approx(-mean / std)
  assert bg.value < 0
  np.testing.assert_array_equal(brainmask.default_brain_mask(zscored), brain)
  for z in (8, 14, 20):
    np.testing.assert_array_equal(
        brainmask.default_brain_mask(zscored[:, :, z]), brain[:, :, z])


def test_noisy_head_volume_is_the_head_not_the_frame(head):
  image, truth = head
  assert 0 < np.median(image[~truth]) < 20  # FLAIR-like noise background.
  assert brainmask.background_kind(image) == "noisy"
  mask = brainmask.default_brain_mask(image)
  assert _dice(mask, truth) > 0.95
  assert abs(mask.mean() - truth.mean()) < 0.03
  # The old default, image > 0, takes the whole frame.
  assert (image > 0).mean() > 0.95
  assert _dice(image > 0, truth) < 0.5


def test_noisy_head_slices(head):
  image, truth = head
  for z in range(image.shape[2]):
    mask = brainmask.default_brain_mask(image[:, :, z])
    if truth[:, :, z].mean() > 0.05:
      assert _dice(mask, truth[:, :, z]) > 0.95, z
      assert abs(mask.mean() - truth[:, :, z].mean()) < 0.03, z
    elif not truth[:, :, z].any():
      # Pure noise (above the head): no head, not a blob of noise.
      assert not mask.any(), z


def test_hot_voxels_do_not_leak(head, subject):
  image, truth = head
  rng = np.random.default_rng(1)
  far = ~ndimage.binary_dilation(truth, iterations=4)
  hot = far & (rng.uniform(size=far.shape) < 0.003)
  assert hot.sum() > 20
  mask = brainmask.default_brain_mask(np.where(hot, 255.0, image))
  assert not mask[hot].any()
  assert _dice(mask, truth) > 0.95
  # A constant background with hot voxels: still constant, specks removed.
  brain = subject.brain
  far = ~ndimage.binary_dilation(brain > 0, iterations=5)
  hot = far & (rng.uniform(size=far.shape) < 0.002)
  assert hot.sum() > 5
  spiked = np.where(hot, subject.image.max() * 3, subject.image)
  assert brainmask.background_kind(spiked) == "constant"
  np.testing.assert_array_equal(brainmask.default_brain_mask(spiked), brain)


@pytest.mark.parametrize("kind", ["bimodal", "rayleigh", "uniform", "8bit"])
@pytest.mark.parametrize("nbins", [256, 64])
def test_otsu_matches_skimage(kind, nbins):
  rng = np.random.default_rng(2)
  values = {
      "bimodal": np.concatenate([rng.normal(0, 1, 3000),
                                 rng.normal(6, 2, 1000)]),
      "rayleigh": _rician(rng, np.zeros(4000), 3.0),
      "uniform": rng.uniform(-5, 2, 4000),
      "8bit": np.round(rng.gamma(2.0, 30.0, 4000)).clip(0, 255),
  }[kind].reshape(40, 100)
  assert brainmask.otsu_threshold(values, nbins) == pytest.approx(
      filters.threshold_otsu(values, nbins=nbins), rel=1e-9, abs=1e-12)


def test_empty_and_bad_input():
  for value in (0.0, -3.2):
    assert not brainmask.default_brain_mask(np.full((16, 16), value)).any()
  assert not brainmask.default_brain_mask(np.zeros((8, 8, 8))).any()
  with pytest.raises(ValueError, match="2D slice"):
    brainmask.default_brain_mask(np.zeros((2, 4, 4, 4)))
  with pytest.raises(ValueError, match="numeric"):
    brainmask.default_brain_mask(np.zeros((4, 4), object))


def test_read_subject_uses_the_default_mask(head, tmp_path):
  """8-bit FLAIR-like PNG slices without _brain files (Kaggle LGG style)."""
  image, truth = head
  zs = (12, 16, 20)
  for z in zs:
    Image.fromarray(image[:, :, z].astype(np.uint8)).save(
        tmp_path / f"TCGA_X_{z}.png")
  found = slices.list_folder(tmp_path)
  _, _, brains, indices, notes = slices.read_subject(found)
  assert list(indices) == list(zs)
  for brain, z in zip(brains, zs):
    assert _dice(brain, truth[:, :, z]) > 0.95
  assert notes == {"no _brain file (default brain mask, noisy background: "
                   "head mask (Otsu, largest components, holes filled; "
                   "includes the skull if the image is not skull-stripped))":
                   [tmp_path / f"TCGA_X_{z}.png" for z in zs]}
  # A subject whose slices are all noise has no brain: a clear error.
  noise = tmp_path / "noise"
  noise.mkdir()
  rng = np.random.default_rng(3)
  for k in (1, 2):
    Image.fromarray(np.round(_rician(rng, np.zeros((32, 32)), 4.0)).astype(
        np.uint8)).save(noise / f"N_{k}.png")
  with pytest.raises(slices.SliceError, match="N_1.png.*no brain pixel"):
    slices.read_subject(slices.list_folder(noise))


# --- The data report (--mode=data) --------------------------------------------


def _dataset(brains):
  """A tf.data.Dataset of slice_features examples with these brain masks."""
  brains = np.asarray(brains, np.uint8)
  images = np.where(brains > 0, 1.0, 0.0) + np.arange(brains[0].size).reshape(
      brains[0].shape)
  examples = [ex for _, ex in builders.stack_examples(
      "s1", images, np.zeros_like(brains), brains, np.zeros((4, 4)),
      range(len(brains)))]
  return tf.data.Dataset.from_tensor_slices(
      {k: np.stack([ex[k] for ex in examples]) for k in examples[0]})


def test_brain_coverage_and_warning():
  full = np.ones((2, 16, 20), np.uint8)
  quarter = np.zeros((2, 16, 20), np.uint8)
  quarter[:, :8, :10] = 1
  over = f"slices_over_{report.FULL_FRAME_COVERAGE:g}"
  coverage = report.brain_coverage(_dataset(full))
  assert coverage == {"mean": 1.0, over: 1.0}
  warning = report.coverage_warning("train", coverage)
  for words in ("train", "100%", "background", "_brain",
                "experiments.preprocess", "Real data"):
    assert words in warning
  coverage = report.brain_coverage(_dataset(np.concatenate([full, quarter])))
  assert coverage == {"mean": pytest.approx(0.625), over: 0.5}
  assert report.coverage_warning("train", coverage) is None


def test_phantom_brain_coverage_does_not_warn(subject):
  brains = np.moveaxis(subject.brain, -1, 0)
  brains = brains[brains.any(axis=(1, 2))]
  coverage = report.brain_coverage(_dataset(brains))
  assert coverage["mean"] == pytest.approx(brains.mean(axis=(1, 2)).mean())
  assert coverage["mean"] < 0.5
  assert report.coverage_warning("train", coverage) is None


def test_data_report_on_unstripped_slices(head, tmp_path):
  """--mode=data on a slice folder: full-frame _brain masks warn; the
  default mask of noisy FLAIR-like slices covers the head and does not."""
  image, truth = head
  manual = tmp_path / "manual"
  zs = (12, 16, 20)
  for split in ("train", "test"):
    (manual / split).mkdir(parents=True)
    for z in zs:
      stem = manual / split / f"H{split}_{z}"
      Image.fromarray(image[:, :, z].astype(np.uint8)).save(f"{stem}.png")
      if split == "train":  # Brain masks that are the whole frame.
        Image.fromarray(np.full(image.shape[:2], 255, np.uint8)).save(
            f"{stem}_brain.png")
  config = ddpm_config.get_config("smoke")
  config.data.dataset = "slice_folder"
  config.data.builder_config = "custom"
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(manual)
  config.data.min_brain_fraction = 0.0
  stats = report.write_data_report(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "data" / "stats.json") as f:
    assert json.load(f) == json.loads(json.dumps(stats))
  over = f"slices_over_{report.FULL_FRAME_COVERAGE:g}"
  assert stats["splits"]["train"]["brain_coverage"] == {"mean": 1.0, over: 1.0}
  test = stats["splits"]["test"]["brain_coverage"]
  assert test["mean"] == pytest.approx(
      np.mean([truth[:, :, z].mean() for z in zs]), abs=0.02)
  assert test[over] == 0.0
  assert len(stats["warnings"]) == 1 and stats["warnings"][0].startswith(
      "train: the brain masks cover 100%")
  preview = np.asarray(Image.open(tmp_path / "run" / "data" / "preview.png"))
  assert (preview == report.BRAIN_RGB).all(axis=-1).sum() > 100
