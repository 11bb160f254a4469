"""Accuracy of the preprocessing on phantom heads with known truth.

`measure(n, ...)` makes n phantom subjects, turns each into a raw scan with
`rawhead.make_raw_head` (skull, bias, noise, random pose, LPS anisotropic
grid), preprocesses them onto the phantom's own grid and compares with the
truth:

* brain Dice: the preprocessing brain mask against the true brain mask
  carried to the output grid through the *estimated* transform (nearest):
  the skull-stripping error, given the registration;
* landmark error (mm): template brain points mapped through the estimated
  transform and through the true one, compared in scanner space. The true
  MNI -> scanner map is the raw head's pose composed with the best affine fit
  of the phantom's own template -> subject deformation (the phantom is the
  template under an affine jitter and a smooth warp: an affine registration
  can only recover the affine part; the warp's residual is reported too);
* lesion Dice: the resampled lesion against the truth lesion carried through
  the true transform;
* seconds per volume.
"""

import dataclasses
import pathlib
import tempfile
import time

import numpy as np

from genjax.data import phantom
from genjax.data import rawhead


def phantom_to_template(image_size, seed, brain):
  """Best affine fit of a phantom subject's voxel -> template map.

  Args:
    image_size: the phantom's size.
    seed: its seed.
    brain: its brain mask [X, Y, Z] (the fit is over brain voxels).

  Returns:
    (A float64 [4, 4]: phantom-grid mm -> template mm, mean residual in mm of
    the non-affine part over the brain).
  """
  # pylint: disable=protected-access
  # Rebuilds the phantom's coordinate field exactly as make_subject does
  # (same streams), so the truth is the generator's own, not re-estimated.
  shape, affine = phantom.output_grid(image_size)
  axes = phantom._axes_mm(shape, affine)
  streams = np.random.SeedSequence(seed).spawn(6)
  rng_affine, rng_warp = (np.random.default_rng(s) for s in streams[:2])
  coords = phantom._template_coords(rng_affine, rng_warp, axes)
  index = np.argwhere(brain > 0)
  src = np.c_[index, np.ones(len(index))] @ affine.T
  dst = coords[:, brain > 0].T
  solution = np.linalg.lstsq(src, dst, rcond=None)[0]
  fit = np.eye(4)
  fit[:3, :] = solution.T
  residual = float(np.linalg.norm(src @ solution - dst, axis=1).mean())
  return fit, residual


def true_mni_to_scanner(head, image_size, seed, brain):
  """[4, 4] template mm -> scanner mm for a raw head made from a phantom."""
  fit, residual = phantom_to_template(image_size, seed, brain)
  return np.linalg.inv(head.to_mni) @ np.linalg.inv(fit), residual


def dice(a, b):
  a, b = np.asarray(a) > 0, np.asarray(b) > 0
  total = a.sum() + b.sum()
  return float(2 * (a & b).sum() / total) if total else 1.0


def _canonical(data, affine):
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
  return np.asarray(img.dataobj), img.affine


def _affine_transform(matrix):
  """A sitk.AffineTransform from a [4, 4] MNI mm -> scanner mm matrix."""
  from genjax.data.preprocess import sitk  # pylint: disable=g-import-not-at-top
  t = sitk().AffineTransform(3)
  t.SetMatrix(tuple(float(v) for v in np.asarray(matrix)[:3, :3].ravel()))
  t.SetTranslation(tuple(float(v) for v in np.asarray(matrix)[:3, 3]))
  return t


@dataclasses.dataclass
class SubjectAccuracy:
  subject: str
  seconds: float
  brain_dice: float  # vs truth carried by the estimated transform.
  brain_dice_true: float  # vs truth carried by the true transform.
  lesion_dice: float  # vs truth lesion carried by the true transform.
  landmark_mm: float  # Mean over template brain points.
  centroid_mm: float  # Template brain centroid.
  warp_residual_mm: float  # Non-affine part of the phantom (not recoverable).


def evaluate_subject(out_dir, subject, head, volume, image_size, seed, row):
  """Compares one preprocessed phantom head with its truth."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  from genjax.data.preprocess import register  # pylint: disable=g-import-not-at-top
  grid = register.output_grid(f"phantom{image_size}")
  estimated = np.asarray(row["mni_to_scanner"])
  true, residual = true_mni_to_scanner(head, image_size, seed, volume.brain)
  _, template_brain, tgrid = register.template_on("mni2")
  index = np.argwhere(template_brain)[::5]
  points = np.c_[index, np.ones(len(index))] @ tgrid.affine.T
  error = np.linalg.norm((points @ estimated.T - points @ true.T)[:, :3],
                         axis=1)
  centre = points.mean(axis=0)
  centroid = float(np.linalg.norm((estimated @ centre - true @ centre)[:3]))
  brain_raw, raw_affine = _canonical(head.brain, head.affine)
  lesion_raw, _ = _canonical(head.lesion, head.affine)
  carry = lambda data, m: register.resample(data, raw_affine,
                                            _affine_transform(m), grid,
                                            "nearest")
  split_dir = pathlib.Path(out_dir) / "test"
  load = lambda name: np.asarray(nib.as_closest_canonical(nib.load(
      split_dir / f"{subject}{name}.nii.gz")).dataobj)
  brain = load("_brain")
  lesion_dice = float("nan")
  if (split_dir / f"{subject}_mask.nii.gz").exists():
    lesion_dice = dice(load("_mask"), carry(lesion_raw, true))
  return SubjectAccuracy(
      subject=subject, seconds=float(row["seconds"]),
      brain_dice=dice(brain, carry(brain_raw, estimated)),
      brain_dice_true=dice(brain, carry(brain_raw, true)),
      lesion_dice=lesion_dice, landmark_mm=float(error.mean()),
      centroid_mm=centroid, warp_residual_mm=residual)


def measure(n_subjects=4, image_size=64, workers=1, seed=100, workdir=None,
            deformable=False):
  """Preprocesses n phantom heads and compares them with their truth.

  Returns:
    (list of SubjectAccuracy, dict of means).
  """
  from genjax.data.preprocess import run  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="pp_accuracy_"))
  raw, out = workdir / "raw", workdir / "out"
  truth = {}
  for i in range(n_subjects):
    subject_seed = seed + i
    volume = phantom.make_subject(image_size, subject_seed, True)
    head = rawhead.make_raw_head(volume, subject_seed,
                                 orientation=("LPS", "PIR", "RAS")[i % 3])
    name = f"sub-{subject_seed}"
    rawhead.save_raw_head(raw / "test" / name, head)
    truth[name] = (head, volume, subject_seed)
  start = time.time()
  summary = run.run(raw, out, settings=run.Settings(
      grid=f"phantom{image_size}", deformable=deformable), workers=workers)
  wall = time.time() - start
  results = []
  for row in summary.rows:
    if row["status"] != "ok":
      raise RuntimeError(f"{row['subject']} failed: {row.get('message')}")
    head, volume, subject_seed = truth[row["subject"]]
    results.append(evaluate_subject(out, row["subject"], head, volume,
                                    image_size, subject_seed, row))
  means = {f: float(np.nanmean([getattr(r, f) for r in results]))
           for f in ("seconds", "brain_dice", "brain_dice_true", "lesion_dice",
                     "landmark_mm", "centroid_mm", "warp_residual_mm")}
  means["wall_seconds_per_volume"] = wall / max(n_subjects, 1)
  return results, means
