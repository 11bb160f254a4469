"""Lesion-wise detection, broken down by lesion size (NumPy/SciPy).

Pixel metrics are dominated by the largest lesions; whether a method finds
the small ones needs lesions counted one by one:

  lesion       a connected component of a subject's ground-truth mask: 3D
               with 26-connectivity over its reassembled slices; 2D with
               8-connectivity per slice when the slices have no affine
               (slice folders), as their neighbours need not be adjacent;
  detected     at least one of its voxels is predicted (`hit_fraction` 0,
               the default): the lesion-wise recall of the WMH segmentation
               challenge (Kuijf et al. 2019, "a lesion is detected if at
               least one voxel overlaps"); `hit_fraction` f > 0 asks for
               more than a fraction f of its voxels (MSSEG's 10 % is 0.1);
  false-positive component
               a connected component of the prediction (same connectivity)
               touching no lesion voxel.

Size bins (`SIZE_BINS_ML`) are in millilitres when the voxel size is known:
small < 1 ml (lacune-sized: a sphere of radius 6 mm is 0.9 ml; the phantom's
lacunar lesions, radius 3-7 mm, are 0.1-1.4 ml), medium 1-10 ml, large
>= 10 ml (territorial strokes, tumours). Without a voxel size they are in
voxels of the model's grid (`SIZE_BINS_VOXELS`). Per bin: lesion count,
detection rate (lesion-wise recall), and the mean Dice of the subjects whose
total lesion load falls in the bin.
"""

import math

import numpy as np
import scipy.ndimage

HIT_FRACTION = 0.0
SIZE_BINS_ML = (("small", 0.0, 1.0), ("medium", 1.0, 10.0),
                ("large", 10.0, math.inf))
SIZE_BINS_VOXELS = (("small", 0, 20), ("medium", 20, 200),
                    ("large", 200, math.inf))


def label_components(mask, per_slice=False):
  """Connected components of a [Z, H, W] mask.

  Args:
    mask: bool [Z, H, W] (a subject's slices stacked by index).
    per_slice: 2D components within each slice (8-connectivity) instead of
      3D ones (26-connectivity).

  Returns:
    (labels int32 [Z, H, W] with 0 = background, number of components).
  """
  structure = np.ones((3, 3, 3), bool)
  if per_slice:
    structure[0] = structure[2] = False  # No links across slices.
  return scipy.ndimage.label(np.asarray(mask, bool), structure=structure)


def subject_lesions(prediction, target, *, voxel_ml=None, per_slice=False,
                    hit_fraction=HIT_FRACTION):
  """Lesion-wise results of one subject.

  Args:
    prediction: bool [Z, H, W] flagged voxels.
    target: bool [Z, H, W] ground-truth lesion voxels.
    voxel_ml: the volume of one voxel in ml (None: sizes in voxels).
    per_slice: 2D components (see `label_components`).
    hit_fraction: a lesion is detected when more than this fraction of its
      voxels is predicted (0: at least one voxel).

  Returns:
    dict: sizes [n] (ml, or voxels without voxel_ml), voxels [n],
    detected [n] bool, fp_components (int), load (total lesion size),
    unit ('ml' or 'voxels').
  """
  prediction = np.asarray(prediction, bool)
  target = np.asarray(target, bool)
  if prediction.shape != target.shape:
    raise ValueError(f"subject_lesions: prediction {prediction.shape} and "
                     f"target {target.shape} differ in shape.")
  labels, n = label_components(target, per_slice)
  voxels = np.bincount(labels.ravel(), minlength=n + 1)[1:]
  hits = np.bincount(labels[prediction], minlength=n + 1)[1:]
  detected = (hits > hit_fraction * voxels) & (hits >= 1)
  pred_labels, n_pred = label_components(prediction, per_slice)
  touching = np.unique(pred_labels[target & prediction])
  fp = n_pred - int(np.sum(touching > 0))
  scale = 1.0 if voxel_ml is None else float(voxel_ml)
  sizes = voxels * scale
  return {"sizes": sizes.tolist(), "voxels": voxels.tolist(),
          "detected": detected.tolist(), "fp_components": int(fp),
          "load": float(voxels.sum() * scale),
          "unit": "voxels" if voxel_ml is None else "ml"}


def bin_of(size, bins):
  """The name of the bin [low, high) holding `size`."""
  for name, low, high in bins:
    if low <= size < high:
      return name
  raise ValueError(f"size {size} is in no bin of {bins}.")


def breakdown(results, dice, hit_fraction=HIT_FRACTION):
  """Detection by lesion size over the test subjects.

  Args:
    results: {subject: `subject_lesions` output}; every subject must use the
      same unit.
    dice: {subject: its Dice (or None)}; subjects with lesions only count.
    hit_fraction: as given to `subject_lesions` (recorded).

  Returns:
    dict: unit, hit_fraction, n_lesions, detection_rate (all bins),
    bins [{name, low, high, n_lesions, n_detected, detection_rate,
    n_subjects, mean_dice}] (None where a bin is empty),
    fp_components {subject: count}, fp_components_per_subject_mean.
  """
  units = {r["unit"] for r in results.values()}
  if len(units) > 1:
    raise ValueError(f"breakdown: subjects mix units {sorted(units)}.")
  unit = units.pop() if units else "ml"
  bins = SIZE_BINS_ML if unit == "ml" else SIZE_BINS_VOXELS
  rows = {name: {"name": name, "low": low, "high": high, "n_lesions": 0,
                 "n_detected": 0, "dices": []} for name, low, high in bins}
  for subject, r in sorted(results.items()):
    for size, hit in zip(r["sizes"], r["detected"]):
      row = rows[bin_of(size, bins)]
      row["n_lesions"] += 1
      row["n_detected"] += int(hit)
    if r["sizes"] and dice.get(subject) is not None:
      rows[bin_of(r["load"], bins)]["dices"].append(dice[subject])
  out_bins = []
  for row in rows.values():
    dices = row.pop("dices")
    row["high"] = None if math.isinf(row["high"]) else row["high"]
    row["detection_rate"] = (row["n_detected"] / row["n_lesions"]
                             if row["n_lesions"] else None)
    row["n_subjects"] = len(dices)
    row["mean_dice"] = float(np.mean(dices)) if dices else None
    out_bins.append(row)
  n = sum(r["n_lesions"] for r in out_bins)
  fp = {s: r["fp_components"] for s, r in sorted(results.items())}
  return {"unit": unit, "hit_fraction": hit_fraction, "n_lesions": n,
          "detection_rate": (sum(r["n_detected"] for r in out_bins) / n
                             if n else None),
          "bins": out_bins, "fp_components": fp,
          "fp_components_per_subject_mean": (float(np.mean(list(fp.values())))
                                             if fp else None)}


class VolumeCollector:
  """Reassembles each subject's slices (contiguous in the eval batches) into
  a [Z, S, S] volume on the model grid and scores its lesions.

  Args:
    voxel_ml: subject -> ml of one model-grid voxel, or None (no affine:
      2D components per slice, sizes in voxels).
  """

  def __init__(self, voxel_ml):
    self.voxel_ml = voxel_ml
    self.subject, self.slices, self.results = None, {}, {}

  def add(self, subject, k, predicted, lesion):
    if subject != self.subject:
      self.flush()
      self.subject = subject
    self.slices[int(k)] = (np.asarray(predicted, bool),
                           np.asarray(lesion, bool))

  def flush(self):
    """Scores the subject held; returns {subject: subject_lesions}."""
    if self.subject is not None:
      depth = max(self.slices) + 1
      shape = next(iter(self.slices.values()))[0].shape
      pred = np.zeros((depth, *shape), bool)
      target = np.zeros((depth, *shape), bool)
      for k, (p, t) in self.slices.items():
        pred[k], target[k] = p, t
      ml = self.voxel_ml(self.subject)
      self.results[self.subject] = subject_lesions(
          pred, target, voxel_ml=ml, per_slice=ml is None)
    self.subject, self.slices = None, {}
    return self.results


def markdown(table):
  """report.md lines: `breakdown`'s table by lesion size."""
  unit = table["unit"]
  hit = ("at least one voxel flagged" if not table["hit_fraction"] else
         f"more than {table['hit_fraction']:.0%} of its voxels flagged")
  fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(
      v, float) else str(v))
  lines = [f"Lesions by size (at threshold {fmt(table.get('threshold'))}; "
           f"a lesion is detected with {hit}; sizes in {unit}):", "",
           "| size | lesions | detected | detection rate | subjects by "
           "load | mean Dice |", "|---|---|---|---|---|---|"]
  for b in table["bins"]:
    span = (f"{b['name']} [{b['low']:g}, "
            f"{'inf' if b['high'] is None else format(b['high'], 'g')})")
    lines.append(f"| {span} | {b['n_lesions']} | {b['n_detected']} | "
                 f"{fmt(b['detection_rate'])} | {b['n_subjects']} | "
                 f"{fmt(b['mean_dice'])} |")
  per = ", ".join(f"{s}: {n}" for s, n in table["fp_components"].items())
  lines += ["", "False-positive components (predicted, touching no lesion) "
            f"per test subject: {fmt(table['fp_components_per_subject_mean'])}"
            f" ({per})."]
  return lines
