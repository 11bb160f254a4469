"""The patient validation split (genjax.protocol) against hand-made cases."""

import hashlib

import numpy as np
import pytest

from experiments.ablations import common
from genjax import protocol
from genjax.metrics import detection


def test_split_is_disjoint_deterministic_and_covers_all_patients():
  patients = [f"sub-{i:03d}" for i in range(20)]
  val, test = protocol.split_patients(patients, 0.25)
  assert len(val) == 5 and len(test) == 15
  assert not set(val) & set(test)
  assert sorted(val + test) == sorted(patients)
  # The first 5 by sha256 of the id, whatever the input order.
  by_hash = sorted(patients,
                   key=lambda s: hashlib.sha256(s.encode()).hexdigest())
  assert val == sorted(by_hash[:5])
  assert protocol.split_patients(patients[::-1], 0.25) == (val, test)
  # Adding patients never moves one from test to validation or back, except
  # the newcomers and the count at the margin.
  more_val, _ = protocol.split_patients(patients + ["sub-100", "sub-101"],
                                        0.25)
  old_more = [s for s in more_val if s in patients]
  assert set(old_more) <= set(val) or set(val) <= set(old_more)


@pytest.mark.parametrize("n,fraction,want", [
    (0, 0.25, 0), (1, 0.25, 0), (2, 0.25, 1), (2, 0.9, 1), (3, 0.25, 1),
    (10, 0.25, 3), (10, 0.0, 0), (4, 0.5, 2), (6, 0.25, 2)])
def test_number_of_validation_patients(n, fraction, want):
  # round half up; >= 1 with >= 2 patients; >= 1 left for test.
  assert protocol.num_validation(n, fraction) == want


def test_bad_fraction_and_repeated_ids_are_errors():
  with pytest.raises(protocol.ProtocolError, match=r"\[0, 1\)"):
    protocol.split_patients(["a", "b"], 1.0)
  with pytest.raises(protocol.ProtocolError, match="repeated"):
    protocol.split_patients(["a", "a"], 0.5)


def test_validation_source_prefers_val_split_patients():
  flags = {"p1": True, "p2": True, "h1": False}
  got = protocol.validation_patients({"v1": None, "v2": None}, flags, 0.25)
  assert got["source"] == "val_split" and got["subjects"] == ["v1", "v2"]
  assert got["held_out"] == []
  got = protocol.validation_patients({}, flags, 0.25)
  assert got["source"] == "eval_split"
  assert got["held_out"] == got["subjects"] == protocol.split_patients(
      ["p1", "p2"], 0.25)[0]
  assert "h1" not in got["subjects"]  # Healthy subjects stay in test.
  off = protocol.validation_patients({}, flags, 0.0)
  assert off["source"] is None and off["subjects"] == []
  assert "0" in off["status"]


def _batch(subjects, valid, lesion=None, size=4):
  """Eval-batch-like dict; example `lesion` (an index) has a lesion pixel."""
  n = len(subjects)
  image = np.arange(n * size * size, dtype=np.float32).reshape(n, size, size, 1)
  mask = np.zeros_like(image)
  if lesion is not None:
    mask[lesion, 1, 1] = 1.0
  return {"image": image, "mask": mask, "brain": np.ones_like(image),
          "label": mask.reshape(n, -1).any(1).astype(np.int64),
          "subject": np.array(subjects), "slice": np.arange(n),
          "valid": np.array(valid)}


def test_select_subjects_rebatches_with_padding():
  batches = [_batch(["a", "a", "b"], [True, True, True], lesion=1),
             _batch(["b", "c", ""], [True, True, False])]
  flags = protocol.subject_lesion_flags(batches)
  assert flags == {"a": True, "b": False, "c": False}
  out = list(protocol.select_subjects(iter(batches), lambda s: s != "a"))
  assert len(out) == 1 and all(len(b["valid"]) == 3 for b in out)
  np.testing.assert_array_equal(out[0]["subject"], ["b", "b", "c"])
  np.testing.assert_array_equal(out[0]["image"][0], batches[0]["image"][2])
  np.testing.assert_array_equal(out[0]["image"][2], batches[1]["image"][1])
  out = list(protocol.select_subjects(iter(batches), lambda s: s == "a"))
  assert len(out) == 1
  np.testing.assert_array_equal(out[0]["valid"], [True, True, False])
  assert out[0]["subject"][2] == "" and out[0]["slice"][2] == -1
  assert np.all(out[0]["image"][2] == -1) and not out[0]["mask"][2].any()


def test_validation_threshold_is_the_numpy_argmax_of_dice():
  rng = np.random.default_rng(0)
  hists, scores, truth = {}, [], []
  for s in range(3):
    lesion = rng.uniform(size=400) < 0.15
    score = np.clip(rng.normal(0.3 + 0.4 * lesion, 0.15), 0, 1.999)
    h = detection.ScoreHistogram(0.0, 2.0, 64)
    h.update(score, lesion)
    hists[f"p{s}"] = h
    scores.append(score)
    truth.append(lesion)
  scores, truth = np.concatenate(scores), np.concatenate(truth)
  got = protocol.validation_threshold(hists)
  # numpy: scores rounded down to the 64 bins; Dice at every bin edge.
  q = np.floor(scores * 32).astype(int)
  dices = [2 * np.sum((q >= k) & truth) / (np.sum(q >= k) + truth.sum())
           for k in range(64)]
  k = int(np.argmax(dices))
  assert got["dice_val"] == pytest.approx(dices[k])
  assert got["threshold_val"] == pytest.approx(k / 32)
  assert got["n_validation_patients"] == 3
  assert got["n_validation_lesion_pixels"] == truth.sum()
  assert protocol.validation_threshold({})["threshold_val"] is None


def test_subject_histograms_keep_validation_patients_apart(tmp_path):
  rng = np.random.default_rng(1)

  def hist(shift):
    h = detection.ScoreHistogram(0.0, 2.0, 32)
    lesion = rng.uniform(size=300) < 0.2
    h.update(np.clip(rng.normal(0.5 + shift * lesion, 0.2), 0, 1.99), lesion)
    return h
  test = {"t1": hist(0.6), "t2": hist(0.1)}
  val = {"v1": hist(1.0)}
  path = protocol.write_subject_histograms(str(tmp_path / "h.npz"), test,
                                           0.7, val, 0.9)
  data = protocol.load_subject_histograms(path)
  assert data["subjects"] == ["t1", "t2"] and data["val_subjects"] == ["v1"]
  assert data["threshold"] == 0.7 and data["threshold_val"] == 0.9
  np.testing.assert_array_equal(data["val_pos"][0], val["v1"].pos)
  # The bootstrap's point estimates are the test subjects' pooled pixels.
  boot = common.bootstrap_subjects(data, num_resamples=20)
  both = protocol.pooled(test.values())
  assert boot["auprc"]["value"] == both.auprc()
  assert boot["dice_at_val_threshold"]["value"] == both.dice_at(0.9)
  assert boot["auprc"]["value"] != protocol.pooled(
      [*test.values(), val["v1"]]).auprc()
