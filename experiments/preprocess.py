r"""Preprocesses raw MRI volumes into the `custom` layout nifti_folder reads.

  python -m experiments.preprocess --input=RAW --output=OUT [--layout=raw] \
      [--workers=2] [--resolution_mm=2 | --grid=phantom64] [--deformable] \
      [--modality=t2] [--nokeep_going]
  python -m experiments.preprocess --benchmark [--benchmark_subjects=4]

Per subject: reorient to RAS, N4 bias correction, registration to the MNI152
2009a T1 (rigid, affine, optional B-spline), resampling onto the template
grid, brain mask (template mask refined by intensity; a `<subject>_brain`
input wins), QC. See genjax/data/preprocess/run.py for the output tree.

Layouts: `raw` is RAW/<split>/<subject>.nii[.gz] (split among train,
train_mixed, validation, test; or RAW/<subject>.nii[.gz] for all-train) with
optional <subject>_mask, <subject>_brain and other modalities
<subject>_<modality> beside it; any genjax.data.layouts name (ixi, brats,
atlas, ...) reads that dataset as it ships, `--modality` choosing its
reference sequence.

Failures (unreadable or 4D files, no head, registration diverged, not a
brain, a modality that cannot be aligned) are listed in OUT/qc/qc.csv with a
named reason and left out of OUT; the command exits with status 1 listing
them. --keep_going (default) runs every subject first; --nokeep_going starts
no new subject after the first failure. A rerun skips subjects whose outputs
are up to date with the same settings and inputs.
"""

import sys

from absl import app
from absl import flags
from absl import logging

_INPUT = flags.DEFINE_string("input", None, "Folder of raw volumes (read only).")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (custom layout).")
_LAYOUT = flags.DEFINE_string("layout", "raw",
                              "'raw' or a genjax.data.layouts name.")
_MODALITY = flags.DEFINE_string(
    "modality", None, "Reference modality of multi-modal layouts (None: the "
    "layout's default).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Parallel subjects.")
_RESOLUTION = flags.DEFINE_float(
    "resolution_mm", 2.0, "Output voxel size on the MNI152 template grid.")
_GRID = flags.DEFINE_string(
    "grid", None, "Named output grid instead of --resolution_mm: 'mni<mm>' "
    "or 'phantom<pixels>' (the brain phantom's grid, e.g. phantom64).")
_DEFORMABLE = flags.DEFINE_bool("deformable", False,
                                "Add a B-spline registration stage.")
_N4 = flags.DEFINE_bool("n4", True, "N4 bias-field correction.")
_INTERPOLATION = flags.DEFINE_enum("interpolation", "linear",
                                   ["linear", "bspline"],
                                   "Image interpolation (masks: nearest).")
_KEEP_GOING = flags.DEFINE_bool(
    "keep_going", True, "Run every subject even after a failure (the exit "
    "status is 1 either way when any failed).")
_BENCHMARK = flags.DEFINE_bool(
    "benchmark", False, "Measure accuracy and speed on phantom heads with "
    "known truth instead (genjax.data.preprocess.accuracy).")
_BENCHMARK_SUBJECTS = flags.DEFINE_integer("benchmark_subjects", 4,
                                           "Phantom heads to measure.")
_BENCHMARK_SIZE = flags.DEFINE_integer("benchmark_size", 64,
                                       "Phantom size (pixels).")


def _benchmark():
  from genjax.data.preprocess import accuracy  # pylint: disable=g-import-not-at-top
  results, means = accuracy.measure(
      _BENCHMARK_SUBJECTS.value, _BENCHMARK_SIZE.value, workers=_WORKERS.value,
      workdir=_OUTPUT.value, deformable=_DEFORMABLE.value)
  print("subject  seconds  brain_dice  brain_dice(true T)  lesion_dice  "
        "landmark_mm  centroid_mm  warp_residual_mm")
  for r in results:
    print(f"{r.subject}  {r.seconds:7.1f}  {r.brain_dice:10.3f}  "
          f"{r.brain_dice_true:18.3f}  {r.lesion_dice:11.3f}  "
          f"{r.landmark_mm:11.2f}  {r.centroid_mm:11.2f}  "
          f"{r.warp_residual_mm:16.2f}")
  print("mean: " + ", ".join(f"{k}={v:.3f}" for k, v in means.items()))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _BENCHMARK.value:
    _benchmark()
    return
  if not _INPUT.value or not _OUTPUT.value:
    raise app.UsageError("--input and --output are required.")
  from genjax.data.preprocess import run  # pylint: disable=g-import-not-at-top
  settings = run.Settings(
      grid=_GRID.value or f"mni{_RESOLUTION.value:g}",
      deformable=_DEFORMABLE.value, n4=_N4.value,
      interpolation=_INTERPOLATION.value)
  try:
    summary = run.run(_INPUT.value, _OUTPUT.value, layout=_LAYOUT.value,
                      modality=_MODALITY.value, settings=settings,
                      workers=_WORKERS.value, keep_going=_KEEP_GOING.value)
  except ValueError as e:  # Bad folders, layout, grid: one line, no trace.
    sys.exit(f"error: {e}")
  done = len(summary.rows) - len(summary.failed)
  logging.info("%d subjects done (%d up to date), %d failed; QC: %s/qc/qc.md",
               done, len(summary.skipped), len(summary.failed), _OUTPUT.value)
  if summary.failed:
    lines = "\n".join(f"  {sid}: {reason}: {msg.splitlines()[0] if msg else ''}"
                      for sid, reason, msg in summary.failed)
    sys.exit(f"{len(summary.failed)} subjects failed (see "
             f"{_OUTPUT.value}/qc/qc.csv):\n{lines}")


if __name__ == "__main__":
  app.run(main)
