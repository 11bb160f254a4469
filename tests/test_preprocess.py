"""Tests of genjax.data.preprocess on phantom heads with known truth.

One session run preprocesses a small raw folder (two phantom heads, a 4D
file, a noise cube, an empty volume); the tests read its outputs. Heads are
64 px phantoms (3.4 mm voxels, raw 4.3 x 3.4 x 3.4 mm): at 32 px (7-9 mm
voxels) the skull is sub-voxel and registration is not reliable.
"""

import json
import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip(
    "SimpleITK", reason="preprocessing needs SimpleITK: pip install -e "
    "'.[preprocess]'")

# pylint: disable=g-import-not-at-top,wrong-import-position
from genjax.data import builders
from genjax.data import nifti
from genjax.data import phantom
from genjax.data import rawhead
from genjax.data.preprocess import accuracy
from genjax.data.preprocess import bias
from genjax.data.preprocess import register
from genjax.data.preprocess import run

SIZE = 64
SETTINGS = run.Settings(grid=f"phantom{SIZE}")


@pytest.fixture(scope="module")
def heads():
  """{name: (RawHead, PhantomVolume, seed)}."""
  out = {}
  for name, seed, orientation in (("sub-a", 21, "LPS"), ("sub-b", 22, "PIR")):
    volume = phantom.make_subject(SIZE, seed, True)
    out[name] = (rawhead.make_raw_head(volume, seed, orientation=orientation),
                 volume, seed)
  return out


def _left_half_brain(head):
  """The true brain restricted to the left hemisphere (MNI x < 0)."""
  index = np.argwhere(np.ones(head.brain.shape, bool))
  mni = np.c_[index, np.ones(len(index))] @ (head.to_mni @ head.affine).T
  left = (mni[:, 0] < 0).reshape(head.brain.shape)
  return (head.brain > 0) & left


@pytest.fixture(scope="module")
def done(heads, tmp_path_factory):
  """A preprocessed folder: (raw dir, out dir, Summary)."""
  root = tmp_path_factory.mktemp("pp")
  raw, out = root / "raw", root / "out"
  rawhead.save_raw_head(raw / "test" / "sub-a", heads["sub-a"][0])
  head_b = heads["sub-b"][0]
  rawhead.save_raw_head(raw / "test" / "sub-b", head_b, lesion=False)
  # The user's brain mask: only the left hemisphere, unlike any automatic one.
  nifti.save_volume(raw / "test" / "sub-b_brain.nii.gz",
                    _left_half_brain(head_b), head_b.affine)
  # A second modality on the same grid (T2-like: CSF bright, fat darker).
  inverted = np.where(head_b.image > 0.05 * head_b.image.max(),
                      1.2 * head_b.image.max() - head_b.image, head_b.image)
  nifti.save_volume(raw / "test" / "sub-b_t2.nii.gz",
                    inverted.astype(np.float32), head_b.affine)
  rng = np.random.default_rng(0)
  affine = np.diag([4.0, 4.0, 4.0, 1.0])
  (raw / "train").mkdir()
  nib.save(nib.Nifti1Image(rng.random((40, 48, 40, 2), np.float32), affine),
           raw / "train" / "sub-4d.nii.gz")
  nifti.save_volume(raw / "train" / "sub-noise.nii.gz",
                    rng.random((40, 48, 40)).astype(np.float32) * 100, affine)
  nifti.save_volume(raw / "train" / "sub-empty.nii.gz",
                    np.zeros((40, 48, 40), np.float32), affine)
  summary = run.run(raw, out, settings=SETTINGS, workers=1)
  return raw, out, summary


def _load(path):
  return nifti.load_volume(path)[0]


def test_registration_recovers_the_pose(done, heads):
  _, out, summary = done
  row = next(r for r in summary.rows if r["subject"] == "sub-a")
  assert row["status"] == "ok", row
  head, volume, seed = heads["sub-a"]
  result = accuracy.evaluate_subject(out, "sub-a", head, volume, SIZE, seed,
                                     row)
  # 0.9: a 1-voxel (3.4 mm) band at the brain surface is ~10 % of a 64 px
  # brain's voxels; measured 0.97 (benchmark, 4 subjects).
  assert result.brain_dice > 0.9
  assert result.brain_dice_true > 0.9
  # Landmarks vs the true pose composed with the phantom's affine jitter:
  # measured 1-2 mm, i.e. under half a voxel.
  assert result.centroid_mm < 3.0
  assert result.landmark_mm < 3.5
  # The lesion is carried by nearest neighbour: binary, and where the truth
  # (mapped by the true transform) is. Lesions are a few voxels at 3.4 mm,
  # so one voxel of boundary is most of them: bar 0.4 (measured 0.46-0.93
  # over 6 benchmark heads).
  lesion = _load(out / "test" / "sub-a_mask.nii.gz")
  assert set(np.unique(lesion)) <= {0.0, 1.0} and lesion.any()
  assert result.lesion_dice > 0.4
  image = _load(out / "test" / "sub-a.nii.gz")
  brain = _load(out / "test" / "sub-a_brain.nii.gz")
  assert image.shape == phantom.output_grid(SIZE)[0]
  assert np.all(image[brain == 0] == 0) and np.all(image[brain > 0] >= 0)


def test_user_brain_mask_wins(done):
  _, out, summary = done
  assert {r["subject"]: r["status"] for r in summary.rows}["sub-b"] == "ok"
  brain, affine = nifti.load_volume(out / "test" / "sub-b_brain.nii.gz")
  index = np.argwhere(brain > 0)
  x_mni = (np.c_[index, np.ones(len(index))] @ affine.T)[:, 0]
  # The automatic mask would cover both hemispheres equally.
  assert np.mean(x_mni > 4.0) < 0.03
  _, template_brain, grid = register.template_on(SETTINGS.grid)
  template_left = template_brain.copy()
  template_left[int(np.ceil(-grid.affine[0, 3] / grid.affine[0, 0])):] = False
  assert accuracy.dice(brain, template_left) > 0.8
  assert not (out / "test" / "sub-b_mask.nii.gz").exists()
  # The other modality: its own custom root, on the same grid and mask.
  t2_root = out / "modalities" / "t2"
  t2 = _load(t2_root / "test" / "sub-b.nii.gz")
  assert t2.shape == brain.shape and np.all(t2[brain == 0] == 0)
  assert t2[brain > 0].mean() > 0
  found = builders.find_subjects("custom", t2_root)
  assert [s.subject_id for s in found["test"]] == ["sub-b"]


def test_failures_are_named_and_excluded(done):
  _, out, summary = done
  reasons = {sid: reason for sid, reason, _ in summary.failed}
  assert reasons == {"sub-4d": "bad_input", "sub-noise": "no_head",
                     "sub-empty": "empty_volume"}
  message = dict((s, m) for s, _, m in summary.failed)["sub-4d"]
  assert "sub-4d.nii.gz" in message and "4D" in message
  assert not (out / "train").exists()  # Nothing of failed subjects.
  table = (out / "qc" / "qc.csv").read_text()
  for sid, reason in reasons.items():
    assert f"{sid},failed,{reason}" in table
  assert (out / "qc" / "qc.md").exists()
  assert (out / "qc" / "sub-a.png").stat().st_size > 1000


def test_output_is_a_custom_root(done):
  _, out, _ = done
  found = builders.find_subjects("custom", out)
  assert list(found) == ["test"]
  subjects = {s.subject_id: s for s in found["test"]}
  assert sorted(subjects) == ["sub-a", "sub-b"]
  assert subjects["sub-a"].mask is not None
  assert subjects["sub-b"].mask is None
  assert all(s.brain is not None for s in subjects.values())


def test_rerun_skips_done_subjects_and_reruns_changed_settings(done):
  raw, out, _ = done
  sidecar = out / "qc" / "sub-a.json"
  before = sidecar.stat().st_mtime_ns
  again = run.run(raw, out, settings=SETTINGS, workers=1)
  assert sorted(again.skipped) == ["sub-a", "sub-b"]
  assert sidecar.stat().st_mtime_ns == before
  assert len(again.failed) == 3  # Failures are retried, and fail again.
  subject = run.find_raw_subjects(raw)["test"][0]
  assert run.is_done(out, "test", subject, SETTINGS)
  assert not run.is_done(out, "test", subject,
                         run.Settings(grid=SETTINGS.grid, n4=False))
  assert json.loads(sidecar.read_text())["settings"]["grid"] == SETTINGS.grid


def test_command_exits_nonzero_listing_failures(done):
  raw, out, _ = done
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.preprocess", f"--input={raw}",
       f"--output={out}", f"--grid={SETTINGS.grid}", "--workers=1"],
      capture_output=True, text=True, timeout=300,
      cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "3 subjects failed" in proc.stderr and "sub-4d: bad_input" in (
      proc.stderr)
  assert "up to date, skipped" in proc.stderr


def test_refuses_output_inside_input(done, tmp_path):
  raw, _, _ = done
  for out in (raw, raw / "out"):
    with pytest.raises(ValueError, match="inside --input"):
      run.run(raw, out, settings=SETTINGS)
  assert not (raw / "out").exists() and not (raw / "qc").exists()


def test_n4_removes_a_known_bias(heads):
  head, volume, seed = heads["sub-a"]
  flat = rawhead.make_raw_head(volume, seed, orientation="LPS", bias=False,
                               noise=False)
  image, affine = head.image, head.affine
  corrected, field = bias.n4(image, affine, bias.head_mask(image))
  inside = flat.brain > 0
  wm = inside & (flat.image > np.percentile(flat.image[inside], 75))
  cv = lambda a: float(a[wm].std() / a[wm].mean())
  truth = cv(image / head.bias)  # The best any correction can do.
  assert cv(corrected) < cv(image) - 0.5 * (cv(image) - truth)
  # The bias left after correction (truth / estimate) varies less over the
  # WM than the truth did.
  log_true = np.log(head.bias[wm])
  left = log_true - np.log(field[wm])
  assert left.std() < 0.7 * log_true.std()  # Measured 0.54.


def test_head_mask_covers_the_head(heads):
  head = heads["sub-b"][0]
  mask = bias.head_mask(head.image)
  assert mask[head.brain > 0].mean() > 0.99
  assert mask.mean() < 0.6  # Air stays out.


def test_missing_simpleitk_says_how_to_install(monkeypatch):
  from genjax.data import preprocess
  preprocess.sitk.cache_clear()
  monkeypatch.setitem(sys.modules, "SimpleITK", None)
  try:
    with pytest.raises(ImportError, match=r"pip install -e '\.\[preprocess\]'"):
      preprocess.sitk()
  finally:
    preprocess.sitk.cache_clear()


def test_similarity_is_the_correlation_ratio():
  """eta = |NCC| for a linear image, ~1 for any function, ~0 for noise."""
  from genjax.data.preprocess import qc  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  template = rng.uniform(0, 1, (40, 40, 40))
  mask = np.ones(template.shape, bool)
  linear = 3.0 - 2.0 * template + rng.normal(0, 0.2, template.shape)
  # With 1024 bins the binned template is nearly the template itself.
  assert qc.similarity(linear, template, mask, bins=1024) == pytest.approx(
      abs(np.corrcoef(linear.ravel(), template.ravel())[0, 1]), abs=0.01)
  # T2-like: not monotone in the T1 template; NCC is ~0, eta is not.
  folded = (template - 0.5)**2
  assert abs(np.corrcoef(folded.ravel(), template.ravel())[0, 1]) < 0.05
  assert qc.similarity(folded, template, mask) > 0.99
  assert qc.similarity(rng.normal(size=template.shape), template,
                       mask) < qc.SIMILARITY_FAIL / 2


def test_label_maps_split_into_lesion_and_ignored(tmp_path):
  """WMH: label 1 is lesion; label 2 is neither (out of the brain mask)."""
  from genjax.data import fixtures  # pylint: disable=g-import-not-at-top
  from genjax.data import layouts  # pylint: disable=g-import-not-at-top
  fixtures.write_layout("wmh", tmp_path, n_subjects=2, image_size=32)
  subjects = [s for ss in layouts.find_subjects("wmh", tmp_path).values()
              for s in ss]
  assert subjects
  for s in subjects:
    image, affine = nifti.load_volume(s.image)
    labels, _ = nifti.load_volume(s.mask)
    lesion, ignore = run._load_lesion(s, image.shape, affine)  # pylint: disable=protected-access
    np.testing.assert_array_equal(lesion, labels == 1)
    if (labels == 2).any():
      np.testing.assert_array_equal(ignore, labels == 2)
    else:
      assert ignore is None
  assert any((nifti.load_volume(s.mask)[0] == 2).any() for s in subjects)
