"""Quality control: a picture per subject and a table with flags.

Thresholds (flags mark a subject for a look; they do not exclude it):
* SIMILARITY_FLOOR: similarity with the T1 template inside its brain below
  this is a poor registration. The similarity is the correlation ratio eta
  (`similarity`): how much of the image's variance a function of the
  template's intensity explains, square-rooted. It equals |NCC| for an image
  that is a linear function of the template and needs no linearity, so a
  T2, PD or FLAIR scan (CSF bright, or GM above WM) is judged like a T1.
  Phantom T1 heads reach 0.85-0.95; SIMILARITY_FAIL (a failure, not a flag)
  is where the volume is nothing like a brain (noise, an empty or foreign
  volume measure ~0.05).
* BRAIN_ML_RANGE: adult brain-mask volumes in native space (the mask is the
  template's, which includes ventricles and sulcal CSF: 1883 ml for the
  template itself, so the bound sits above the usual ~2000 ml).
* Cohort: brain volume outside median +- MAD_K * 1.4826 MAD of the run's
  subjects (with at least MIN_COHORT of them).
* LOG_DET_MAX: |log det| of the affine part above this is an unusual head
  scale (det 0.55-1.8).
* FOV_MIN: fraction of the template brain inside the scan's field of view
  (a cut-off scan loses slices).
"""

import csv
import math
import os

import numpy as np

SIMILARITY_FLOOR = 0.5
SIMILARITY_FAIL = 0.2
SIMILARITY_BINS = 32
BRAIN_ML_RANGE = (900.0, 2300.0)
MAD_K = 3.0
MIN_COHORT = 5
LOG_DET_MAX = 0.6
FOV_MIN = 0.95

COLUMNS = ("split", "subject", "status", "reason", "seconds", "similarity",
           "brain_ml", "brain_frame_fraction", "fov_coverage", "det",
           "scales", "flag")


def similarity(image, template, mask, bins=SIMILARITY_BINS):
  """Correlation ratio eta of `image` on `template` inside `mask`, in [0, 1].

  eta^2 = Var(E[image | template bin]) / Var(image), the template binned at
  its quantiles inside the mask: 1 when the image is any function of the
  template's intensity, ~sqrt(bins / voxels) for unrelated noise.
  """
  x = np.asarray(template, np.float64)[mask > 0]
  y = np.asarray(image, np.float64)[mask > 0]
  total = float(((y - y.mean())**2).sum())
  if total <= 0 or x.size < 2:
    return 0.0
  edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
  which = np.searchsorted(edges, x, side="right")
  count = np.bincount(which)
  mean = np.bincount(which, weights=y) / np.maximum(count, 1)
  between = float((count * (mean - y.mean())**2).sum())
  return math.sqrt(between / total)


def subject_flags(row):
  """Named reasons (list of str) why one finished subject looks unusual."""
  flags = []
  if row["similarity"] < SIMILARITY_FLOOR:
    flags.append(f"low_similarity(eta<{SIMILARITY_FLOOR})")
  lo, hi = BRAIN_ML_RANGE
  if not lo <= row["brain_ml"] <= hi:
    flags.append(f"brain_volume_out_of_range({lo:g}-{hi:g}ml)")
  if abs(math.log(max(row["det"], 1e-9))) > LOG_DET_MAX:
    flags.append(f"scale_outlier(|log det|>{LOG_DET_MAX})")
  if row["fov_coverage"] < FOV_MIN:
    flags.append(f"brain_cut_off(fov<{FOV_MIN})")
  return flags


def cohort_flags(rows):
  """Adds cohort outlier flags (brain volume vs median +- k MAD) in place."""
  done = [r for r in rows if r["status"] == "ok"]
  if len(done) < MIN_COHORT:
    return
  volumes = np.array([r["brain_ml"] for r in done])
  median = float(np.median(volumes))
  mad = 1.4826 * float(np.median(np.abs(volumes - median)))
  for r in done:
    if mad > 0 and abs(r["brain_ml"] - median) > MAD_K * mad:
      r["flag"] = ";".join(filter(None, [r["flag"], "brain_volume_cohort_outlier"]))


def write_table(rows, folder):
  """Writes qc.csv and qc.md (one row per subject) into `folder`."""
  os.makedirs(folder, exist_ok=True)
  rows = sorted(rows, key=lambda r: (r["split"], r["subject"]))
  def fmt(value):
    if isinstance(value, float):
      return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
      return " ".join(f"{v:.3f}" for v in value)
    return "" if value is None else str(value)
  with open(os.path.join(folder, "qc.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for r in rows:
      writer.writerow([fmt(r.get(c)) for c in COLUMNS])
  failed = sum(r["status"] != "ok" for r in rows)
  flagged = sum(bool(r.get("flag")) for r in rows if r["status"] == "ok")
  lines = [
      "# Preprocessing QC", "",
      f"{len(rows)} subjects: {len(rows) - failed} done ({flagged} flagged), "
      f"{failed} failed (excluded from the output layout).", "",
      "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |"
            for r in rows]
  with open(os.path.join(folder, "qc.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def save_png(path, image, template_brain, brain, title=""):
  """Three orthogonal mid-slices with the template (red) and brain (green)
  mask outlines.

  Args:
    path: output PNG.
    image: float [X, Y, Z] on the output grid (RAS).
    template_brain, brain: bool [X, Y, Z] on the same grid.
    title: figure title.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  centre = [int(round(c)) for c in np.argwhere(template_brain).mean(axis=0)]
  views = [  # (slice, name); shown with the superior/anterior side up.
      (lambda a: a[centre[0], :, :], "sagittal"),
      (lambda a: a[:, centre[1], :], "coronal"),
      (lambda a: a[:, :, centre[2]], "axial")]
  vmax = float(np.percentile(image[brain > 0], 99.5)) if brain.any() else 1.0
  fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
  for ax, (take, name) in zip(axes, views):
    ax.imshow(take(image).T, origin="lower", cmap="gray", vmin=0, vmax=vmax)
    for mask, colour in ((template_brain, "r"), (brain, "lime")):
      m = take(mask).T.astype(float)
      if m.any() and not m.all():
        ax.contour(m, levels=[0.5], colors=colour, linewidths=0.8)
    ax.set_title(name, fontsize=9)
    ax.axis("off")
  fig.suptitle(title + "  (red: template brain, green: brain mask)",
               fontsize=9)
  os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
  fig.savefig(path, dpi=80, bbox_inches="tight")
  plt.close(fig)
