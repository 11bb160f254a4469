"""The ablation scripts (experiments/ablations/) end to end on :smoke.

Each script trains (a few steps), evaluates and detects through genjax's own
functions on the tiny phantom; the tests check the files they write agree with
the detector's and evaluator's metrics.json, that a second run recomputes
nothing, and the bootstrap and lesion-like measures against hand-made cases.
"""

import json
import os

import numpy as np
import pytest

from experiments.ablations import common
from genjax import anomaly
from genjax.metrics import detection


# --- Shared helpers -------------------------------------------------------------


def test_overrides_parse_literals_and_reject_unknown_fields():
  from configs import ddpm
  config = ddpm.get_config("smoke")
  common.apply_overrides(config, ["anomaly.noise_level=75",
                                  "config.anomaly.noise=simplex",
                                  "model.channel_mult=(1, 2)",
                                  "data.lesion_fraction=0.5"])
  assert config.anomaly.noise_level == 75
  assert config.anomaly.noise == "simplex"
  assert config.model.channel_mult == (1, 2)
  assert config.data.lesion_fraction == 0.5
  with pytest.raises(KeyError, match="noise_level"):
    common.apply_overrides(config, ["anomaly.noise_levl=3"])
  with pytest.raises(ValueError, match="FIELD=VALUE"):
    common.apply_overrides(config, ["anomaly.noise_level"])


def test_config_from_workdir_round_trips(tmp_path):
  from configs import vae
  from genjax import train
  config = vae.get_config("smoke")
  config.vae.lesion_weight = 7.0
  config.train.num_steps = 11
  config.model.channels = (4, 8)
  config.data.lesion_fraction = 0.25
  train.check_workdir_config(config, str(tmp_path))
  rebuilt = common.config_from_workdir(str(tmp_path))
  assert common.config_differences(config, rebuilt, ignored=()) == []
  assert rebuilt.model.channels == (4, 8)  # A tuple again, not a list.


def _hist_data(pos, neg, threshold, bins=16):
  """A load_subject_histograms-like dict from per-subject bin counts."""
  pos, neg = np.asarray(pos, np.int64), np.asarray(neg, np.int64)
  return {"subjects": [f"s{i}" for i in range(len(pos))], "pos": pos,
          "neg": neg, "low": 0.0, "high": float(bins), "threshold": threshold}


def test_bootstrap_of_two_subjects_by_hand():
  # 4 bins on [0, 4): bin k holds score k. Subject A: lesion pixels score 3,
  # healthy ones 0 -> separable. Subject B: 1 lesion pixel at score 1,
  # 1 healthy at 2 -> reversed.
  a_pos, a_neg = [0, 0, 0, 2], [2, 0, 0, 0]
  b_pos, b_neg = [0, 1, 0, 0], [0, 0, 1, 0]
  data = _hist_data([a_pos, b_pos], [a_neg, b_neg], threshold=2.5, bins=4)
  data["high"] = 4.0
  # By hand: AA or A alone: AUPRC 1, Dice at 2.5 (bins >= 3) = 2*2/(2+2)=1.
  # BB: AUPRC = precision at recall 1 = 1/2 (score 2 healthy first); Dice 0.
  # A+B: ranking 3,3 (lesion), 2 (healthy), 1 (lesion), 0, 0:
  #   AP = 2/3 * 1 + 1/3 * 3/4 = 0.91666...; Dice at 2.5 = 2*2/(2+3) = 0.8.
  want = {(0, 0): (1.0, 1.0), (1, 1): (0.5, 0.0), (0, 1): (11 / 12, 0.8)}
  for rows, (ap, dice) in want.items():
    m = common.histogram_metrics(anomaly.pooled_histogram(data, rows), 2.5)
    assert m["auprc"] == pytest.approx(ap)
    assert m["dice_at_threshold"] == pytest.approx(dice)
  out = common.bootstrap_subjects(data, resamples=[[0, 0], [1, 1], [0, 1],
                                                   [1, 0]], level=0.5)
  # Point estimate: both subjects once.
  assert out["auprc"]["value"] == pytest.approx(11 / 12)
  assert out["dice_at_threshold"]["value"] == pytest.approx(0.8)
  # Four replicates 1, 1/2, 11/12, 11/12: the 25th/75th percentiles.
  draws = np.array([1.0, 0.5, 11 / 12, 11 / 12])
  assert out["auprc"]["lo"] == pytest.approx(np.percentile(draws, 25))
  assert out["auprc"]["hi"] == pytest.approx(np.percentile(draws, 75))
  assert out["auprc"]["n_valid"] == 4
  # Random resamples only take these three values, in about 1:2:1.
  rng = np.random.default_rng(0)
  res = rng.integers(0, 2, size=(2000, 2))
  out = common.bootstrap_subjects(data, resamples=res, level=0.95)
  assert out["auprc"]["lo"] == pytest.approx(0.5)
  assert out["auprc"]["hi"] == pytest.approx(1.0)


def test_bootstrap_point_estimate_equals_pooled_metrics():
  rng = np.random.default_rng(3)
  subjects = []
  pooled = detection.ScoreHistogram(0.0, 2.0, 64)
  per = []
  for s in range(5):
    h = detection.ScoreHistogram(0.0, 2.0, 64)
    scores = rng.uniform(0, 2, 300)
    labels = rng.uniform(size=300) < (0.1 if s < 4 else 0.0)
    scores[labels] += 0.3
    h.update(np.clip(scores, 0, 1.99), labels)
    pooled.update(np.clip(scores, 0, 1.99), labels)
    per.append(h)
  data = {"subjects": [str(i) for i in range(5)],
          "pos": np.stack([h.pos for h in per]),
          "neg": np.stack([h.neg for h in per]), "low": 0.0, "high": 2.0,
          "threshold": 1.0}
  out = common.bootstrap_subjects(data, num_resamples=50)
  assert out["auprc"]["value"] == pooled.auprc()
  assert out["auroc"]["value"] == pooled.auroc()
  assert out["dice_at_threshold"]["value"] == pooled.dice_at(1.0)
  assert out["dice_best"]["value"] == pooled.best_dice()[0]
  assert out["auprc"]["lo"] <= out["auprc"]["hi"]


# --- The scripts, end to end ------------------------------------------------------


@pytest.fixture(scope="module")
def trained_ddpm(tmp_path_factory, phantom_data_dir):
  """A :smoke DDPM trained for 4 steps (config, workdir)."""
  from configs import ddpm
  from genjax import train
  config = ddpm.get_config("smoke")
  config.data.data_dir = phantom_data_dir
  workdir = str(tmp_path_factory.mktemp("ddpm"))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_noise_level_sweep_writes_consistent_tables_and_resumes(trained_ddpm):
  from experiments.ablations import noise_level
  _, workdir = trained_ddpm
  config = common.config_from_workdir(workdir)
  common.apply_overrides(config, ["anomaly.write_maps=False"])
  levels, noises = (10, 40), ("gaussian", "simplex")
  first = noise_level.run(config, workdir, levels, noises, num_resamples=20)
  assert sorted(first["computed"]) == sorted(
      (n, t) for n in noises for t in levels)
  root = first["root"]
  rows = common.read_csv(os.path.join(root, "results.csv"))
  assert len(rows) == len(levels) * len(noises)
  for row in rows:
    out = noise_level.level_dir(root, row["noise"], int(row["t"]))
    with open(os.path.join(out, "metrics.json")) as f:
      metrics = json.load(f)
    assert metrics["config"]["anomaly"]["noise"] == row["noise"]
    assert metrics["config"]["anomaly"]["noise_level"] == int(row["t"])
    for key in ("auprc", "auroc", "dice_at_threshold", "dice_best"):
      assert float(row[key]) == metrics[key]
      assert float(row[f"{key}_lo"]) <= float(row[f"{key}_hi"])
    # The per-subject histograms add up to the pooled metrics.
    data = anomaly.load_subject_histograms(
        os.path.join(out, "subject_histograms.npz"))
    assert data["threshold"] == metrics["threshold"]
    pooled = anomaly.pooled_histogram(data)
    assert pooled.num_pos == metrics["n_test_lesion_pixels"]
    assert pooled.auprc() == metrics["auprc"]
    assert len(data["subjects"]) == metrics["n_test_subjects"]
    for s, dice in metrics["dice_per_subject"].items():
      one = anomaly.pooled_histogram(data, [data["subjects"].index(s)])
      assert one.dice_at(data["threshold"]) == pytest.approx(dice)
  md = open(os.path.join(root, "results.md")).read()
  for row in rows:
    assert common.fmt(float(row["auprc"]), 3) in md
  # t chosen per noise by the validation patients' AUPRC.
  for noise in noises:
    sel = [r for r in rows if r["noise"] == noise]
    best = max(sel, key=lambda r: (float(r["auprc_val"]), -int(r["t"])))
    assert [r["t"] for r in sel if r["chosen"] == "True"] == [best["t"]]
  assert "chosen on validation patients (1 subjects), reported on test " in md
  for name in ("metrics.png", "residuals_gaussian.png",
               "residuals_simplex.png", "results.json"):
    assert os.path.getsize(os.path.join(root, name)) > 0

  stamps = {r: os.path.getmtime(os.path.join(
      noise_level.level_dir(root, n, t), "metrics.json"))
            for r, (n, t) in enumerate((n, t) for n in noises
                                       for t in levels)}
  second = noise_level.run(config, workdir, levels, noises, num_resamples=20)
  assert second["computed"] == []
  assert [r["auprc"] for r in second["rows"]] == [
      r["auprc"] for r in first["rows"]]
  for r, (n, t) in enumerate((n, t) for n in noises for t in levels):
    assert os.path.getmtime(os.path.join(
        noise_level.level_dir(root, n, t), "metrics.json")) == stamps[r]
  # Another sampler is another experiment: recomputed, not reused.
  common.apply_overrides(config, ["anomaly.sampler=ddpm"])
  third = noise_level.run(config, workdir, (10,), ("gaussian",),
                          num_resamples=5)
  assert third["computed"] == [("gaussian", 10)]


def test_compare_models_seeds_grids_tables_and_resume(tmp_path,
                                                     phantom_data_dir,
                                                     monkeypatch):
  from experiments.ablations import compare_models
  monkeypatch.setitem(compare_models.GRIDS, "ddpm",
                      ("anomaly.noise_level", (5, 20)))
  workdir = str(tmp_path / "compare")
  entries = ("floor", "vae", "ddpm", "one_step")
  configs = compare_models.build_configs(
      "smoke", entries,
      [f"data.data_dir={phantom_data_dir}", "anomaly.write_maps=False"])
  first = compare_models.run(workdir, configs, seeds=(0, 1),
                             num_resamples=20)
  computed = sorted(first["computed"])
  # One training run per trainable network and seed (one_step reuses the
  # DDPM's), eval on the first seed only, every detector once.
  assert sorted(d for k, d in computed if k == "train") == sorted(
      os.path.join(workdir, f"seed{s}", m) for s in (0, 1)
      for m in ("vae", "ddpm"))
  assert sorted(d for k, d in computed if k == "eval") == sorted(
      os.path.join(workdir, "seed0", m, "eval") for m in ("vae", "ddpm"))
  assert sum(k == "detect" for k, _ in computed) == 2 * (1 + 1 + 2 + 1)
  table = first["table"]
  for s in (0, 1):
    ddpm_dir = os.path.join(workdir, f"seed{s}", "ddpm")
    grid = {t: json.load(open(os.path.join(
        ddpm_dir, "detect_ddpm", f"anomaly.noise_level={t}",
        "metrics.json"))) for t in (5, 20)}
    # The grid value with the best validation AUPRC (ties: the first).
    best = max((5, 20), key=lambda t: (grid[t]["auprc_val"], -t))
    assert f"s{s}: noise_level={best}" in table["ddpm"]["chosen"]
    one_step = json.load(open(os.path.join(ddpm_dir, "detect_one_step",
                                           "metrics.json")))
    assert one_step["network_calls_per_slice"] == 3
  runs = json.load(open(os.path.join(workdir, "comparison.json")))["entries"]
  for e in entries:
    values = [r["metrics"]["auprc"] for r in runs[e]["runs"]]
    assert table[e]["auprc"] == pytest.approx(np.mean(values))
    assert table[e]["auprc_sd"] == pytest.approx(np.std(values, ddof=1))
    lo, hi = table[e]["auprc_lo"], table[e]["auprc_hi"]
    assert lo <= hi
  # The seeds trained different networks; the floor has none.
  vae_runs = runs["vae"]["runs"]
  assert vae_runs[0]["metrics"]["auprc"] != vae_runs[1]["metrics"]["auprc"]
  floor_runs = runs["floor"]["runs"]
  assert floor_runs[0]["metrics"]["auprc"] == floor_runs[1]["metrics"][
      "auprc"]
  md = open(os.path.join(workdir, "comparison.md")).read()
  assert "NOT FID" in md and "| one_step |" in md
  for name in ("samples.png", "reconstructions.png", "residuals.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0

  second = compare_models.run(workdir, configs, seeds=(0, 1),
                              num_resamples=20)
  assert second["computed"] == []
  assert second["table"] == table


def test_compare_models_bootstrap_interval_is_of_the_seed_mean(tmp_path):
  """summarise() against a hand computation on two fake seeds' histograms."""
  from experiments.ablations import compare_models
  rng = np.random.default_rng(0)
  runs = []
  for seed in (0, 1):
    d = tmp_path / f"s{seed}"
    d.mkdir()
    hists = {}
    for subject in ("a", "b", "c", "d"):
      h = detection.ScoreHistogram(0.0, 2.0, 32)
      scores = rng.uniform(0, 2, 400)
      labels = rng.uniform(size=400) < 0.1 + 0.3 * (scores > 1.2)
      h.update(scores, labels)
      hists[subject] = h
    path = anomaly.write_subject_histograms(str(d / "h.npz"), hists,
                                            threshold=1.0)
    pooled = anomaly.pooled_histogram(anomaly.load_subject_histograms(path))
    runs.append({"seed": seed, "dir": str(d), "grid": None, "metrics": {
        "subject_histograms": "h.npz", "auprc": pooled.auprc(),
        "auroc": pooled.auroc(), "dice_at_val_threshold": None, "step": 1,
        "slice_auroc": None, "network_calls_per_slice": 1,
        "seconds_per_slice": 0.5, "n_test_slices": 8,
        "n_test_subjects": 4}})
  row = compare_models.summarise({"floor": runs}, num_resamples=50)["floor"]
  resamples = common.subject_resamples(4, 50)
  means = []
  for rows in resamples:
    vals = [anomaly.pooled_histogram(anomaly.load_subject_histograms(
        os.path.join(r["dir"], "h.npz")), rows).auprc() for r in runs]
    means.append(np.mean(vals))
  assert row["auprc"] == pytest.approx(np.mean([r["metrics"]["auprc"]
                                                for r in runs]))
  assert row["auprc_lo"] == pytest.approx(np.percentile(means, 2.5))
  assert row["auprc_hi"] == pytest.approx(np.percentile(means, 97.5))
  assert row["seconds_per_volume"] == pytest.approx(0.5 * 8 / 4)


def _synthetic_brain(blob=None, size=48):
  """A bright disk (brain, value 0.5) on a -1 background; `blob` = (row,
  col, radius) of a dark (-0.8) disk inside it."""
  yy, xx = np.mgrid[:size, :size]
  image = np.full((size, size, 1), -1.0, np.float32)
  image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2 - 3) ** 2] = 0.5
  if blob is not None:
    r, c, radius = blob
    image[(yy - r) ** 2 + (xx - c) ** 2 <= radius ** 2] = -0.8
  return image


def test_lesion_like_measure_on_synthetic_images():
  from experiments.ablations import class_imbalance as ci
  rng = np.random.default_rng(0)
  healthy = [_synthetic_brain() + rng.normal(0, 0.05, (48, 48, 1)).astype(
      np.float32) * (_synthetic_brain() > -1) for _ in range(4)]
  threshold = ci.healthy_intensity_threshold(healthy, 1.0)
  assert 0.2 < threshold < 0.5  # Noise around 0.5, not the background.
  with_blob = _synthetic_brain((24, 16, 3))  # 29 dark pixels inside.
  sizes = ci.lesion_like_components(with_blob, threshold, min_pixels=10)
  assert sizes == [int(np.sum(with_blob[..., 0] == -0.8))]
  assert ci.lesion_like_components(_synthetic_brain(), threshold, 10) == []
  # Too small a blob does not count; nor does darkness outside the brain.
  tiny = _synthetic_brain((24, 16, 1))
  assert ci.lesion_like_components(tiny, threshold, min_pixels=10) == []
  outside = _synthetic_brain()
  outside[1:4, 1:10] = -0.95
  assert ci.lesion_like_components(outside, threshold, 3) == []
  # The dark rim at the brain's edge (partial volume) is eroded away.
  rim = _synthetic_brain()
  edge = (ci.brain_region(rim[..., 0], erosion=0)
          & ~ci.brain_region(rim[..., 0]))
  rim[..., 0][edge] = -0.8
  assert ci.lesion_like_components(rim, threshold, 3) == []
  assert ci.lesion_like_fraction(np.stack([with_blob, healthy[0], rim,
                                           tiny]), threshold, 10) == 0.25


def test_class_imbalance_table_and_resume(tmp_path, phantom_data_dir):
  from experiments.ablations import class_imbalance as ci
  workdir = str(tmp_path / "imbalance")
  configs = ci.build_configs(
      "smoke", ("baseline", "lesion_weight"), steps=3,
      overrides=[f"data.data_dir={phantom_data_dir}",
                 "anomaly.write_maps=False"])
  assert configs["lesion_weight"].vae.lesion_weight == 10.0
  assert configs["baseline"].data.train_split == "train_mixed"
  assert configs["baseline"].train.num_steps == 3
  first = ci.run(workdir, configs, num_samples=6)
  kinds = sorted(k for k, _ in first["computed"])
  # measure: reference.json, and healthy bias and samples per remedy.
  assert kinds == ["detect"] * 2 + ["eval"] * 2 + ["measure"] * 5 + [
      "train"] * 2
  rows = common.read_csv(os.path.join(workdir, "imbalance.csv"))
  assert [r["remedy"] for r in rows] == ["baseline", "lesion_weight"]
  for row in rows:
    run_dir = os.path.join(workdir, row["remedy"])
    det = json.load(open(os.path.join(run_dir, "detect", "metrics.json")))
    ev = json.load(open(os.path.join(run_dir, "eval", "metrics.json")))
    assert float(row["auprc"]) == det["auprc"]
    assert float(row["ssim"]) == ev["reconstruction"]["test"]["ssim"]
    assert int(row["step"]) == 3
    lesion, tissue = float(row["lesion_error"]), float(row["tissue_error"])
    assert float(row["lesion_tissue_ratio"]) == pytest.approx(lesion / tissue)
    assert 0.0 <= float(row["lesion_like_fraction"]) <= 1.0
    assert int(row["n_samples"]) == 6
  for name in ("imbalance.md", "imbalance.png", "reconstructions.png",
               "imbalance.json", "reference.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  second = ci.run(workdir, configs, num_samples=6)
  assert second["computed"] == []
  assert second["rows"] == first["rows"]


def test_healthy_bias_against_a_hand_computed_reconstruction(smoke_config):
  import collections
  import jax.numpy as jnp
  from configs import vae
  from experiments.ablations import class_imbalance as ci
  from genjax.methods import Method
  config = smoke_config(vae)
  # reconstruct(x) = x / 2: the error is |x| / 2 everywhere.
  method = Method(None, None, None, lambda state, x, rng: x / 2)
  state = collections.namedtuple("S", "step")(jnp.zeros((), jnp.int32))
  got = ci.healthy_bias(config, method, state)
  err, n = np.zeros(2), np.zeros(2)
  for batch in anomaly.eval_batches(config, config.data.eval_split):
    use = np.asarray(batch["valid"], bool) & (batch["label"] == 1)
    e = np.abs(batch["image"][use][..., 0]) / 2
    brain = batch["brain"][use][..., 0] > 0.5
    lesion = brain & (batch["mask"][use][..., 0] > 0.5)
    err += [e[lesion].sum(), e[brain & ~lesion].sum()]
    n += [lesion.sum(), (brain & ~lesion).sum()]
  assert got["n_lesion_pixels"] == n[0] > 0
  assert got["lesion_error"] == pytest.approx(err[0] / n[0], rel=1e-5)
  assert got["tissue_error"] == pytest.approx(err[1] / n[1], rel=1e-5)
  # Per subject, by hand, and the pooled ratio from those sums.
  by_subject = {}
  for batch in anomaly.eval_batches(config, config.data.eval_split):
    use = np.asarray(batch["valid"], bool) & (batch["label"] == 1)
    for image, brain, mask, subject in zip(
        batch["image"][use], batch["brain"][use], batch["mask"][use],
        np.asarray(batch["subject"])[use]):
      e, b = np.abs(image[..., 0]) / 2, brain[..., 0] > 0.5
      les = b & (mask[..., 0] > 0.5)
      row = by_subject.setdefault(str(subject), np.zeros(4))
      row += [e[les].sum(), e[b & ~les].sum(), les.sum(), (b & ~les).sum()]
  assert got["subjects"] == sorted(by_subject)
  np.testing.assert_allclose(got["per_subject"],
                             [by_subject[k] for k in sorted(by_subject)],
                             rtol=1e-5)
  ci_ = got["bootstrap"]["lesion_tissue_ratio"]
  assert ci_["lo"] <= got["lesion_tissue_ratio"] <= ci_["hi"]


def test_error_ratio_bootstrap_by_hand():
  from experiments.ablations import class_imbalance as ci
  # Two subjects: (lesion sum, tissue sum, lesion n, tissue n).
  table = [[6.0, 10.0, 3, 20], [2.0, 30.0, 1, 30]]
  pooled = ci.error_ratio(table)
  assert pooled["lesion_error"] == 8 / 4 and pooled["tissue_error"] == 40 / 50
  assert pooled["lesion_tissue_ratio"] == pytest.approx(2.5)
  # Resamples {0, 0}, {1, 1}, {0, 1}: ratios 4, 2, 2.5 (pooled within one).
  boot = ci.bootstrap_error_ratio(table, resamples=[[0, 0], [1, 1], [0, 1]],
                                  level=0.5)
  assert boot["lesion_tissue_ratio"]["lo"] == pytest.approx(
      np.percentile([4.0, 2.0, 2.5], 25))
  assert boot["lesion_tissue_ratio"]["hi"] == pytest.approx(
      np.percentile([4.0, 2.0, 2.5], 75))
  # A subject without lesion pixels alone has no lesion error: left out.
  boot = ci.bootstrap_error_ratio([[0.0, 5.0, 0, 10], [2.0, 4.0, 1, 4]],
                                  resamples=[[0, 0], [1, 1]])
  assert boot["lesion_error"] == {"lo": 2.0, "hi": 2.0}


@pytest.mark.parametrize("k,n", [(30, 100), (0, 12), (7, 7), (64, 256)])
def test_wilson_interval_matches_scipy(k, n):
  import scipy.stats
  from experiments.ablations import class_imbalance as ci
  ref = scipy.stats.binomtest(k, n).proportion_ci(method="wilson")
  lo, hi = ci.wilson_interval(k / n, n)
  assert lo == pytest.approx(ref.low, abs=1e-7)
  assert hi == pytest.approx(ref.high, abs=1e-7)


def test_noise_level_chooses_t_by_validation_auprc():
  from experiments.ablations import noise_level
  # Fake sweep rows: test AUPRC peaks at t=100, validation AUPRC at t=50;
  # the choice must follow validation (and prefer the smaller t on ties).
  rows = [{"noise": "gaussian", "t": t, "auprc": a, "auprc_val": v}
          for t, a, v in ((25, 0.2, 0.30), (50, 0.3, 0.41), (100, 0.5, 0.40),
                          (200, 0.1, 0.41))]
  rows += [{"noise": "simplex", "t": 50, "auprc": 0.4, "auprc_val": None},
           {"noise": "simplex", "t": 100, "auprc": 0.2, "auprc_val": 0.2}]
  assert noise_level.choose(rows) == {"gaussian": 50, "simplex": 100}
  assert [r["t"] for r in rows if r["chosen"]] == [50, 100]
  sentence = common.protocol_sentence({
      "lesion_validation": {"source": "eval_split", "subjects": ["a", "b"]},
      "n_test_subjects": 5})
  assert ("chosen on validation patients (2 subjects), reported on test "
          "(5 subjects)") in sentence


def test_model_evaluations_follow_the_samplers_step_density():
  from configs import ddpm
  from experiments.ablations import noise_level
  config = ddpm.get_config("cpu")  # ddim, num_steps 20 for a run from T.
  assert noise_level.model_evaluations(config, 1000) == 20
  assert noise_level.model_evaluations(config, 200) == 4
  assert noise_level.model_evaluations(config, 25) == 1
  config.anomaly.sampler, config.anomaly.num_steps = "ddpm", None
  assert noise_level.model_evaluations(config, 200) == 200


@pytest.mark.parametrize("script", ["noise_level", "compare_models",
                                    "class_imbalance"])
def test_command_line_rejects_an_unknown_field_before_any_work(
    script, trained_ddpm, tmp_path):
  import subprocess
  import sys
  _, ddpm_workdir = trained_ddpm
  workdir = ddpm_workdir if script == "noise_level" else str(tmp_path / "w")
  proc = subprocess.run(
      [sys.executable, "-m", f"experiments.ablations.{script}",
       f"--workdir={workdir}", "--override=anomaly.noise_levl=3"],
      capture_output=True, text=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode != 0
  assert "anomaly.noise_levl" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "ablations")) or (
      script == "noise_level")
  if script != "noise_level":
    assert not os.path.exists(workdir)


def test_cached_outputs_from_before_a_new_field_are_reused_at_its_default():
  from configs import ddpm
  config = ddpm.get_config("smoke")
  saved = common.relevant(config)
  del saved["diffusion.noise"]  # Written before the field existed.
  assert common.config_differences(saved, config) == []
  config.diffusion.noise = "simplex"
  assert common.config_differences(saved, config) == ["diffusion.noise"]
  # A field removed from genjax since still counts.
  saved["diffusion.old_field"] = 1
  assert "diffusion.old_field" in common.config_differences(saved, config)


def test_paired_difference_against_baseline_by_hand():
  from experiments.ablations import class_imbalance as ci
  # Per-subject (lesion sum, tissue sum, lesion n, tissue n), 2 subjects.
  base = [[6.0, 10.0, 3, 20], [2.0, 30.0, 1, 30]]     # Ratio 2.5.
  remedy = [[3.0, 10.0, 3, 20], [2.0, 30.0, 1, 30]]   # Ratio 1.5625.
  plan = [[0, 0], [1, 1], [0, 1]]
  d = common.paired_difference(ci.ratio_draws(remedy, plan),
                               ci.ratio_draws(base, plan), 1.5625, 2.5,
                               level=0.5)
  # Resample-wise differences: {0,0}: 2-4, {1,1}: 2-2, {0,1}: 1.5625-2.5.
  diffs = [-2.0, 0.0, -0.9375]
  assert d["value"] == pytest.approx(-0.9375)
  assert d["lo"] == pytest.approx(np.percentile(diffs, 25))
  assert d["hi"] == pytest.approx(np.percentile(diffs, 75))
  assert d["n_valid"] == 3


def test_versus_baseline_of_identical_runs_is_exactly_zero():
  from experiments.ablations import class_imbalance as ci
  rng = np.random.default_rng(0)
  hist = {"subjects": ["a", "b", "c"], "pos": rng.integers(0, 5, (3, 16)),
          "neg": rng.integers(0, 50, (3, 16)), "low": 0.0, "high": 1.0,
          "threshold": None}
  bias = {"subjects": ["a", "b", "c"], "lesion_tissue_ratio": 2.0,
          "per_subject": [[2.0, 1.0, 1, 1], [4.0, 2.0, 2, 2],
                          [1.0, 1.0, 1, 2]]}
  bias["lesion_tissue_ratio"] = ci.error_ratio(
      bias["per_subject"])["lesion_tissue_ratio"]
  out = ci.versus_baseline({"baseline": {"bias": bias, "hist": hist},
                            "same": {"bias": bias, "hist": hist}},
                           num_resamples=50)
  for key in ("lesion_tissue_ratio", "auprc"):
    assert out["same"][key]["value"] == 0.0
    assert out["same"][key]["lo"] == out["same"][key]["hi"] == 0.0
  other = dict(bias, subjects=["a", "b", "x"])
  with pytest.raises(ValueError, match="different test subjects"):
    ci.versus_baseline({"baseline": {"bias": bias, "hist": hist},
                        "other": {"bias": other, "hist": hist}})
