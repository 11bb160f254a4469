"""Lesion-wise detection by size (genjax.metrics.lesions) on hand-built volumes.

Every expected count is written down by construction and cross-checked with
scipy.ndimage.label run here, not by the module under test.
"""

import numpy as np
import pytest
import scipy.ndimage

from genjax.metrics import lesions


def _volume():
  """[Z, H, W] target with two lesions and a prediction with two FPs.

  Lesion A: a 3x3x3 cube (27 voxels) at z 1-3, hit by 2 voxels (the hit
  is a 4-voxel bar that leaves the cube: one component, not an FP).
  Lesion B: a 2x2 patch (4 voxels) at z 6, far from A, missed.
  FP 1: a single voxel at z 6; FP 2: a 2-voxel bar at z 0.
  """
  target = np.zeros((8, 12, 12), bool)
  target[1:4, 1:4, 1:4] = True          # A, 27 voxels.
  target[6, 8:10, 8:10] = True          # B, 4 voxels.
  pred = np.zeros_like(target)
  pred[2, 2, 2:4] = True                # Hits A (2 of 27 voxels).
  pred[2, 2, 4:6] = True                # ... and continues outside it.
  pred[6, 2, 10] = True                 # FP 1.
  pred[0, 10, 1:3] = True               # FP 2.
  return pred, target


def test_components_match_scipy_26_and_8_connectivity():
  # Two voxels touching only by a corner across slices: one 3D lesion
  # (26-connectivity), two 2D ones (per slice).
  mask = np.zeros((3, 5, 5), bool)
  mask[0, 1, 1] = mask[1, 2, 2] = True
  assert lesions.label_components(mask)[1] == 1
  assert lesions.label_components(mask, per_slice=True)[1] == 2
  want = scipy.ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
  assert lesions.label_components(mask)[1] == want
  # 6-connectivity (scipy's default) would split it: the choice matters.
  assert scipy.ndimage.label(mask)[1] == 2


def test_subject_lesions_on_a_hand_built_volume():
  pred, target = _volume()
  labels, n = scipy.ndimage.label(target, structure=np.ones((3, 3, 3)))
  assert n == 2
  got = lesions.subject_lesions(pred, target, voxel_ml=0.05)
  # Lesions in scipy's label order (A first: it starts at the lower z).
  assert got["voxels"] == [int(np.sum(labels == 1)), int(np.sum(labels == 2))]
  assert got["voxels"] == [27, 4]
  assert got["sizes"] == pytest.approx([27 * 0.05, 4 * 0.05])
  assert got["detected"] == [True, False]
  assert got["load"] == pytest.approx(31 * 0.05)
  assert got["unit"] == "ml"
  # Prediction components: the A hit (one bar of 4) and the two FPs.
  n_pred = scipy.ndimage.label(pred, structure=np.ones((3, 3, 3)))[1]
  assert n_pred == 3 and got["fp_components"] == 2
  # 10 % overlap (MSSEG style): 2 of 27 voxels is 7 %, so A is missed.
  strict = lesions.subject_lesions(pred, target, hit_fraction=0.1)
  assert strict["detected"] == [False, False]
  assert strict["unit"] == "voxels" and strict["sizes"] == [27, 4]


def test_breakdown_by_size_bins():
  pred, target = _volume()
  # 0.05 ml voxels: A = 1.35 ml (medium), B = 0.2 ml (small).
  s1 = lesions.subject_lesions(pred, target, voxel_ml=0.05)
  # A second subject: one large lesion, fully found, no FP.
  big = np.zeros((4, 12, 12), bool)
  big[:, :, :6] = True  # 288 voxels * 0.05 ml = 14.4 ml: large.
  s2 = lesions.subject_lesions(big, big, voxel_ml=0.05)
  healthy = lesions.subject_lesions(np.eye(5, dtype=bool)[None],
                                    np.zeros((1, 5, 5), bool), voxel_ml=0.05)
  table = lesions.breakdown({"s1": s1, "s2": s2, "h": healthy},
                            {"s1": 0.3, "s2": 0.9, "h": None})
  rows = {b["name"]: b for b in table["bins"]}
  assert (rows["small"]["n_lesions"], rows["small"]["n_detected"]) == (1, 0)
  assert (rows["medium"]["n_lesions"], rows["medium"]["n_detected"]) == (1, 1)
  assert (rows["large"]["n_lesions"], rows["large"]["n_detected"]) == (1, 1)
  assert rows["small"]["detection_rate"] == 0.0
  assert rows["large"]["detection_rate"] == 1.0
  assert table["detection_rate"] == pytest.approx(2 / 3)
  # Subject loads: s1 1.55 ml (medium), s2 14.4 ml (large).
  assert rows["medium"]["mean_dice"] == 0.3
  assert rows["medium"]["n_subjects"] == 1
  assert rows["large"]["mean_dice"] == 0.9
  assert rows["small"]["mean_dice"] is None and rows["small"]["n_subjects"] == 0
  # FP components: 2, 0 and the healthy subject's diagonal (one 2D/3D
  # component of 5 voxels).
  assert table["fp_components"] == {"h": 1, "s1": 2, "s2": 0}
  assert table["fp_components_per_subject_mean"] == pytest.approx(1.0)
  assert rows["large"]["high"] is None  # JSON has no inf.
  text = "\n".join(lesions.markdown(dict(table, threshold=0.5)))
  assert "| small [0, 1) | 1 | 0 | 0.000 |" in text


def test_collector_reassembles_slices_and_uses_2d_without_affine():
  pred, target = _volume()
  for ml in (0.05, None):
    collector = lesions.VolumeCollector(lambda s, ml=ml: ml)
    # Slices arrive out of order and with gaps (filtered-out slices).
    for k in (6, 1, 2, 3, 0):
      collector.add("s", k, pred[k], target[k])
    got = collector.flush()["s"]
    if ml is None:
      # Per-slice 2D components: A is cut into 3 lesions of 9 voxels.
      assert got["voxels"] == [9, 9, 9, 4] and got["unit"] == "voxels"
      assert got["detected"] == [False, True, False, False]
    else:
      assert got["voxels"] == [27, 4]
      assert got["detected"] == [True, False]
