"""The lesion segmenter (genjax/segment.py) and the synthetic-data utility
study (experiments/ablations/synthetic_utility.py) at :smoke scale."""

import os

import jax
import numpy as np
import pytest
import scipy.spatial.distance
from sklearn.metrics import f1_score

from experiments.ablations import common
from experiments.ablations import synthetic_utility as su
from genjax import segment


def _random_masks(seed, n=9, size=8, p=0.3):
  rng = np.random.default_rng(seed)
  return (rng.random((n, size, size, 1)) < p).astype(np.float32)


def test_dice_per_subject_matches_f1_score_and_scipy():
  pred = _random_masks(0) * 0.9 + 0.05  # Probabilities around 0.5.
  mask = _random_masks(1)
  subjects = np.array(["b", "a", "c"] * 3)
  scores = segment.dice_scores(pred, mask, subjects)
  assert list(scores) == ["a", "b", "c"]
  for s, value in scores.items():
    rows = subjects == s
    p, m = pred[rows].ravel() > 0.5, mask[rows].ravel() > 0.5
    assert value == pytest.approx(f1_score(m, p))
    assert value == pytest.approx(1 - scipy.spatial.distance.dice(m, p))
  ids, counts = segment.dice_counts(pred, mask, subjects)
  assert ids == ["a", "b", "c"]
  assert segment.dice_of_counts(counts) == pytest.approx(
      f1_score(mask.ravel() > 0.5, pred.ravel() > 0.5))
  # Two empty masks agree; a miss scores 0; the threshold is applied.
  empty = np.zeros((1, 4, 4, 1))
  assert segment.dice_scores(empty, empty) == {"": 1.0}
  assert segment.dice_scores(empty, np.ones_like(empty)) == {"": 0.0}
  assert segment.dice_scores(np.full_like(empty, 0.6), np.ones_like(empty),
                             threshold=0.7) == {"": 0.0}


def test_summary_of_dice_and_its_bootstrap_by_hand():
  # Subjects: (|P & M|, |P|, |M|).
  counts = np.array([[2, 4, 4], [0, 3, 1], [5, 5, 5]])
  plan = np.array([[0, 0, 1], [2, 2, 2], [0, 1, 2]])
  out = su.summarise(counts, plan)
  per_subject = np.array([0.5, 0.0, 1.0])
  assert out["pooled"]["value"] == pytest.approx(2 * 7 / 22)
  assert out["mean_subject"]["value"] == pytest.approx(0.5)
  assert out["pooled"]["draws"] == pytest.approx([2 * 4 / 20, 1.0,
                                                  2 * 7 / 22])
  assert out["mean_subject"]["draws"] == pytest.approx(
      [per_subject[r].mean() for r in plan])
  want = common.percentile_interval(out["pooled"]["draws"])
  assert (out["pooled"]["lo"], out["pooled"]["hi"]) == (want["lo"],
                                                        want["hi"])
  # Two seeds: pixels pooled over both, each subject's Dice averaged.
  other = np.array([[4, 4, 4], [1, 1, 1], [0, 5, 5]])
  both = su.summarise(np.stack([counts, other]), plan)
  assert both["pooled"]["value"] == pytest.approx(
      2 * 12 / (22 + 20))
  assert both["mean_subject"]["value"] == pytest.approx(
      np.mean([(0.5 + 1) / 2, (0 + 1) / 2, (1 + 0) / 2]))


def test_soft_dice_and_bce_against_numpy():
  rng = np.random.default_rng(3)
  logits = rng.normal(0, 2, (3, 5, 5, 1)).astype(np.float32)
  masks = (rng.random((3, 5, 5, 1)) < 0.4).astype(np.float32)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  dice = 1 - (2 * (p * masks).sum() + 1) / (p.sum() + masks.sum() + 1)
  bce = -np.mean(masks * np.log(p) + (1 - masks) * np.log(1 - p))
  assert float(segment.soft_dice_loss(logits, masks)) == pytest.approx(
      dice, rel=1e-5)
  assert float(segment.bce_loss(logits, masks)) == pytest.approx(bce,
                                                                 rel=1e-5)
  loss, parts = segment.loss_fn(logits, masks, dice_weight=2.0)
  assert float(loss) == pytest.approx(2 * dice + bce, rel=1e-5)
  assert float(parts["dice_loss"]) == pytest.approx(dice, rel=1e-5)
  # Confident and right: both parts near 0.
  sure = np.where(masks > 0, 20.0, -20.0)
  assert float(segment.loss_fn(sure, masks)[0]) < 1e-3


# One segmenter, image size, batch and step size for every test here (the
# study's included): its train step and prediction compile once.
SEGMENTER = {"base_channels": 8, "channel_mult": (1, 2), "num_groups": 4}
SIZE, BATCH, LR = 32, 8, 3e-3


def _disks(n, size, seed):
  """Bright disks (the lesions) on Gaussian noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  images = rng.normal(0, 0.3, (n, size, size, 1)).astype(np.float32)
  masks = np.zeros((n, size, size, 1), np.float32)
  for i in range(n):
    cy, cx = rng.integers(6, size - 6, 2)
    r = rng.integers(2, 5)
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    masks[i, ..., 0] = disk
    images[i, ..., 0] += disk
  return images, masks


def test_segmenter_learns_bright_disks():
  model = segment.make_model(**SEGMENTER)
  images, masks = _disks(48, SIZE, 0)
  state, losses = segment.train(model, images, masks, steps=40,
                                batch_size=BATCH, learning_rate=LR, seed=0)
  assert int(state.step) == 40 and losses.shape == (40,)
  assert losses[-5:].mean() < 0.5 * losses[:5].mean()
  test_images, test_masks = _disks(10, SIZE, 1)
  probs = segment.predict(model, state.params, test_images)
  assert probs.shape == test_masks.shape
  assert np.all((probs >= 0) & (probs <= 1))
  dice = segment.dice_scores(probs, test_masks)[""]
  assert dice > 0.8, dice


def test_training_weights_choose_the_pairs():
  """A pair of weight 0 is never drawn: trained only on empty masks, the
  segmenter predicts no lesion anywhere."""
  model = segment.make_model(**SEGMENTER)
  images, masks = _disks(8, SIZE, 2)
  masks[4:] = 0.0
  weights = np.r_[np.zeros(4), np.ones(4)]
  state, _ = segment.train(model, images, masks, steps=15, batch_size=BATCH,
                           learning_rate=LR, weights=weights)
  probs = segment.predict(model, state.params, images[:4])
  assert probs.max() < 0.5
  with pytest.raises(ValueError, match="non-negative"):
    segment.train(model, images, masks, steps=1, weights=-weights)


def test_healthy_pairing_and_arm_mixing():
  size = 8
  masks = np.zeros((2, size, size, 1), np.float32)
  masks[0, 1:3, 1:3] = 1  # Only brain 1 covers it.
  masks[1, 5:7, 5:8] = 1  # Brain 0 covers 4 of its 6 pixels, brain 2 none.
  brains = np.zeros((3, size, size, 1), np.float32)
  brains[0, 4:, 4:7] = 1
  brains[1, :4, :4] = 1
  idx, clipped, coverage = su.pair_with_healthy(masks, brains,
                                                np.random.default_rng(0))
  assert list(idx) == [1, 0]
  np.testing.assert_allclose(coverage, [1.0, 4 / 6])
  np.testing.assert_array_equal(clipped[0], masks[0])
  assert clipped[1].sum() == 4 and not clipped[1, :, 7].any()

  real = {"image": np.zeros((2, size, size, 1)), "mask": masks}
  synthetic = {"images": np.ones((6, size, size, 1)),
               "masks": np.ones((6, size, size, 1))}
  images, _, weights = su.arm_pairs("real_synthetic", real, synthetic, 0.25)
  assert len(images) == 8 and weights.sum() == pytest.approx(1.0)
  assert weights[:2].sum() == pytest.approx(0.25)
  assert su.arm_pairs("real", real, synthetic, 0.25)[2] is None
  assert su.choose_patients(["p0", "p1", "p2"], 2) == su.choose_patients(
      ["p0", "p1", "p2"], 2)
  with pytest.raises(ValueError, match="real_patients"):
    su.choose_patients(["p0"], 2)


@pytest.fixture(scope="module")
def trained_generator(tmp_path_factory, phantom_data_dir):
  """A :smoke lesion_ddpm trained for 4 steps (config, workdir)."""
  from configs import lesion_ddpm  # pylint: disable=g-import-not-at-top
  from genjax import train  # pylint: disable=g-import-not-at-top
  config = lesion_ddpm.get_config("smoke")
  config.data.data_dir = phantom_data_dir
  workdir = str(tmp_path_factory.mktemp("generator"))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_study_end_to_end_and_reuse(trained_generator, tmp_path):
  config, generator = trained_generator
  workdir = str(tmp_path / "utility")
  kwargs = dict(real_patients=1, num_synthetic=5, seeds=(0, 1), steps=3,
                batch_size=BATCH, learning_rate=LR, segmenter=SEGMENTER,
                num_resamples=50)
  result = su.run(workdir, config, generator, **kwargs)
  rows = result["rows"]
  assert [(r["arm"], r["seed"]) for r in rows] == [
      (a, s) for a in su.ARMS for s in ("0", "1", "all")]
  for r in rows:
    assert 0.0 <= r["pooled_dice"] <= 1.0
    assert r["pooled_lo"] <= r["pooled_hi"]
    if r["arm"] == "real":
      assert r["d_pooled"] == 0.0 and r["n_synthetic"] == 0
  assert {r["n_synthetic"] for r in rows if r["arm"] != "real"} == {5}
  assert {r["n_real"] for r in rows if r["arm"] == "synthetic"} == {0}
  for name in ("utility.md", "utility.csv", "utility.json",
               "utility_pairs.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert len(common.read_csv(os.path.join(workdir, "utility.csv"))) == 9
  md = open(os.path.join(workdir, "utility.md")).read()
  assert "synthetic only" in md and "Fidelity" in md

  # The synthetic pairs: masks of the other training patients, painted
  # into healthy slices, unchanged outside the masks.
  with np.load(os.path.join(workdir, "synthetic", "synthetic.npz")) as z:
    syn = {k: z[k] for k in z.files}
  assert syn["images"].shape == syn["masks"].shape == (5, 32, 32, 1)
  assert all(s.split("/")[0] not in result["real_patients"]
             for s in syn["sources"])
  outside = syn["masks"] == 0
  np.testing.assert_array_equal(syn["images"][outside],
                                syn["healthy"][outside])
  assert syn["masks"].reshape(5, -1).sum(1).min() > 0
  fid = result["fidelity"]
  assert [d["seed"] for d in fid["segmenter_dice"]] == [0, 1]
  assert set(fid["intensity"]) == {"synthetic", "real_train",
                                   "healthy_before"}
  inside = syn["masks"][..., 0] > 0.5
  assert fid["intensity"]["synthetic"]["image"]["mean"] == pytest.approx(
      syn["images"][..., 0][inside].mean(), rel=1e-5)

  # Everything is reused: nothing trained or painted again, same tables.
  again = su.run(workdir, config, generator, **kwargs)
  assert again["computed"] == []
  assert again["rows"] == rows
  # New synthetic pairs: painted, the arms trained on them retrained, the
  # real arm only re-scored on them.
  third = su.run(workdir, config, generator, **dict(kwargs, num_synthetic=4))
  done = sorted((kind, os.path.relpath(path, workdir))
                for kind, path in third["computed"])
  assert done == sorted(
      [("synthetic", os.path.join("synthetic", "synthetic.npz"))]
      + [("fidelity", os.path.join("runs", "real", f"seed_{s}",
                                   "fidelity.json")) for s in (0, 1)]
      + [("train", os.path.join("runs", a, f"seed_{s}"))
         for a in ("real_synthetic", "synthetic") for s in (0, 1)])
  assert {r["n_synthetic"] for r in third["rows"] if r["arm"] != "real"} == {4}
  assert [r["pooled_dice"] for r in third["rows"] if r["arm"] == "real"] == [
      r["pooled_dice"] for r in rows if r["arm"] == "real"]
  # The real arm alone (as for a curve over K) reuses its runs; an arm set
  # without the real arm has nothing to be compared with.
  alone = su.run(workdir, config, generator, **dict(kwargs, num_synthetic=4),
                 arms=("real",))
  assert [k for k, _ in alone["computed"]] == []
  assert [(r["arm"], r["seed"]) for r in alone["rows"]] == [
      ("real", s) for s in ("0", "1", "all")]
  with pytest.raises(ValueError, match="includes 'real'"):
    su.run(workdir, config, generator, **kwargs, arms=("synthetic",))
