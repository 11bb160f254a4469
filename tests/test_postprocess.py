"""Post-processing of anomaly maps against scipy.ndimage."""

import jax
import numpy as np
import pytest
import scipy.ndimage

from genjax.detect import postprocess


@pytest.mark.parametrize("pixels", [0, 1, 2, 4])
def test_erode_matches_scipy_binary_erosion(pixels):
  rng = np.random.default_rng(pixels)
  # A blob touching the border, a hole and speckle: every case of the cross.
  masks = np.zeros((3, 20, 17, 1), np.float32)
  yy, xx = np.mgrid[:20, :17]
  masks[0, ..., 0] = (yy - 9) ** 2 + (xx - 8) ** 2 < 60
  masks[0, 8:11, 7:10, 0] = 0
  masks[1, ..., 0] = rng.uniform(size=(20, 17)) > 0.3
  masks[2, :, :12, 0] = 1
  got = np.asarray(jax.jit(postprocess.erode, static_argnums=1)(masks,
                                                               pixels))
  for plane, out in zip(masks[..., 0], got[..., 0]):
    want = (scipy.ndimage.binary_erosion(plane > 0.5, iterations=pixels)
            if pixels else plane > 0.5)
    np.testing.assert_array_equal(out, want)
  assert got.dtype == np.float32


def test_remove_small_components_hand_built():
  mask = np.zeros((10, 12), bool)
  mask[1:4, 1:4] = True          # 9 pixels.
  mask[6, 6] = mask[7, 7] = True  # 2 pixels, joined diagonally (8-conn).
  mask[0, 11] = True             # 1 pixel.
  mask[5:9, 10] = True           # 4 pixels.
  keep4 = postprocess.remove_small_components(mask, 4)
  want = np.zeros_like(mask)
  want[1:4, 1:4] = True
  want[5:9, 10] = True
  np.testing.assert_array_equal(keep4, want)
  # Diagonal neighbours are one component: 2 pixels survive min_size 2.
  keep2 = postprocess.remove_small_components(mask, 2)
  assert keep2[6, 6] and keep2[7, 7] and not keep2[0, 11]
  np.testing.assert_array_equal(postprocess.remove_small_components(mask, 0),
                                mask)


@pytest.mark.parametrize("min_size", [2, 5, 12])
def test_remove_small_components_matches_scipy_label(min_size):
  mask = np.random.default_rng(min_size).uniform(size=(32, 32)) > 0.62
  labels, n = scipy.ndimage.label(mask, structure=np.ones((3, 3)))
  want = np.zeros_like(mask)
  for i in range(1, n + 1):  # One component at a time.
    if np.sum(labels == i) >= min_size:
      want |= labels == i
  got = postprocess.remove_small_components(mask, min_size)
  np.testing.assert_array_equal(got, want)
  assert 0 < got.sum() < mask.sum()


# --- In the detector ----------------------------------------------------------


def _keep_large(mask, min_size):
  """Reference: scipy.ndimage.label, one component at a time."""
  labels, n = scipy.ndimage.label(mask, structure=np.ones((3, 3)))
  out = np.zeros_like(mask)
  for i in range(1, n + 1):
    if np.sum(labels == i) >= min_size:
      out |= labels == i
  return out


def test_detector_erodes_and_drops_small_components(smoke_config, tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from genjax import anomaly  # pylint: disable=g-import-not-at-top
  from tests import test_anomaly as ta  # pylint: disable=g-import-not-at-top
  config = smoke_config()
  config.anomaly.update(dict(median_filter=1, erode_brain=1,
                             min_component=3, patient_val_fraction=0.25))
  method, offsets = ta._fake_method(config, 0.6, 0.4)  # pylint: disable=protected-access
  m = anomaly.detect(config, method, ta.FakeState(jnp.zeros((), jnp.int32)),
                     str(tmp_path))
  held = m["lesion_validation"]["subjects"]
  assert len(held) == 1
  ref = ta._reference(config, "test", offsets, 1)  # pylint: disable=protected-access
  keep = ~np.isin(ref["subject"], held)
  eroded = np.stack([scipy.ndimage.binary_erosion(b) for b in ref["brain"]])
  # Scores only inside the eroded brain; metrics over the whole brain.
  residual = np.where(eroded, ref["residual"], 0.0)
  brain, lesion = ref["brain"], ref["lesion"]

  def counts(threshold):
    per = {}
    for i in np.nonzero(keep)[0]:
      pred = _keep_large(brain[i] & (residual[i] >= threshold), 3)
      c = per.setdefault(ref["subject"][i], np.zeros(3, int))
      c += [np.sum(pred & lesion[i]), np.sum(pred & ~lesion[i]),
            np.sum(~pred & lesion[i])]
    return per

  dice = lambda c: 2 * c[0] / (2 * c[0] + c[1] + c[2])
  at_t, at_val = counts(m["threshold"]), counts(m["threshold_val"])
  assert m["dice_at_threshold"] == pytest.approx(
      dice(sum(at_t.values())), abs=1e-9)
  assert m["dice_at_val_threshold"] == pytest.approx(
      dice(sum(at_val.values())), abs=1e-9)
  for s, d in m["dice_per_subject"].items():
    assert d == pytest.approx(dice(at_t[s]), abs=1e-9)
  for s, d in m["dice_per_subject_val_threshold"].items():
    assert d == pytest.approx(dice(at_val[s]), abs=1e-9)
  # Without the removal the numbers differ: the test can fail.
  raw = sum(np.array([np.sum(p & l), np.sum(p & ~l), np.sum(~p & l)])
            for p, l in zip(brain[keep] & (residual[keep] >= m["threshold"]),
                            lesion[keep]))
  assert abs(dice(raw) - m["dice_at_threshold"]) > 1e-3
  # AUROC stays on the (eroded) pixel scores of every brain pixel.
  scores, truth = residual[keep][brain[keep]], lesion[keep][brain[keep]]
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
  assert m["auroc"] == pytest.approx(skm.roc_auc_score(truth, scores),
                                     abs=1e-3)
  assert m["network_calls_per_slice"] == 1 and m["seconds_per_slice"] > 0
  assert "postprocess_status" in m
