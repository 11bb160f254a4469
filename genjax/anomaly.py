r"""Anomaly detection by reconstruction: one detector for every method.

  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/ddpm_cpu --mode=detect

A method's `reconstruct(state, images, rng)` gives a pseudo-healthy version of
each test slice; what it could not reproduce is the anomaly:

  residual = median_filter(brain * mean_i |x - reconstruct_i(x)|) * brain

(`anomaly.num_reconstructions` reconstructions with independent rngs, a
`anomaly.median_filter` x `anomaly.median_filter` median filter with
scipy's 'reflect' border, restricted to the brain mask before and after the
filter so that background never enters a score). The same code serves the
VAE, the GAN and the DDPM; nothing here knows a method's name.

Optional method hook: a `Method` with an extra attribute `anomaly_score`
(state, images, reconstructions) -> array or dict (None: no hook) may return
  'pixel' [B, H, W, 1]  a score map used instead of |x - reconstruction|
                        (then masked and filtered the same way), and/or
  'slice' [B]           an image-level score used instead of the default
                        slice score (e.g. f-AnoGAN's residual + kappa *
                        discriminator-feature residual);
a bare array is 'slice' if it is [B], 'pixel' if it is [B, H, W, 1].

Thresholds and metrics (written to DIR/detect/metrics.json):
  threshold           the residual above which a pixel is called anomalous,
                      chosen on the HEALTHY validation split so that a
                      fraction `anomaly.healthy_fpr` of its brain pixels
                      exceed it (the realistic operating point);
  dice_at_threshold   Dice of all test brain pixels at that threshold;
  dice_best, threshold_best
                      the best Dice over all thresholds, chosen on the test
                      labels themselves: an optimistic upper bound (what much
                      of the literature reports), never a deployable number;
  auroc, auprc        pixel-level, over every test pixel inside the brain;
  slice_auroc, slice_auprc
                      slice level against `label`; slice score = mean of the
                      `anomaly.slice_top_k` largest residuals (or the hook's);
  dice_per_subject_*  3D Dice per test subject with lesions, at `threshold`;
  threshold_val, dice_val, dice_at_val_threshold, dice_per_subject_val_*
                      the threshold maximising Dice on the validation
                      PATIENTS (genjax.protocol: held out of the eval split
                      by anomaly.patient_val_fraction, or val_split's
                      own patients), the Dice it reaches there, and its
                      Dice on test: the published protocol's number;
  lesions             lesion-wise detection by size at threshold_val (else
                      `threshold`), genjax.metrics.lesions.
Every test number excludes the validation patients.

Pixel metrics come from streamed histograms of the residuals (positives and
negatives separately, `anomaly.histogram_bins` bins on
[0, anomaly.histogram_max]), so memory does not grow with the test set; they
equal the exact values for scores quantised to the bins (tests compare them
with scikit-learn). Padding examples (`valid` False) never count.

Beside metrics.json, DIR/detect/subject_histograms.npz holds each test
subject's own pixel histograms (`pos`, `neg` [S, bins], rows summing to the
pooled ones; the validation patients' rows flagged by `validation`),
`threshold` and `threshold_val`, so that metrics can be
recomputed on any resample of subjects (`load_subject_histograms`,
`pooled_histogram`; the bootstrap of experiments/ablations uses them), and
DIR/detect/examples.npz the arrays of the figure's slices (image, mask,
brain, reconstruction, residual [N, H, W, 1], subject, slice).

Per-subject anomaly maps are reassembled from the slices, mapped back from
the model's image_size grid to the stored slice grid (undoing the pipeline's
resize-and-pad and the builders' display rotation) and written as NIfTI with
the subject's own affine: DIR/detect/maps/<subject>_anomaly.nii.gz (residual)
and <subject>_prediction.nii.gz (thresholded), which overlay the input in
ITK-SNAP or 3D Slicer. Datasets without an affine (all zeros) get a .npy stack
and a PNG instead.
"""

import heapq
import importlib
import json
import os
import re
import shlex
import time

from absl import logging
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import tensorflow as tf

from genjax import parallel
from genjax import protocol
from genjax import train
from genjax import viz
from genjax.data import builders
from genjax.data import nifti
from genjax.data import pipeline
from genjax.metrics import detection
from genjax.metrics import lesions

# --- Config fields read with defaults -----------------------------------------
# The detector's fields of config.anomaly (configs/base.py documents them).
ANOMALY_FIELDS = ("median_filter", "num_reconstructions", "healthy_fpr",
                  "slice_score", "slice_top_k", "histogram_bins",
                  "histogram_max", "num_figure_slices", "write_maps",
                  "patient_val_fraction")


def anomaly_options(config):
  """The detector's options from config.anomaly, validated."""
  opts = {k: config.anomaly[k] for k in ANOMALY_FIELDS}
  size = opts["median_filter"]
  if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
    raise ValueError(f"config.anomaly.median_filter={size!r}: must be an odd "
                     "integer >= 1 (1 turns the filter off).")
  if not (isinstance(opts["num_reconstructions"], int)
          and opts["num_reconstructions"] >= 1):
    raise ValueError("config.anomaly.num_reconstructions="
                     f"{opts['num_reconstructions']!r}: must be an integer "
                     ">= 1.")
  if not 0.0 < opts["healthy_fpr"] < 1.0:
    raise ValueError(f"config.anomaly.healthy_fpr={opts['healthy_fpr']!r}: "
                     "must be in (0, 1), e.g. 0.01.")
  if opts["slice_score"] not in ("top_k_mean", "mean", "sum"):
    raise ValueError(f"config.anomaly.slice_score={opts['slice_score']!r}: "
                     "use 'top_k_mean', 'mean' or 'sum'.")
  if not (isinstance(opts["slice_top_k"], int) and opts["slice_top_k"] >= 1):
    raise ValueError(f"config.anomaly.slice_top_k={opts['slice_top_k']!r}: "
                     "must be an integer >= 1.")
  f = opts["patient_val_fraction"]
  if not (isinstance(f, (int, float)) and 0.0 <= f < 1.0):
    raise ValueError(f"config.anomaly.patient_val_fraction={f!r}: must be "
                     "in [0, 1) (0: no patients held out for validation).")
  if not (opts["histogram_bins"] >= 16 and opts["histogram_max"] > 0):
    raise ValueError("config.anomaly.histogram_bins must be >= 16 and "
                     "histogram_max > 0.")
  return opts


# --- Residual maps (JAX) -----------------------------------------------------


def median_filter(x, size):
  """Median over size x size neighbourhoods of each [H, W] plane.

  Matches `scipy.ndimage.median_filter(x, size=(1, size, size, 1),
  mode='reflect')`: the border is mirrored including the edge pixel
  (numpy's 'symmetric'), so the filter does not shrink the map.

  Args:
    x: [B, H, W, C].
    size: odd window side; 1 returns x.

  Returns:
    [B, H, W, C], x's dtype.
  """
  if size == 1:
    return x
  r = size // 2
  h, w = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
  # size**2 shifted views; a sort of a short axis is cheap next to a model.
  views = [padded[:, i:i + h, j:j + w] for i in range(size)
           for j in range(size)]
  return jnp.median(jnp.stack(views, axis=-1), axis=-1).astype(x.dtype)


def residual_map(images, reconstructions, brain, median_size, pixel=None):
  """The anomaly map of one reconstruction.

  Args:
    images: [B, H, W, 1] inputs in [-1, 1].
    reconstructions: [B, H, W, 1].
    brain: [B, H, W, 1] brain mask in {0, 1}.
    median_size: median filter side (odd; 1 = off).
    pixel: optional [B, H, W, 1] score map to use instead of |x - x_hat|.

  Returns:
    float32 [B, H, W, 1]: brain * median(brain * score); 0 outside the brain.
  """
  score = jnp.abs(images - reconstructions) if pixel is None else pixel
  brain = (brain > 0.5).astype(jnp.float32)
  return brain * median_filter(brain * score.astype(jnp.float32),
                               median_size)


def slice_scores(residuals, brain, kind, top_k):
  """One score per slice from its residual map.

  Args:
    residuals: [B, H, W, 1] (0 outside the brain).
    brain: [B, H, W, 1] brain mask.
    kind: 'top_k_mean', 'mean' (over brain pixels) or 'sum'.
    top_k: k of 'top_k_mean' (clamped to H * W).

  Returns:
    float32 [B].
  """
  flat = residuals.reshape(residuals.shape[0], -1)
  if kind == "sum":
    return jnp.sum(flat, axis=1)
  if kind == "mean":
    area = jnp.sum(brain.reshape(brain.shape[0], -1) > 0.5, axis=1)
    return jnp.sum(flat, axis=1) / jnp.maximum(area, 1)
  k = min(int(top_k), flat.shape[1])
  return jnp.mean(jax.lax.top_k(flat, k)[0], axis=1)


def make_score_fn(method, opts):
  """The jittable detector: (state, images, brain, rng) -> dict.

  Returns a function whose output holds
    reconstruction [B, H, W, 1]  mean of the reconstructions (for figures),
    residual       [B, H, W, 1]  the anomaly map (see `residual_map`),
    slice_score    [B].
  """
  hook = getattr(method, "anomaly_score", None)
  n = opts["num_reconstructions"]

  def one(state, images, rng):
    recon = method.reconstruct(state, images, rng)
    extra = hook(state, images, recon) if hook is not None else {}
    if not isinstance(extra, dict):
      # A bare array: [B] is an image-level score, [B, H, W, 1] a pixel map.
      extra = {"slice" if jnp.ndim(extra) == 1 else "pixel": extra}
    pixel = extra.get("pixel")
    score = jnp.abs(images - recon) if pixel is None else pixel
    out = {"reconstruction": recon.astype(jnp.float32),
           "score": score.astype(jnp.float32)}
    if "slice" in extra:
      out["slice"] = extra["slice"].astype(jnp.float32)
    return out

  def score_fn(state, images, brain, rng):
    keys = jax.random.split(rng, n)
    outs = jax.lax.map(lambda key: one(state, images, key), keys)
    outs = jax.tree.map(lambda x: jnp.mean(x, axis=0), outs)
    # outs["score"] is the mean |x - x'| (or the hook's pixel map).
    residual = residual_map(images, None, brain, opts["median_filter"],
                            pixel=outs["score"])
    if "slice" in outs:
      scores = outs["slice"]
    else:
      scores = slice_scores(residual, brain, opts["slice_score"],
                            opts["slice_top_k"])
    return {"reconstruction": outs["reconstruction"], "residual": residual,
            "slice_score": scores}

  return score_fn


# --- Streamed pixel histograms (numpy) ----------------------------------------


def new_histogram(opts):
  """An empty `detection.ScoreHistogram` on [0, histogram_max]."""
  return detection.ScoreHistogram(0.0, float(opts["histogram_max"]),
                                   int(opts["histogram_bins"]))


def histogram_threshold_at_fpr(hist, fpr):
  """The lowest bin edge that at most `fpr` of the negatives reach.

  Pixels whose bin's lower edge is >= the threshold are predicted positive
  (as `ScoreHistogram.dice_at`), so on the histogram's own data the
  false-positive rate is <= fpr, and one bin lower it would be > fpr.

  Args:
    hist: a `detection.ScoreHistogram` of healthy (negative) scores.
    fpr: the false-positive rate allowed, in (0, 1).

  Returns:
    (threshold, k, achieved fpr): pixels in bins >= k are flagged; k = bins
    (threshold = hist.high) flags nothing. (None, None, None) without
    negatives.
  """
  n = hist.num_neg
  if not n:
    return None, None, None
  tail = np.r_[np.cumsum(hist.neg[::-1])[::-1], 0]  # Negatives in bins >= k.
  k = int(np.nonzero(tail <= fpr * n)[0][0])
  threshold = float(hist.edges[k]) if k < hist.bins else hist.high
  return threshold, k, float(tail[k] / n)


def threshold_bin(hist, threshold):
  """The first bin flagged at `threshold` (as `ScoreHistogram.dice_at`)."""
  return int(np.searchsorted(hist.edges, threshold, side="left"))


def _defined(fn):
  """fn(), or None where the metric is undefined (one class only)."""
  try:
    return float(fn())
  except ValueError:
    return None


def dice_counts(predicted, target):
  """(TP, FP, FN) of boolean arrays."""
  predicted, target = np.asarray(predicted, bool), np.asarray(target, bool)
  return (int(np.sum(predicted & target)), int(np.sum(predicted & ~target)),
          int(np.sum(~predicted & target)))


def dice_from_counts(tp, fp, fn):
  denom = 2 * tp + fp + fn
  return float(2 * tp / denom) if denom else None


# --- From the model grid back to the stored volume ----------------------------


def fit_geometry(height, width, size):
  """Where the pipeline put an [height, width] slice in its [size, size] image.

  Mirrors `genjax.data.pipeline._fit` (resize the longer side to `size`,
  keep the aspect ratio, pad centred).

  Returns:
    (top, left, new_h, new_w).
  """
  scale = size / max(height, width)
  new_h = max(1, int(np.round(height * scale)))
  new_w = max(1, int(np.round(width * scale)))
  return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def to_stored_grid(image, height, width, method="bilinear"):
  """Undoes the pipeline's resize-and-pad of one slice.

  Args:
    image: [S, S] map on the model grid.
    height, width: the stored slice's [H, W].
    method: 'bilinear' for scores, 'nearest' for binary maps.

  Returns:
    float32 [height, width].
  """
  size = image.shape[0]
  top, left, new_h, new_w = fit_geometry(height, width, size)
  crop = np.asarray(image, np.float32)[top:top + new_h, left:left + new_w]
  if (new_h, new_w) == (height, width):
    return crop
  out = tf.image.resize(crop[..., None], [height, width], method=method,
                        antialias=method != "nearest")
  return out.numpy()[..., 0]


def slice_to_volume_plane(image):
  """Displayed slice [Y, X] -> RAS volume plane [X, Y].

  Inverse of `genjax.data.builders.display_slice` (image = rot90(plane)).
  """
  return np.rot90(np.asarray(image), k=-1)


def volume_geometry(data_config, split):
  """Where each stored slice of `split` sits: shapes, depth and affine.

  Reads `affine` and the slice shapes straight from the dataset, since eval
  batches carry neither.

  Returns:
    {subject: {"shapes": {k: (H, W)}, "depth": Z, "affine": [4, 4]}}; Z is
    1 + the largest stored slice index (filtered-out slices included).
  """
  ds = builders.load_split(data_config, split).map(
      lambda ex: {"subject": ex["subject"], "slice": ex["slice"],
                  "shape": tf.shape(ex["image"])[:2],
                  "affine": ex["affine"]})
  out = {}
  for ex in ds.as_numpy_iterator():
    k = int(ex["slice"])
    geometry = out.setdefault(ex["subject"].decode("utf-8"), {
        "shapes": {}, "depth": 0,
        "affine": np.asarray(ex["affine"], np.float64)})
    geometry["shapes"][k] = tuple(int(v) for v in ex["shape"])
    geometry["depth"] = max(geometry["depth"], k + 1)
  return out


def write_subject_maps(out_dir, subject, geometry, slices, write_png=True):
  """Writes one subject's anomaly (and prediction) maps.

  With an affine: <subject>_anomaly.nii.gz (residuals) and
  <subject>_prediction.nii.gz (thresholded), on the stored voxel grid with
  the subject's affine. Without one (all zeros: 2D slice folders):
  <subject>_anomaly.npy [N, H, W] (the scored slices in index order),
  <subject>_slices.npy [N] (their indices) and <subject>_slice<k>_anomaly.png
  per slice (colour, on the subject's common scale); slices of
  different stored shapes are kept on the model grid [N, S, S] instead.

  Args:
    out_dir: folder of the maps.
    subject: subject id (used in the file names).
    geometry: this subject's entry of `volume_geometry`.
    slices: {k: (residual [S, S], prediction [S, S] bool)} on the model grid.
    write_png: with a zero affine, also write a PNG per slice.

  Returns:
    The paths written.
  """
  affine, shapes = geometry["affine"], geometry["shapes"]
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in subject)
  os.makedirs(out_dir, exist_ok=True)
  if not np.any(affine):
    ks = sorted(slices)
    if len({shapes[k] for k in ks}) == 1:
      stack = [to_stored_grid(slices[k][0], *shapes[k]) for k in ks]
    else:
      logging.warning("Slices of %s differ in shape; its .npy anomaly maps "
                      "stay on the model grid.", subject)
      stack = [slices[k][0] for k in ks]
    stack = np.stack(stack).astype(np.float32)
    paths = [os.path.join(out_dir, f"{safe}_anomaly.npy"),
             os.path.join(out_dir, f"{safe}_slices.npy")]
    np.save(paths[0], stack)
    np.save(paths[1], np.asarray(ks))
    if write_png:
      # One PNG per slice, named by its index, on the subject's common scale.
      top = max(float(stack.max()), 1e-6)
      for k, residual in zip(ks, stack):
        paths.append(viz.save_png(
            os.path.join(out_dir, f"{safe}_slice{k:04d}_anomaly.png"),
            colorize(residual[None] / top)[0]))
    return paths
  # A volume's slices share one in-plane shape.
  height, width = next(iter(shapes.values()))
  depth = geometry["depth"]
  anomaly = np.zeros((width, height, depth), np.float32)
  prediction = np.zeros((width, height, depth), np.uint8)
  for k, (residual, predicted) in slices.items():
    anomaly[:, :, k] = slice_to_volume_plane(
        to_stored_grid(residual, height, width))
    prediction[:, :, k] = slice_to_volume_plane(
        to_stored_grid(predicted.astype(np.float32), height, width,
                       "nearest") > 0.5)
  paths = [os.path.join(out_dir, f"{safe}_anomaly.nii.gz"),
           os.path.join(out_dir, f"{safe}_prediction.nii.gz")]
  nifti.save_volume(paths[0], anomaly, affine)
  nifti.save_volume(paths[1], prediction, affine)
  return paths


# --- Figures ------------------------------------------------------------------


def colorize(maps, cmap="inferno"):
  """[N, H, W] values in [0, 1] -> uint8 [N, H, W, 3] through a colormap."""
  rgba = matplotlib.colormaps[cmap](np.clip(np.asarray(maps), 0.0, 1.0))
  return np.round(rgba[..., :3] * 255).astype(np.uint8)


def detection_figure(rows, threshold, path, upscale=None):
  """input | reconstruction | residual | thresholded | ground truth.

  Args:
    rows: dicts with image, reconstruction, residual, mask [H, W, 1] and
      brain (one per lesion slice).
    threshold: the validation threshold (None: the best-Dice one is drawn).
    path: PNG to write.
    upscale: pixel repetition; default: up to about 128 px per tile.

  Returns:
    path.
  """
  if upscale is None:
    upscale = max(1, 128 // rows[0]["image"].shape[0])
  def up(a):
    return a.repeat(upscale, axis=0).repeat(upscale, axis=1)

  top = max(max(float(r["residual"].max()) for r in rows), 1e-6)
  tiles = []
  for r in rows:
    gray = lambda x: np.repeat(viz.to_uint8(up(x[..., 0]))[..., None], 3, -1)
    lesion = up(r["mask"][..., 0])
    predicted = up(r["residual"][..., 0] >= threshold)
    binary = np.repeat((predicted * 255).astype(np.uint8)[..., None], 3, -1)
    tiles += [
        gray(r["image"]),
        gray(r["reconstruction"]),
        colorize(up(r["residual"][..., 0])[None] / top)[0],
        viz.overlay_outlines(binary[None], lesion[None])[0],
        viz.overlay_outlines(gray(r["image"])[None], lesion[None])[0],
    ]
  image = viz.grid(np.stack(tiles), ncols=5)
  title = (f"input | reconstruction | residual (0..{top:.2f}) | residual >= "
           f"{threshold:.3f} (red: lesion outline) | ground truth")
  return viz.save_png(path, viz.titled(image, title))


# --- The detector -------------------------------------------------------------


def check_single_host():
  """eval/detect stream the whole split through one process."""
  if jax.process_count() > 1:
    raise RuntimeError(
        "--mode=eval/detect run on one host (they stream every test slice "
        f"through one process), but this job has {jax.process_count()} "
        "processes. Run it without --distributed on a single host.")


def batch_to_device(batch, mesh, batch_size):
  """(image, brain) of a host batch as jax.Arrays split over the mesh."""
  if batch_size % mesh.devices.size:
    raise ValueError(
        f"config.eval.batch_size={batch_size} must be divisible by the "
        f"number of devices ({mesh.devices.size}).")
  sharding = parallel.batch_sharding(mesh)
  return (jax.device_put(np.asarray(batch["image"], np.float32), sharding),
          jax.device_put(np.asarray(batch["brain"], np.float32), sharding))


def eval_batches(config, split):
  """One ordered pass over `split` in config.eval.batch_size batches."""
  return pipeline.eval_batches(config.data, split, config.eval.batch_size,
                               process_index=0, process_count=1)


def has_split(data_config, split):
  """Whether the dataset has every split named in `split`."""
  builder = builders.prepare(data_config)
  # 'validation[:50%]+test' -> validation, test (TFDS split syntax).
  names = [re.match(r"\s*([\w-]+)", part).group(1)
           for part in split.split("+") if part.strip()]
  return all(name in builder.info.splits for name in names)


def scored_batches(config, score_fn, state, split, rng, mesh, keep=None):
  """Yields (host batch, host outputs) over `split` (the subjects for which
  keep(subject) holds; default all), numpy."""
  batches = eval_batches(config, split)
  if keep is not None:
    batches = protocol.select_subjects(batches, keep)
  for i, batch in enumerate(batches):
    images, brain = batch_to_device(batch, mesh, config.eval.batch_size)
    out = score_fn(state, images, brain, jax.random.fold_in(rng, i))
    out = jax.tree.map(np.asarray, jax.device_get(out))
    valid = np.asarray(batch["valid"], bool)
    if not np.all(np.isfinite(out["residual"][valid])) or not np.all(
        np.isfinite(out["slice_score"][valid])):
      raise FloatingPointError(
          f"Non-finite anomaly scores in batch {i} of split {split!r}: the "
          f"{config.method} reconstruction produced NaN/inf. Check the "
          "checkpoint (did training diverge?) and config.anomaly.")
    yield batch, out


def healthy_threshold(config, score_fn, state, rng, mesh, opts):
  """The threshold from the healthy slices of config.data.val_split.

  Returns:
    dict: threshold, threshold_fpr_validation (achieved on validation),
    n_validation_slices, n_validation_pixels; threshold None with
    threshold_status saying why when it cannot be chosen.
  """
  split = config.data.val_split
  if not has_split(config.data, split):
    return {"threshold": None, "_patients": {}, "threshold_status": (
        f"the dataset has no split {split!r} (config.data.val_split): no "
        "healthy data to choose a threshold on, so dice_at_threshold and the "
        "per-subject Dice are not computed.")}
  hist = new_histogram(opts)
  n_slices, subject_hists = 0, {}
  for batch, out in scored_batches(config, score_fn, state, split, rng, mesh):
    update_subject_hists(subject_hists, batch, out["residual"], opts)
    use = np.asarray(batch["valid"], bool) & (batch["label"] == 0)
    n_slices += int(use.sum())
    inside = batch["brain"][use][..., 0] > 0.5
    residual = out["residual"][use][..., 0][inside]
    hist.update(residual, np.zeros(residual.shape, bool))
  threshold, _, fpr = histogram_threshold_at_fpr(hist, opts["healthy_fpr"])
  result = {"threshold": threshold, "threshold_fpr_validation": fpr,
            "n_validation_slices": n_slices,
            "n_validation_pixels": hist.num_neg,
            # Patients of val_split, if any, are the lesion validation set.
            "_patients": {s: h for s, h in subject_hists.items() if h.num_pos}}
  if threshold is None:
    result["threshold_status"] = (
        f"split {split!r} has no healthy brain pixels after the filters.")
  return result


class MapWriter:
  """Collects one subject's slices at a time and writes its maps.

  Slices of a subject are contiguous in the eval batches (the builders store
  them in subject order), so only one subject is held in memory.
  """

  def __init__(self, out_dir, geometry, split):
    self.out_dir, self.geometry, self.split = out_dir, geometry, split
    self.subject, self.slices, self.done, self.paths = None, {}, set(), []

  def add(self, subject, k, residual, predicted):
    if subject != self.subject:
      self.flush()
      if subject in self.done:
        raise ValueError(
            f"Subject {subject!r} of split {self.split!r} comes back after "
            "other subjects: the dataset is not stored in subject order, so "
            "its volume cannot be reassembled. Rebuild it with genjax's "
            "builders.")
      if subject not in self.geometry:
        raise KeyError(f"Subject {subject!r} is in the eval batches but not "
                       f"in split {self.split!r} of the dataset.")
      self.subject = subject
    self.slices[k] = (residual, predicted)

  def flush(self):
    if self.subject is not None:
      self.paths += write_subject_maps(self.out_dir, self.subject,
                                       self.geometry[self.subject],
                                       self.slices)
      self.done.add(self.subject)
    self.subject, self.slices = None, {}
    return self.paths


def update_subject_hists(hists, batch, residual, opts):
  """Adds each valid slice's brain pixels to its subject's ScoreHistogram."""
  brain = batch["brain"][..., 0] > 0.5
  lesion = (batch["mask"][..., 0] > 0.5) & brain
  residual = np.asarray(residual)[..., 0]
  for i in np.nonzero(np.asarray(batch["valid"], bool))[0]:
    hist = hists.setdefault(str(batch["subject"][i]), new_histogram(opts))
    hist.update(residual[i][brain[i]], lesion[i][brain[i]])


def voxel_ml_fn(geometry, size):
  """subject -> ml of one model-grid voxel (None without an affine)."""
  def voxel_ml(subject):
    g = geometry[subject]
    if not np.any(g["affine"]):
      return None
    height, width = next(iter(g["shapes"].values()))
    _, _, new_h, new_w = fit_geometry(height, width, size)
    return (abs(np.linalg.det(g["affine"][:3, :3])) / 1000.0 * height * width
            / (new_h * new_w))
  return voxel_ml


def _keep_largest(heap, key, item, n):
  """Keeps the n items of largest key in a min-heap of (key, item)."""
  if len(heap) < n:
    heapq.heappush(heap, (key, item))
  elif key > heap[0][0]:
    heapq.heapreplace(heap, (key, item))


def detect(config, method, state, out_dir, *, mesh=None, command=None):
  """Runs the detector on config.data.eval_split and writes its outputs.

  Args:
    config: the run's config.
    method: a `genjax.methods.Method` (only `reconstruct` and the optional
      `anomaly_score` hook are used).
    state: its state (must have `step`).
    out_dir: where metrics.json, report.md, examples.png and maps/ go.
    mesh: device mesh (default: all devices).
    command: the command line shown in report.md.

  Returns:
    The metrics dict written to metrics.json.
  """
  check_single_host()
  t_start = time.time()
  opts = anomaly_options(config)
  mesh = parallel.make_mesh() if mesh is None else mesh
  score_fn = jax.jit(make_score_fn(method, opts))
  rng = jax.random.fold_in(jax.random.key(config.seed), 2_000_003)
  val_rng, test_rng = jax.random.split(rng)

  chosen = healthy_threshold(config, score_fn, state, val_rng, mesh, opts)
  val_hists = chosen.pop("_patients")
  split, fraction = config.data.eval_split, opts["patient_val_fraction"]
  # The lesion validation set (genjax.protocol), scored before the test.
  flags = (protocol.subject_lesion_flags(eval_batches(config, split))
           if not val_hists and fraction > 0 else None)
  lesion_val = protocol.validation_patients(val_hists, flags, fraction)
  held_out = set(lesion_val.pop("held_out"))
  if held_out:
    for batch, out in scored_batches(
        config, score_fn, state, split, jax.random.fold_in(val_rng, 1), mesh,
        keep=held_out.__contains__):
      update_subject_hists(val_hists, batch, out["residual"], opts)
  val = protocol.validation_threshold(val_hists)
  hist = new_histogram(opts)
  k_val = (threshold_bin(hist, chosen["threshold"])
           if chosen["threshold"] is not None else None)
  # Maps, figures and the lesion breakdown show the validation threshold.
  shown = (val["threshold_val"] if val["threshold_val"] is not None
           else chosen["threshold"])
  k_shown = threshold_bin(hist, shown) if shown is not None else hist.bins
  geometry = volume_geometry(config.data, split)
  writer = (MapWriter(os.path.join(out_dir, "maps"), geometry, split)
            if opts["write_maps"] else None)
  collector = lesions.VolumeCollector(
      voxel_ml_fn(geometry, config.data.image_size))
  slice_score, slice_label, clipped = [], [], 0
  subjects = {}  # subject -> [tp, fp, fn, brain pixels, has lesion]
  subject_hists = {}  # subject -> its own ScoreHistogram
  figure_heap, order = [], 0

  for batch, out in scored_batches(
      config, score_fn, state, split, test_rng, mesh,
      keep=(lambda s: s not in held_out) if held_out else None):
    valid = np.asarray(batch["valid"], bool)
    residual = out["residual"][..., 0]
    brain = batch["brain"][..., 0] > 0.5
    lesion = (batch["mask"][..., 0] > 0.5) & brain
    inside = brain & valid[:, None, None]
    hist.update(residual[inside], lesion[inside])
    clipped += int(np.sum((residual[inside] < 0)
                          | (residual[inside] >= hist.high)))
    slice_score.append(out["slice_score"][valid])
    slice_label.append(batch["label"][valid])
    bins = hist.bin_index(residual)
    flagged = brain & (bins >= (k_val if k_val is not None else hist.bins))
    predicted = brain & (bins >= k_shown)
    update_subject_hists(subject_hists, batch, out["residual"], opts)
    for i in np.nonzero(valid)[0]:
      subject, k = str(batch["subject"][i]), int(batch["slice"][i])
      collector.add(subject, k, predicted[i], lesion[i])
      counts = subjects.setdefault(subject, [0, 0, 0, 0, False])
      for c, v in enumerate(dice_counts(flagged[i], lesion[i])):
        counts[c] += v
      counts[3] += int(brain[i].sum())
      counts[4] |= bool(lesion[i].any())
      if writer is not None:
        writer.add(subject, k, residual[i], predicted[i])
      if lesion[i].any() and opts["num_figure_slices"]:
        order += 1
        _keep_largest(figure_heap, (int(lesion[i].sum()), -order), {
            "image": batch["image"][i], "mask": batch["mask"][i],
            "brain": batch["brain"][i],
            "reconstruction": out["reconstruction"][i],
            "residual": out["residual"][i], "subject": subject, "slice": k},
                      opts["num_figure_slices"])
  map_paths = writer.flush() if writer is not None else []
  patients = sorted(s for s, c in subjects.items() if c[4])
  at_val = ({s: subject_hists[s].dice_at(val["threshold_val"])
             for s in patients} if val["threshold_val"] is not None else {})
  lesion_table = lesions.breakdown(collector.flush(), {
      s: subject_hists[s].dice_at(shown) for s in patients}
                                   if shown is not None else {})

  scores = np.concatenate(slice_score).astype(np.float64)
  labels = np.concatenate(slice_label).astype(np.int64)
  dice_best, threshold_best = (hist.best_dice() if hist.num_pos
                               else (None, None))
  have_threshold = k_val is not None
  per_subject = {s: dice_from_counts(*c[:3]) for s, c in
                 sorted(subjects.items()) if c[4]} if have_threshold else {}
  dice_values = [v for v in per_subject.values() if v is not None]
  healthy_fp = [c[1] / max(c[3], 1) for c in subjects.values() if not c[4]]
  metrics = {
      "method": config.method,
      "step": int(jax.device_get(state.step)),
      "split": split,
      "auroc": _defined(hist.auroc),
      "auprc": _defined(hist.auprc),
      "dice_best": dice_best,
      "threshold_best": threshold_best,
      "dice_at_threshold": (hist.dice_at(chosen["threshold"])
                            if have_threshold and hist.num_pos else None),
      **chosen,
      "healthy_fpr": opts["healthy_fpr"],
      "dice_at_val_threshold": (hist.dice_at(val["threshold_val"])
                                if at_val and hist.num_pos else None),
      **val,
      "lesion_validation": lesion_val,
      "dice_per_subject_val_threshold": at_val,
      "dice_per_subject_val_threshold_mean": (
          float(np.mean(list(at_val.values()))) if at_val else None),
      "dice_per_subject_val_threshold_std": (
          float(np.std(list(at_val.values()))) if at_val else None),
      "lesions": dict(lesion_table, threshold=shown),
      "dice_per_subject_mean": (float(np.mean(dice_values)) if dice_values
                                else None),
      "dice_per_subject_std": (float(np.std(dice_values)) if dice_values
                               else None),
      "dice_per_subject": per_subject,
      "healthy_subject_fp_fraction_mean": (
          float(np.mean(healthy_fp)) if healthy_fp and have_threshold
          else None),
      "slice_auroc": _defined(lambda: detection.auroc(scores, labels)),
      "slice_auprc": _defined(lambda: detection.auprc(scores, labels)),
      "n_test_slices": int(len(labels)),
      "n_test_lesion_slices": int(labels.sum()),
      "n_test_subjects": len(subjects),
      "n_test_brain_pixels": hist.num_pos + hist.num_neg,
      "n_test_lesion_pixels": hist.num_pos,
      "histogram_clipped_pixels": clipped,
      "options": opts,
      "maps": sorted(os.path.relpath(p, out_dir) for p in map_paths),
  }
  if not 0 < labels.sum() < len(labels):
    metrics["slice_status"] = (
        f"split {split!r} has {int(labels.sum())} lesion slices of "
        f"{len(labels)}: slice-level metrics need both classes.")
  if not hist.num_pos:
    metrics["pixel_status"] = (
        f"split {split!r} has no lesion pixels inside the brain: pixel "
        "AUROC, AUPRC and Dice are undefined.")
  if clipped:
    logging.warning("%d residuals were outside [0, %g) and were counted in "
                    "the edge bins; raise config.anomaly.histogram_max.",
                    clipped, opts["histogram_max"])
  if figure_heap:
    rows = [item for _, item in sorted(figure_heap, key=lambda e: e[0],
                                       reverse=True)]
    shown = threshold_best if shown is None else shown
    metrics["figure"] = os.path.relpath(detection_figure(
        rows, shown, os.path.join(out_dir, "examples.png")), out_dir)
    metrics["figure_slices"] = [f"{r['subject']}:{r['slice']}" for r in rows]
    metrics["examples"] = os.path.relpath(write_examples(
        os.path.join(out_dir, "examples.npz"), rows), out_dir)
  metrics["subject_histograms"] = os.path.relpath(write_subject_histograms(
      os.path.join(out_dir, "subject_histograms.npz"), subject_hists,
      chosen["threshold"], val_hists, val["threshold_val"]), out_dir)
  metrics["seconds"] = time.time() - t_start
  metrics["config"] = json.loads(config.to_json_best_effort())
  write_json(os.path.join(out_dir, "metrics.json"), metrics)
  write_detect_report(os.path.join(out_dir, "report.md"), metrics, command)
  logging.info("Detection on %s: AUROC %s, AUPRC %s, Dice@threshold %s, "
               "best Dice %s. Wrote %s", split, metrics["auroc"],
               metrics["auprc"], metrics["dice_at_threshold"],
               metrics["dice_best"], out_dir)
  return metrics


# --- Writing ------------------------------------------------------------------


# Per-subject histograms live with the protocol that splits subjects.
write_subject_histograms = protocol.write_subject_histograms
load_subject_histograms = protocol.load_subject_histograms
pooled_histogram = protocol.pooled_histogram


def write_examples(path, rows):
  """DIR/detect/examples.npz: the figure's slices as arrays (stacked)."""
  arrays = {k: np.stack([np.asarray(r[k], np.float32) for r in rows])
            for k in ("image", "mask", "brain", "reconstruction",
                      "residual")}
  np.savez_compressed(
      path, subject=np.array([r["subject"] for r in rows], dtype=str),
      slice=np.array([r["slice"] for r in rows], np.int64), **arrays)
  return path



def _finite(value):
  """JSON-safe: non-finite floats become None (JSON has no inf/nan)."""
  if isinstance(value, dict):
    return {str(k): _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, (np.floating, float)):
    return float(value) if np.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_json(path, data):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(_finite(data), f, indent=2, sort_keys=False)
  return path


def fmt(value, digits=4):
  if value is None:
    return "n/a"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def reproduce_command(config, workdir, mode):
  """The `experiments.main` command that reproduces this run's config.

  Fields that differ from `configs/<method>.py:<variant>` become
  `--config.<field>=<value>` overrides, so the command holds whatever was
  overridden, however the run was started.
  """
  variant = config.get("variant", "") or ""
  spec = f"configs/{config.method}.py" + (f":{variant}" if variant else "")
  args = ["python", "-m", "experiments.main", f"--config={spec}",
          f"--workdir={workdir}", f"--mode={mode}"]
  try:
    default = importlib.import_module(f"configs.{config.method}").get_config(
        variant or None)
  except Exception:  # pylint: disable=broad-except
    return " ".join(shlex.quote(a) for a in args)

  now = train.flatten_config(json.loads(config.to_json_best_effort()))
  then = train.flatten_config(json.loads(default.to_json_best_effort()))
  for key in sorted(now):
    if key in then and now[key] != then[key]:
      value = now[key]
      # JSON turned tuples into lists; the flag parser reads Python literals.
      text = (value if isinstance(value, str) else
              repr(tuple(value)) if isinstance(value, list) else str(value))
      args.append(f"--config.{key}={text}")
  return " ".join(shlex.quote(a) for a in args)


def write_detect_report(path, metrics, command):
  """DIR/detect/report.md: the table, the command and the figure."""
  m = metrics
  lines = [
      f"# Anomaly detection: {m['method']} (step {m['step']})", "",
      "Produced by:", "", "```", command or "(called from Python)", "```", "",
      f"Split `{m['split']}`: {m['n_test_subjects']} subjects, "
      f"{m['n_test_slices']} slices ({m['n_test_lesion_slices']} with "
      f"lesions), {m['n_test_brain_pixels']} brain pixels "
      f"({m['n_test_lesion_pixels']} lesion pixels).", "",
      "| metric | value | definition |", "|---|---|---|",
      f"| auroc | {fmt(m['auroc'])} | pixel-level ROC AUC over all test "
      "brain pixels |",
      f"| auprc | {fmt(m['auprc'])} | pixel-level average precision |",
      f"| dice_at_threshold | {fmt(m['dice_at_threshold'])} | Dice of all "
      "test brain pixels at `threshold` (realistic) |",
      f"| threshold | {fmt(m['threshold'])} | residual exceeded by "
      f"{fmt(m.get('threshold_fpr_validation'))} of healthy validation brain "
      f"pixels (target healthy_fpr={m['healthy_fpr']}) |",
      f"| dice_at_val_threshold | {fmt(m.get('dice_at_val_threshold'))} | "
      "Dice of all test brain pixels at `threshold_val` (the protocol's "
      "number) |",
      f"| threshold_val | {fmt(m.get('threshold_val'))} | maximises Dice on "
      f"the {m.get('n_validation_patients', 0)} validation patients' pixels "
      f"(reaching dice_val = {fmt(m.get('dice_val'))}) |",
      f"| dice_best | {fmt(m['dice_best'])} | **upper bound**: best Dice "
      "over thresholds chosen on the test labels |",
      f"| threshold_best | {fmt(m['threshold_best'])} | the threshold of "
      "dice_best |",
      f"| dice_per_subject_mean | {fmt(m['dice_per_subject_mean'])} ± "
      f"{fmt(m['dice_per_subject_std'])} | 3D Dice per test subject with "
      "lesions at `threshold`, mean ± std |",
      f"| slice_auroc | {fmt(m['slice_auroc'])} | slice-level ROC AUC "
      f"(score: {m['options']['slice_score']}) against `label` |",
      f"| slice_auprc | {fmt(m['slice_auprc'])} | slice-level average "
      "precision |",
      f"| healthy_subject_fp_fraction_mean | "
      f"{fmt(m['healthy_subject_fp_fraction_mean'])} | fraction of brain "
      "pixels flagged in lesion-free test subjects |", "",
      f"Residual = brain · median_{m['options']['median_filter']}(brain · "
      f"mean over {m['options']['num_reconstructions']} reconstruction(s) of "
      "|x − reconstruct(x)|). Pixel metrics from streamed histograms of "
      f"{m['options']['histogram_bins']} bins on "
      f"[0, {m['options']['histogram_max']}] "
      f"({m['histogram_clipped_pixels']} pixels clipped to the edge bins).",
  ]
  lines += ["", *protocol.report_lines(m)]
  if m.get("lesions"):
    lines += ["", *lesions.markdown(m["lesions"])]
  if m.get("threshold_status"):
    lines += ["", f"Threshold: {m['threshold_status']}"]
  if m.get("slice_status"):
    lines += ["", f"Slice level: {m['slice_status']}"]
  if m["dice_per_subject"]:
    at_val = m.get("dice_per_subject_val_threshold") or {}
    lines += ["", "| subject | Dice at threshold | Dice at threshold_val |",
              "|---|---|---|"]
    lines += [f"| {s} | {fmt(d)} | {fmt(at_val.get(s))} |"
              for s, d in m["dice_per_subject"].items()]
  if m.get("figure"):
    lines += ["", f"![examples]({m['figure']})", "",
              "Rows: lesion slices with the largest lesions "
              f"({', '.join(m['figure_slices'])})."]
  if m["maps"]:
    if any(p.endswith(".nii.gz") for p in m["maps"]):
      kind = ("NIfTI with each subject's affine: overlay them on the input "
              "in ITK-SNAP or 3D Slicer")
    else:  # Slice folders have no affine (see write_subject_maps).
      kind = ("per-slice PNGs and .npy stacks: the slices have no affine, "
              "so no NIfTI")
    lines += ["", f"Anomaly maps: {len(m['maps'])} files in `maps/` "
              f"({kind})."]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def detect_mode(config, workdir):
  """`--mode=detect`: DIR/detect/{metrics.json,report.md,examples.png,maps}."""
  method, state = train.load_state(config, workdir)
  return detect(config, method, state, os.path.join(workdir, "detect"),
                command=reproduce_command(config, workdir, "detect"))
