"""The intensity-threshold floor (configs/floor.py) through the one detector.

The floor's residual must be the sign-flipped normalised intensity, masked
and median-filtered like every method's; its detection metrics must be those
of thresholding that map, recomputed here with scipy and scikit-learn.
"""

import os
import re

import jax
import numpy as np
import pytest
import scipy.ndimage
from sklearn import metrics as skm

from configs import floor as floor_config
from experiments import detect_table
from genjax import anomaly
from genjax import config as config_lib
from genjax import methods
from genjax import train


def _config(smoke_config, sign="hypo"):
  config = smoke_config(floor_config)
  config.floor.sign = sign
  return config


@pytest.mark.parametrize("sign", ["hyper", "hypo"])
def test_residual_is_the_signed_intensity(smoke_config, sign):
  config = _config(smoke_config, sign)
  method = methods.get(config)
  opts = anomaly.anomaly_options(config)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 16, 16, 1)).astype(np.float32)
  brain = np.zeros_like(x)
  brain[:, 3:13, 2:14] = 1
  state = method.init(jax.random.key(0), {"image": x})
  out = jax.jit(anomaly.make_score_fn(method, opts))(
      state, x, brain, jax.random.key(1))
  intensity = x + 1 if sign == "hyper" else 1 - x
  size = opts["median_filter"]
  want = brain * scipy.ndimage.median_filter(
      brain * intensity, size=(1, size, size, 1), mode="reflect")
  np.testing.assert_allclose(np.asarray(out["residual"]), want, atol=1e-6)


def test_floor_detects_without_a_checkpoint(smoke_config, tmp_path):
  # The phantom's stroke lesions are T1-hypointense.
  config = _config(smoke_config, "hypo")
  workdir = str(tmp_path)
  m = anomaly.detect_mode(config, workdir)
  assert os.path.exists(os.path.join(workdir, "detect", "metrics.json"))
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  held = set(m["lesion_validation"]["subjects"])
  scores, truth = [], []
  size = config.anomaly.median_filter
  for batch in anomaly.eval_batches(config, config.data.eval_split):
    keep = np.asarray(batch["valid"], bool) & ~np.isin(
        batch["subject"].astype(str), sorted(held))
    brain = batch["brain"][keep] > 0.5
    residual = brain * scipy.ndimage.median_filter(
        brain * (1 - batch["image"][keep]), size=(1, size, size, 1),
        mode="reflect")
    scores.append(residual[brain])
    truth.append((batch["mask"][keep] > 0.5)[brain])
  scores, truth = np.concatenate(scores), np.concatenate(truth)
  assert m["auroc"] == pytest.approx(skm.roc_auc_score(truth, scores),
                                     abs=1e-3)
  assert m["auprc"] == pytest.approx(
      skm.average_precision_score(truth, scores), abs=2e-3)
  assert m["n_test_lesion_pixels"] == truth.sum() > 0
  # experiments.detect_table tabulates the run: the detector's own value
  # with a subject-bootstrap interval around it.
  text = detect_table.table([("floor", workdir)], num_resamples=50)
  cells = text.splitlines()[2].split(" | ")
  value, lo, hi = map(float, re.findall(r"[0-9.]+", cells[3]))
  assert value == pytest.approx(m["auroc"], abs=5e-4)
  assert lo <= value <= hi and lo < hi


def test_floor_refuses_to_train_and_checks_its_sign(smoke_config, tmp_path):
  config = _config(smoke_config, "hypo")
  with pytest.raises(ValueError, match="nothing to train"):
    train.train_and_evaluate(config, str(tmp_path))
  config.floor.sign = "bright"
  with pytest.raises(config_lib.ConfigError, match="floor.sign"):
    config_lib.validate(config)
