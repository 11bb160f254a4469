"""The anomaly detector (`--mode=detect`) against sklearn, scipy and the data.

A fake method with a known reconstruction makes every residual computable by
hand: reconstruct(x) = x - 0.6 * lesion - 0.4 * u(x), with u uniform noise
seeded by the image itself, so residuals are 0.6 * lesion + 0.4 * u before
the brain mask and the median filter. The reference numbers are recomputed
here with numpy/scipy/sklearn from the pipeline's batches.
"""

import collections
import glob
import json
import os
import zlib

import jax
import jax.numpy as jnp
import ml_collections

from configs import base
import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage
from sklearn import metrics as skm

from genjax import anomaly
from genjax import protocol
from genjax.data import builders
from genjax.data import pipeline
from genjax.methods import Method

FakeState = collections.namedtuple("FakeState", "step")


# --- Pieces -------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 5])
def test_median_filter_matches_scipy(size):
  x = np.random.default_rng(0).normal(size=(2, 13, 10, 1)).astype(np.float32)
  want = scipy.ndimage.median_filter(x, size=(1, size, size, 1),
                                     mode="reflect")
  got = np.asarray(jax.jit(anomaly.median_filter, static_argnums=1)(x, size))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


def test_residual_map_masks_before_and_after_the_filter():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
  r = rng.uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
  brain = np.zeros_like(x)
  brain[:, 4:13, 3:11] = 1.0
  # Big differences outside the brain must not leak in through the filter.
  r[:, :4] = 10.0
  got = np.asarray(anomaly.residual_map(x, r, brain, 3))
  inner = scipy.ndimage.median_filter(brain * np.abs(x - r),
                                      size=(1, 3, 3, 1), mode="reflect")
  np.testing.assert_allclose(got, brain * inner, rtol=0, atol=1e-6)
  assert np.all(got[brain == 0] == 0)
  assert got.max() <= 2.0


def test_slice_scores():
  rng = np.random.default_rng(2)
  res = rng.uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)
  brain = (rng.uniform(size=res.shape) > 0.3).astype(np.float32)
  res = res * brain
  flat = res.reshape(4, -1)
  np.testing.assert_allclose(
      anomaly.slice_scores(res, brain, "top_k_mean", 5),
      np.sort(flat, axis=1)[:, -5:].mean(axis=1), rtol=1e-6)
  np.testing.assert_allclose(
      anomaly.slice_scores(res, brain, "mean", 5),
      flat.sum(1) / brain.reshape(4, -1).sum(1), rtol=1e-6)
  np.testing.assert_allclose(anomaly.slice_scores(res, brain, "sum", 5),
                             flat.sum(1), rtol=1e-6)


def _options(**fields):
  """The shared :smoke config with some config.anomaly fields changed."""
  config = base.get_base_config("smoke")
  config.anomaly.update(fields)
  return config


def _synthetic_batch(seed=5):
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (3, 12, 12, 1)).astype(np.float32)
  brain = np.zeros_like(images)
  brain[:, 2:10, 3:11] = 1.0
  return images, brain


def test_score_fn_averages_reconstructions():
  images, brain = _synthetic_batch()
  # reconstruct = x - c(rng), c in {0.1, ..., 0.4} drawn from the rng.
  shift = lambda rng: 0.1 * (1 + jax.random.randint(rng, (), 0, 4))
  method = Method(None, None, None, lambda s, x, rng: x - shift(rng))
  opts = anomaly.anomaly_options(_options(num_reconstructions=3,
                                          median_filter=1))
  rng = jax.random.key(0)
  out = jax.jit(anomaly.make_score_fn(method, opts))(None, images, brain, rng)
  want = np.mean([float(shift(k)) for k in jax.random.split(rng, 3)])
  np.testing.assert_allclose(out["residual"], brain * want, atol=1e-6)
  np.testing.assert_allclose(out["reconstruction"], images - want, atol=1e-6)


@pytest.mark.parametrize("returns", ["dict", "bare_slice", "bare_pixel"])
def test_method_hook_replaces_the_scores(returns):
  images, brain = _synthetic_batch()
  pixel = (images + 1.0) / 2.0
  image_score = images.mean(axis=(1, 2, 3))

  def hook(state, x, recon):
    del state, recon
    p, s = (x + 1.0) / 2.0, x.mean(axis=(1, 2, 3))
    return {"dict": {"pixel": p, "slice": s}, "bare_slice": s,
            "bare_pixel": p}[returns]

  method = Method(None, None, None, lambda s, x, rng: x * 0.5,
                  anomaly_score=hook)
  opts = anomaly.anomaly_options(_options(median_filter=3, slice_top_k=4))
  out = jax.jit(anomaly.make_score_fn(method, opts))(
      None, images, brain, jax.random.key(0))
  plain = np.abs(images - images * 0.5)
  used = plain if returns == "bare_slice" else pixel
  want = brain * scipy.ndimage.median_filter(
      brain * used, size=(1, 3, 3, 1), mode="reflect")
  np.testing.assert_allclose(out["residual"], want, atol=1e-6)
  if returns == "bare_pixel":
    top4 = np.sort(want.reshape(3, -1), axis=1)[:, -4:].mean(axis=1)
    np.testing.assert_allclose(out["slice_score"], top4, atol=1e-6)
  else:
    np.testing.assert_allclose(out["slice_score"], image_score, atol=1e-6)


def test_threshold_at_fpr_on_a_histogram():
  healthy = np.random.default_rng(3).gamma(2.0, 0.05, 200_000)
  opts = {"histogram_max": 2.0, "histogram_bins": 16384}
  hist = anomaly.new_histogram(opts)
  hist.update(healthy, np.zeros(healthy.shape, bool))
  for fpr in (0.01, 0.05):
    t, k, achieved = anomaly.histogram_threshold_at_fpr(hist, fpr)
    width = 2.0 / 16384
    flagged = np.floor(healthy * 16384 / 2.0) >= k
    # The lowest edge that flags at most fpr of the healthy pixels.
    assert np.mean(flagged) <= fpr
    assert np.mean(np.floor(healthy * 16384 / 2.0) >= k - 1) > fpr
    assert achieved == pytest.approx(np.mean(flagged))
    assert t == pytest.approx(k * width)
    assert abs(t - np.quantile(healthy, 1 - fpr)) <= 2 * width


def test_to_stored_grid_inverts_the_pipeline_fit():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  # A 20x16 slice fit into 40 px: scale 2, padded left and right.
  stored = (rng.uniform(size=(20, 16)) > 0.5).astype(np.float32)
  fit = pipeline._fit  # pylint: disable=protected-access
  fitted = fit(tf.constant(stored[..., None]), 40, "nearest", 0.0)
  back = anomaly.to_stored_grid(fitted.numpy()[..., 0], 20, 16, "nearest")
  np.testing.assert_array_equal(back, stored)
  # A smooth map survives a non-integer scale (24x18 in 32 px) closely.
  yy, xx = np.mgrid[0:24, 0:18]
  smooth = np.sin(yy / 5.0) * np.cos(xx / 4.0)
  fitted = fit(tf.constant(smooth[..., None], tf.float32), 32, "bilinear",
               0.0)
  back = anomaly.to_stored_grid(fitted.numpy()[..., 0], 24, 18)
  assert np.abs(back - smooth)[2:-2, 2:-2].max() < 0.05


def test_maps_without_affine_are_npy_stacks(tmp_path):
  slices = {3: (np.full((4, 4), 0.5, np.float32), np.ones((4, 4), bool)),
            5: (np.zeros((4, 4), np.float32), np.zeros((4, 4), bool))}
  geometry = {"shapes": {3: (4, 4), 5: (4, 4)}, "depth": 8,
              "affine": np.zeros((4, 4))}
  paths = anomaly.write_subject_maps(str(tmp_path), "s/1", geometry, slices)
  stack = np.load(tmp_path / "s_1_anomaly.npy")
  assert stack.shape == (2, 4, 4)
  np.testing.assert_array_equal(np.load(tmp_path / "s_1_slices.npy"), [3, 5])
  assert np.all(stack[0] == 0.5) and np.all(stack[1] == 0)
  pngs = sorted(os.path.basename(p) for p in paths if p.endswith(".png"))
  assert pngs == ["s_1_slice0003_anomaly.png", "s_1_slice0005_anomaly.png"]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  hot = np.asarray(Image.open(tmp_path / pngs[0]))
  cold = np.asarray(Image.open(tmp_path / pngs[1]))
  assert hot.shape == (4, 4, 3) and hot.sum() > cold.sum()


# --- The detector on the phantom with a fake method ---------------------------


def _batches(config, split):
  return list(pipeline.eval_batches(config.data, split,
                                    config.eval.batch_size))


def _noise(image):
  seed = zlib.crc32(np.ascontiguousarray(image).tobytes())
  return np.random.default_rng(seed).random(image.shape).astype(np.float32)


def _fake_method(config, lesion_weight, noise_weight):
  """reconstruct(x) = x - lesion_weight * lesion - noise_weight * u(x)."""
  masks = {}
  for split in (config.data.eval_split, config.data.val_split):
    for batch in _batches(config, split):
      for image, mask, valid in zip(batch["image"], batch["mask"],
                                    batch["valid"]):
        if valid:
          masks[image.tobytes()] = mask

  def offsets(images):
    images = np.asarray(images)
    return np.stack([
        lesion_weight * masks.get(im.tobytes(), np.zeros_like(im))
        + noise_weight * _noise(im) for im in images]).astype(np.float32)

  def reconstruct(state, images, rng):
    del state, rng
    return images - jax.pure_callback(
        offsets, jax.ShapeDtypeStruct(images.shape, jnp.float32), images)

  return Method(init=None, train_step=None, sample=None,
                reconstruct=reconstruct), offsets


def _reference(config, split, offsets, median):
  """Valid slices of `split`: residuals, masks, labels, subjects (numpy)."""
  out = collections.defaultdict(list)
  for batch in _batches(config, split):
    v = batch["valid"]
    x = batch["image"][v]
    brain = batch["brain"][v]
    res = brain * scipy.ndimage.median_filter(
        brain * offsets(x), size=(1, median, median, 1), mode="reflect")
    out["residual"].append(res[..., 0])
    out["brain"].append(brain[..., 0] > 0.5)
    out["lesion"].append((batch["mask"][v][..., 0] > 0.5)
                         & (brain[..., 0] > 0.5))
    out["label"].append(batch["label"][v])
    out["subject"].append(batch["subject"][v])
    out["slice"].append(batch["slice"][v])
  return {k: np.concatenate(v) for k, v in out.items()}


def _dice(pred, target):
  return 2 * np.sum(pred & target) / (np.sum(pred) + np.sum(target))


def _best_dice_numpy(scores, truth):
  """(Dice, threshold) maximising Dice over every distinct score."""
  return max((_dice(scores >= s, truth), s) for s in np.unique(scores))


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_detector_metrics_match_sklearn(smoke_config, tmp_path, fraction):
  config = smoke_config()
  config.anomaly.median_filter = 3
  config.anomaly.slice_top_k = 10
  config.anomaly.patient_val_fraction = fraction
  method, offsets = _fake_method(config, 0.6, 0.4)
  m = anomaly.detect(config, method, FakeState(jnp.zeros((), jnp.int32)),
                     str(tmp_path))
  test = _reference(config, "test", offsets, 3)
  val = _reference(config, "validation", offsets, 3)
  # The validation patients, split here from the reference's own subjects.
  patients = sorted({s for s, les in zip(test["subject"], test["lesion"])
                     if les.any()})
  assert len(patients) == 2  # The tiny phantom's test split.
  held = protocol.split_patients(patients, fraction)[0]
  assert len(held) == (0 if fraction == 0 else 1)
  assert m["lesion_validation"]["subjects"] == held
  assert m["lesion_validation"]["source"] == ("eval_split" if held else None)
  is_val = np.isin(test["subject"], held)
  vp = {k: v[is_val] for k, v in test.items()}
  test = {k: v[~is_val] for k, v in test.items()}
  assert m["n_test_subjects"] == len(np.unique(test["subject"]))
  assert m["n_test_slices"] == len(test["label"])  # Padding not counted.
  assert m["n_test_slices"] < sum(len(b["valid"]) for b in
                                  _batches(config, "test"))

  # Pixel level: every brain pixel of the test split.
  scores, truth = test["residual"][test["brain"]], test["lesion"][test["brain"]]
  assert m["n_test_brain_pixels"] == scores.size
  assert m["n_test_lesion_pixels"] == truth.sum() > 0
  # The histogram's rounding (2 / 16384) is all that separates them.
  assert m["auroc"] == pytest.approx(skm.roc_auc_score(truth, scores),
                                     abs=1e-3)
  assert m["auprc"] == pytest.approx(
      skm.average_precision_score(truth, scores), abs=2e-3)
  assert 0.55 < m["auroc"] < 0.999  # Non-trivial: the test can fail.

  # The threshold flags at most healthy_fpr of healthy validation pixels.
  healthy = val["residual"][val["brain"]]
  t, width = m["threshold"], 2.0 / 16384
  assert m["n_validation_pixels"] == healthy.size
  assert np.mean(healthy >= t) <= 0.01 < np.mean(healthy >= t - width)
  assert m["dice_at_threshold"] == pytest.approx(
      _dice(scores >= t, truth), abs=1e-6)
  # Best Dice: brute force over every distinct score.
  best = max(_dice(scores >= s, truth) for s in np.unique(scores[truth]))
  assert m["dice_best"] == pytest.approx(best, abs=0.01)
  assert m["dice_best"] >= m["dice_at_threshold"]

  # The validation threshold: Dice's argmax over the validation patients'
  # pixels only, then applied to the test pixels.
  if held:
    v_scores, v_truth = vp["residual"][vp["brain"]], vp["lesion"][vp["brain"]]
    dice_val, _ = _best_dice_numpy(v_scores, v_truth)
    assert m["dice_val"] == pytest.approx(dice_val, abs=0.01)
    # Exactly: the argmax over the 16384 bin edges of the rounded scores.
    q = np.floor(v_scores * 16384 / 2.0).astype(int)
    flagged = np.cumsum(np.bincount(q, minlength=16384)[::-1])[::-1]
    hits = np.cumsum(np.bincount(q[v_truth], minlength=16384)[::-1])[::-1]
    k = int(np.argmax(2 * hits / (flagged + v_truth.sum())))
    assert m["threshold_val"] == pytest.approx(k * 2.0 / 16384, abs=1e-9)
    assert _dice(v_scores >= m["threshold_val"], v_truth) == pytest.approx(
        m["dice_val"], abs=1e-6)
    assert m["dice_at_val_threshold"] == pytest.approx(
        _dice(scores >= m["threshold_val"], truth), abs=1e-6)
    assert m["auprc_val"] == pytest.approx(
        skm.average_precision_score(v_truth, v_scores), abs=2e-3)
    # The test subjects' pooled pixels are not the validation ones.
    assert abs(skm.average_precision_score(
        np.r_[truth, v_truth], np.r_[scores, v_scores]) - m["auprc"]) > 1e-3
  else:
    assert m["threshold_val"] is None and m["dice_at_val_threshold"] is None

  # Per-subject 3D Dice at the threshold, subjects with lesions only.
  want = {}
  for s in np.unique(test["subject"]):
    sel = test["subject"] == s
    lesion = test["lesion"][sel]
    if lesion.any():
      want[s] = _dice((test["residual"][sel] >= t) & test["brain"][sel],
                      lesion)
  assert set(m["dice_per_subject"]) == set(want)
  for s, d in want.items():
    assert m["dice_per_subject"][s] == pytest.approx(d, abs=1e-6)
  assert m["dice_per_subject_mean"] == pytest.approx(np.mean(list(
      want.values())), abs=1e-6)
  assert m["dice_per_subject_std"] == pytest.approx(np.std(list(
      want.values())), abs=1e-6)

  # Slice level: mean of the 10 largest residuals, valid slices only.
  flat = test["residual"].reshape(len(test["label"]), -1)
  slice_scores = np.sort(flat, axis=1)[:, -10:].mean(axis=1)
  want_auroc = skm.roc_auc_score(test["label"], slice_scores)
  assert m["slice_auroc"] == pytest.approx(want_auroc, abs=1e-6)
  assert m["slice_auprc"] == pytest.approx(
      skm.average_precision_score(test["label"], slice_scores), abs=1e-6)
  # Counting the padding slice (score 0, label 0) would have changed it.
  padded = skm.roc_auc_score(np.r_[test["label"], 0], np.r_[slice_scores, 0])
  assert abs(padded - want_auroc) > 1e-4

  # The NIfTI maps hold these residuals at the subject's voxels and affine.
  raw = {}
  for ex in builders.load_split(config.data, "test").as_numpy_iterator():
    raw[(ex["subject"].decode(), int(ex["slice"]))] = ex
  for s in np.unique(test["subject"]):
    img = nib.load(tmp_path / "maps" / f"{s}_anomaly.nii.gz")
    volume = np.asarray(img.dataobj)
    ks = test["slice"][test["subject"] == s]
    np.testing.assert_allclose(img.affine, raw[(s, int(ks[0]))]["affine"],
                               atol=1e-5)
    for k, res in zip(ks, test["residual"][test["subject"] == s]):
      # builders.display_slice is how the slices were cut from the volume.
      np.testing.assert_allclose(
          builders.display_slice(volume[:, :, k])[..., 0], res, atol=1e-6)
    others = np.setdiff1d(np.arange(volume.shape[2]), ks)
    assert np.all(volume[:, :, others] == 0)

  report = (tmp_path / "report.md").read_text()
  assert "dice_best" in report and "upper bound" in report
  assert (tmp_path / "examples.png").exists()


def test_perfect_detector_maps_the_lesions(smoke_config, tmp_path):
  config = smoke_config()
  config.anomaly.median_filter = 1
  method, _ = _fake_method(config, 0.6, 0.0)
  m = anomaly.detect(config, method, FakeState(jnp.zeros((), jnp.int32)),
                     str(tmp_path))
  assert m["auroc"] == 1.0 and m["auprc"] == 1.0
  assert m["dice_at_threshold"] == 1.0 and m["dice_best"] == 1.0
  assert m["dice_per_subject_mean"] == 1.0
  assert m["healthy_subject_fp_fraction_mean"] == 0.0
  assert m["dice_val"] == 1.0 and m["dice_at_val_threshold"] == 1.0
  # Every test lesion found, no false-positive component.
  assert m["lesions"]["n_lesions"] > 0 and m["lesions"]["detection_rate"] == 1
  assert m["lesions"]["fp_components_per_subject_mean"] == 0
  held = m["lesion_validation"]["subjects"]

  # The prediction maps hold the ground truth, at its voxels.
  kept = collections.defaultdict(set)
  for batch in _batches(config, "test"):
    for s, k, v in zip(batch["subject"], batch["slice"], batch["valid"]):
      if v:
        kept[str(s)].add(int(k))
  lesion_voxels = 0
  for ex in builders.load_split(config.data, "test").as_numpy_iterator():
    s, k = ex["subject"].decode(), int(ex["slice"])
    if s in held:  # Validation patients are not test subjects: no maps.
      assert not (tmp_path / "maps" / f"{s}_prediction.nii.gz").exists()
      continue
    pred = nib.load(tmp_path / "maps" / f"{s}_prediction.nii.gz")
    np.testing.assert_allclose(pred.affine, ex["affine"], atol=1e-5)
    plane = builders.display_slice(np.asarray(pred.dataobj)[:, :, k])
    want = (ex["mask"] > 0) & (ex["brain"] > 0) if k in kept[s] else 0
    np.testing.assert_array_equal(plane > 0, want)
    lesion_voxels += int(np.sum(plane > 0))
  assert lesion_voxels == m["n_test_lesion_pixels"] > 0
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["auroc"] == 1.0


# --- End to end on a trained DDPM ---------------------------------------------


def test_detect_mode_end_to_end(smoke_config, tmp_path):
  from genjax import modes  # pylint: disable=g-import-not-at-top
  from genjax import train  # pylint: disable=g-import-not-at-top
  config = smoke_config()
  config.train.num_steps = 2
  config.train.sample_every = 100
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  modes.run("detect", config, workdir)
  out = tmp_path / "detect"
  metrics = json.loads((out / "metrics.json").read_text())
  for key in ("auroc", "auprc", "dice_best", "threshold_best",
              "dice_at_threshold", "threshold", "dice_per_subject_mean",
              "slice_auroc", "config"):
    assert key in metrics, key
  assert metrics["step"] == 2
  for key in ("auroc", "auprc", "dice_best", "slice_auroc"):
    assert 0.0 <= metrics[key] <= 1.0
  assert metrics["config"]["method"] == "ddpm"
  report = (out / "report.md").read_text()
  assert "--mode=detect" in report and "![examples](examples.png)" in report
  assert "NIfTI with each subject's affine" in report
  # Slice folders (no affine) get PNG/.npy maps, and the report says so.
  slices_report = anomaly.write_detect_report(
      str(out / "slices_report.md"),
      dict(metrics, maps=["maps/s_slice0003_anomaly.png",
                          "maps/s_anomaly.npy"]), "cmd")
  text = open(slices_report).read()
  assert "per-slice PNGs and .npy stacks" in text and "NIfTI with" not in text
  assert (out / "examples.png").exists()
  maps = sorted(glob.glob(str(out / "maps" / "*_anomaly.nii.gz")))
  # One of the tiny phantom's two test patients is the validation patient.
  held = metrics["lesion_validation"]["subjects"]
  assert len(held) == 1 and metrics["lesion_validation"]["source"] == (
      "eval_split")
  assert len(maps) == metrics["n_test_subjects"] == 2
  assert not any(os.path.basename(p).startswith(held[0]) for p in maps)
  assert "dice_at_val_threshold" in report and "Lesions by size" in report
  data = anomaly.load_subject_histograms(out / "subject_histograms.npz")
  assert data["val_subjects"] == held and held[0] not in data["subjects"]
  assert data["threshold_val"] == metrics["threshold_val"]
  assert os.path.basename(maps[0]).startswith("phantom-tiny-test-")
