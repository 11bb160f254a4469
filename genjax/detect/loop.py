"""The detector: options, the thresholds and one pass over the test split.

See `genjax.detect` for what it computes and writes. `detect` only needs a
method's `reconstruct` (and its optional `anomaly_score` hook); nothing here
knows a method's name.
"""

import heapq
import json
import time

from absl import logging
import jax
import numpy as np

from genjax import files
from genjax import parallel
from genjax import protocol
from genjax import train
from genjax.data import builders
from genjax.detect import batches as batches_lib
from genjax.detect import histograms as hists_lib
from genjax.detect import maps
from genjax.detect import postprocess
from genjax.detect import report
from genjax.detect import scores
from genjax.metrics import detection
from genjax.metrics import lesions

# --- Config fields read with defaults -----------------------------------------
# The detector's fields of config.anomaly (configs/base.py documents them).
ANOMALY_FIELDS = ("median_filter", "num_reconstructions", "healthy_fpr",
                  "slice_score", "slice_top_k", "histogram_bins",
                  "histogram_max", "num_figure_slices", "write_maps",
                  "patient_val_fraction")
# Fields added later: configs saved before them get these (today's) values.
OPTIONAL_FIELDS = {"score": "residual", "mahalanobis_eps": 1e-3,
                   "erode_brain": 0, "min_component": 0}


def _is_int(value, low):
  return isinstance(value, int) and not isinstance(value, bool) and value >= low


def anomaly_options(config):
  """The detector's options from config.anomaly, validated.

  Raises:
    ValueError naming the field (genjax.config turns it into ConfigError).
  """
  opts = {k: config.anomaly[k] for k in ANOMALY_FIELDS}
  opts.update({k: config.anomaly.get(k, v)
               for k, v in OPTIONAL_FIELDS.items()})
  size = opts["median_filter"]
  if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
    raise ValueError(f"config.anomaly.median_filter={size!r}: must be an odd "
                     "integer >= 1 (1 turns the filter off).")
  if not _is_int(opts["num_reconstructions"], 1):
    raise ValueError("config.anomaly.num_reconstructions="
                     f"{opts['num_reconstructions']!r}: must be an integer "
                     ">= 1.")
  if not 0.0 < opts["healthy_fpr"] < 1.0:
    raise ValueError(f"config.anomaly.healthy_fpr={opts['healthy_fpr']!r}: "
                     "must be in (0, 1), e.g. 0.01.")
  if opts["slice_score"] not in ("top_k_mean", "mean", "sum"):
    raise ValueError(f"config.anomaly.slice_score={opts['slice_score']!r}: "
                     "use 'top_k_mean', 'mean' or 'sum'.")
  if not _is_int(opts["slice_top_k"], 1):
    raise ValueError(f"config.anomaly.slice_top_k={opts['slice_top_k']!r}: "
                     "must be an integer >= 1.")
  f = opts["patient_val_fraction"]
  if not (isinstance(f, (int, float)) and 0.0 <= f < 1.0):
    raise ValueError(f"config.anomaly.patient_val_fraction={f!r}: must be "
                     "in [0, 1) (0: no patients held out for validation).")
  if not (opts["histogram_bins"] >= 16 and opts["histogram_max"] > 0):
    raise ValueError("config.anomaly.histogram_bins must be >= 16 and "
                     "histogram_max > 0.")
  _check_score_options(opts)
  for name in ("erode_brain", "min_component"):
    if not _is_int(opts[name], 0):
      raise ValueError(f"config.anomaly.{name}={opts[name]!r}: must be an "
                       "integer >= 0 (pixels; 0 turns it off).")
  return opts


def _check_score_options(opts):
  if opts["score"] not in scores.SCORES:
    raise ValueError(f"config.anomaly.score={opts['score']!r}: use one of "
                     f"{', '.join(repr(s) for s in scores.SCORES)}.")
  if opts["score"] != "mahalanobis":
    return
  eps = opts["mahalanobis_eps"]
  if not (isinstance(eps, (int, float)) and eps > 0):
    raise ValueError(f"config.anomaly.mahalanobis_eps={eps!r}: must be > 0.")
  if opts["num_reconstructions"] < 2:
    raise ValueError(
        "config.anomaly.score='mahalanobis' needs a mean and a variance "
        "over reconstructions: set config.anomaly.num_reconstructions >= 2 "
        f"(got {opts['num_reconstructions']}).")
  top = 2.0 / np.sqrt(eps)
  if opts["histogram_max"] < top:
    raise ValueError(
        f"config.anomaly.histogram_max={opts['histogram_max']} is below the "
        f"largest Mahalanobis score 2 / sqrt(mahalanobis_eps) = {top:.4g}: "
        f"set --config.anomaly.histogram_max={np.ceil(top):g}.")


# --- Passes over a split ------------------------------------------------------


class Timer:
  """Seconds and slices of the score function, compilation excluded.

  The first batch scored (which compiles) is not counted.
  """

  def __init__(self):
    self.seconds, self.slices, self.started = 0.0, 0, False

  def per_slice(self):
    return self.seconds / self.slices if self.slices else None


def _stored_slices(data_config, split):
  """Slices stored in `split` (before the filters), or None if unknown."""
  try:
    info = builders.get_builder(data_config).info
    return int(info.splits[split].num_examples)
  except Exception:  # pylint: disable=broad-except
    return None


def scored_batches(config, score_fn, state, split, rng, mesh, keep=None,
                   timer=None, stop=None, what=None):
  """Yields (host batch, host outputs) over `split` (the subjects for which
  keep(subject) holds; default all), numpy. Batch i uses fold_in(rng, i).

  With `what`, progress is logged (slices done of those stored, an ETA);
  with `stop` (a `train.Preemption`), a SIGTERM ends the pass between two
  batches with `train.Preempted`.
  """
  batches = batches_lib.eval_batches(config, split)
  if keep is not None:
    batches = protocol.select_subjects(batches, keep)
  progress = done = None
  if what is not None:
    # The stored count bounds what the filters keep (the ETA is an upper
    # bound); a subset of subjects has no count to compare with.
    progress = train.Progress(
        what, "slices",
        total=None if keep is not None else _stored_slices(config.data, split))
    done = 0
  for i, batch in enumerate(batches):
    if stop is not None and stop.stop_requested():
      raise train.Preempted(
          f"Scoring split {split!r} stopped by SIGTERM after {i} batches; "
          "metrics.json and report.md were not written; run the same "
          "command again to redo the detection.")
    images, brain = batches_lib.batch_to_device(batch, mesh,
                                                config.eval.batch_size)
    t0 = time.perf_counter()
    out = score_fn(state, images, brain, jax.random.fold_in(rng, i))
    out = jax.tree.map(np.asarray, jax.device_get(out))
    if timer is not None:
      if timer.started:
        timer.seconds += time.perf_counter() - t0
        timer.slices += len(batch["valid"])
      timer.started = True
    valid = np.asarray(batch["valid"], bool)
    if not np.all(np.isfinite(out["residual"][valid])) or not np.all(
        np.isfinite(out["slice_score"][valid])):
      raise FloatingPointError(
          f"Non-finite anomaly scores in batch {i} of split {split!r}: the "
          f"{config.method} reconstruction produced NaN/inf. Check the "
          "checkpoint (did training diverge?) and config.anomaly.")
    if progress is not None:
      done += int(valid.sum())
      progress(done)
    yield batch, out
  if progress is not None:
    progress(done, final=True)


def healthy_threshold(config, score_fn, state, rng, mesh, opts, timer=None,
                      stop=None):
  """The threshold from the healthy slices of config.data.val_split.

  Returns:
    dict: threshold, threshold_fpr_validation (achieved on validation),
    n_validation_slices, n_validation_pixels; threshold None with
    threshold_status saying why when it cannot be chosen.
  """
  split = config.data.val_split
  if not batches_lib.has_split(config.data, split):
    return {"threshold": None, "_patients": {}, "threshold_status": (
        f"the dataset has no split {split!r} (config.data.val_split): no "
        "healthy data to choose a threshold on, so dice_at_threshold and the "
        "per-subject Dice are not computed.")}
  hist = hists_lib.new_histogram(opts)
  n_slices, subject_hists = 0, {}
  for batch, out in scored_batches(
      config, score_fn, state, split, rng, mesh, timer=timer, stop=stop,
      what=f"Detection, healthy threshold on {split!r}"):
    hists_lib.update_subject_hists(subject_hists, batch, out["residual"],
                                   opts)
    use = np.asarray(batch["valid"], bool) & (batch["label"] == 0)
    n_slices += int(use.sum())
    inside = batch["brain"][use][..., 0] > 0.5
    residual = out["residual"][use][..., 0][inside]
    hist.update(residual, np.zeros(residual.shape, bool))
  threshold, _, fpr = hists_lib.histogram_threshold_at_fpr(
      hist, opts["healthy_fpr"])
  result = {"threshold": threshold, "threshold_fpr_validation": fpr,
            "n_validation_slices": n_slices,
            "n_validation_pixels": hist.num_neg,
            # Patients of val_split, if any, are the lesion validation set.
            "_patients": {s: h for s, h in subject_hists.items() if h.num_pos}}
  if threshold is None:
    result["threshold_status"] = (
        f"split {split!r} has no healthy brain pixels after the filters.")
  return result


def _keep_largest(heap, key, item, n):
  """Keeps the n items of largest key in a min-heap of (key, item)."""
  if len(heap) < n:
    heapq.heappush(heap, (key, item))
  elif key > heap[0][0]:
    heapq.heapreplace(heap, (key, item))


def _mean_std(values, have=True):
  values = list(values)
  if not (values and have):
    return None, None
  return float(np.mean(values)), float(np.std(values))


# --- The detector -------------------------------------------------------------


def detect(config, method, state, out_dir, *, mesh=None, command=None):
  """Runs the detector on config.data.eval_split and writes its outputs.

  Progress is logged per pass with an ETA. A SIGTERM stops between two
  batches with `train.Preempted`: metrics.json, report.md, the figure and
  the histograms are written only at the end, so none is written; maps of
  the subjects finished so far may be (each file whole). The same command
  redoes the whole detection.

  Args:
    config: the run's config.
    method: a `genjax.methods.Method` (only `reconstruct` and the optional
      `anomaly_score` hook are used).
    state: its state (must have `step`).
    out_dir: where metrics.json, report.md, examples.png and maps/ go (a
      local folder or any epath URL, e.g. gs://bucket/run/detect).
    mesh: device mesh (default: all devices).
    command: the command line shown in report.md.

  Returns:
    The metrics dict written to metrics.json.

  Raises:
    train.Preempted: SIGTERM arrived.
  """
  with train.Preemption() as stop:
    return _detect(config, method, state, out_dir, mesh, command, stop)


def _detect(config, method, state, out_dir, mesh, command, stop):
  """`detect` with SIGTERM turned into `stop`."""
  batches_lib.check_single_host()
  t_start = time.time()
  opts = anomaly_options(config)
  mesh = parallel.make_mesh() if mesh is None else mesh
  score_fn = jax.jit(scores.make_score_fn(method, opts))
  rng = jax.random.fold_in(jax.random.key(config.seed), 2_000_003)
  val_rng, test_rng = jax.random.split(rng)
  timer = Timer()

  chosen = healthy_threshold(config, score_fn, state, val_rng, mesh, opts,
                             timer, stop)
  val_hists = chosen.pop("_patients")
  split, fraction = config.data.eval_split, opts["patient_val_fraction"]
  # The lesion validation set (genjax.protocol), scored before the test.
  flags = (protocol.subject_lesion_flags(
      batches_lib.eval_batches(config, split))
           if not val_hists and fraction > 0 else None)
  lesion_val = protocol.validation_patients(val_hists, flags, fraction)
  held_out = set(lesion_val.pop("held_out"))
  if held_out:
    for batch, out in scored_batches(
        config, score_fn, state, split, jax.random.fold_in(val_rng, 1), mesh,
        keep=held_out.__contains__, timer=timer, stop=stop,
        what=f"Detection, validation patients of {split!r}"):
      hists_lib.update_subject_hists(val_hists, batch, out["residual"], opts)
  val = protocol.validation_threshold(val_hists)
  hist = hists_lib.new_histogram(opts)
  k_val = (hists_lib.threshold_bin(hist, chosen["threshold"])
           if chosen["threshold"] is not None else None)
  # Maps, figures and the lesion breakdown show the validation threshold.
  shown = (val["threshold_val"] if val["threshold_val"] is not None
           else chosen["threshold"])
  k_shown = (hists_lib.threshold_bin(hist, shown) if shown is not None
             else hist.bins)
  min_component = opts["min_component"]
  geometry = maps.volume_geometry(config.data, split)
  writer = (maps.MapWriter(files.join(out_dir, "maps"), geometry, split)
            if opts["write_maps"] else None)
  collector = lesions.VolumeCollector(
      maps.voxel_ml_fn(geometry, config.data.image_size))
  slice_score, slice_label, clipped = [], [], 0
  subjects = {}  # subject -> [tp, fp, fn, brain pixels, has lesion]
  shown_counts = {}  # subject -> [tp, fp, fn] at `shown` (post-processed)
  subject_hists = {}  # subject -> its own ScoreHistogram
  figure_heap, order = [], 0

  for batch, out in scored_batches(
      config, score_fn, state, split, test_rng, mesh,
      keep=(lambda s: s not in held_out) if held_out else None, timer=timer,
      stop=stop, what=f"Detection on {split!r}"):
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
    hists_lib.update_subject_hists(subject_hists, batch, out["residual"],
                                   opts)
    for i in np.nonzero(valid)[0]:
      subject, k = str(batch["subject"][i]), int(batch["slice"][i])
      flagged_i = postprocess.remove_small_components(flagged[i],
                                                      min_component)
      predicted_i = postprocess.remove_small_components(predicted[i],
                                                        min_component)
      collector.add(subject, k, predicted_i, lesion[i])
      counts = subjects.setdefault(subject, [0, 0, 0, 0, False])
      at_shown = shown_counts.setdefault(subject, [0, 0, 0])
      for c, v in enumerate(hists_lib.dice_counts(flagged_i, lesion[i])):
        counts[c] += v
      for c, v in enumerate(hists_lib.dice_counts(predicted_i, lesion[i])):
        at_shown[c] += v
      counts[3] += int(brain[i].sum())
      counts[4] |= bool(lesion[i].any())
      if writer is not None:
        writer.add(subject, k, residual[i], predicted_i)
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
  if min_component:
    # Dice of the post-processed maps: from the counts of what was kept.
    dice_at = lambda s: hists_lib.dice_from_counts(*shown_counts[s])
    pooled = lambda table: hists_lib.dice_from_counts(
        *np.sum([c[:3] for c in table.values()], axis=0))
  else:
    dice_at = lambda s: subject_hists[s].dice_at(shown)
  at_val = ({s: dice_at(s) for s in patients}
            if val["threshold_val"] is not None else {})
  lesion_table = lesions.breakdown(
      collector.flush(),
      {s: dice_at(s) for s in patients} if shown is not None else {})

  slice_scores = np.concatenate(slice_score).astype(np.float64)
  labels = np.concatenate(slice_label).astype(np.int64)
  dice_best, threshold_best = (hist.best_dice() if hist.num_pos
                               else (None, None))
  have_threshold = k_val is not None
  per_subject = {s: hists_lib.dice_from_counts(*c[:3]) for s, c in
                 sorted(subjects.items()) if c[4]} if have_threshold else {}
  dice_values = [v for v in per_subject.values() if v is not None]
  healthy_fp = [c[1] / max(c[3], 1) for c in subjects.values() if not c[4]]
  dice_at_threshold = dice_at_val = None
  if have_threshold and hist.num_pos:
    dice_at_threshold = (pooled(subjects) if min_component
                         else hist.dice_at(chosen["threshold"]))
  if at_val and hist.num_pos:
    dice_at_val = (pooled(shown_counts) if min_component
                   else hist.dice_at(val["threshold_val"]))
  val_mean, val_std = _mean_std(at_val.values())
  subject_mean, subject_std = _mean_std(dice_values)
  calls, calls_how = scores.network_calls(method, opts)
  defined = hists_lib.defined
  metrics = {
      "method": config.method,
      "step": int(jax.device_get(state.step)),
      "split": split,
      "auroc": defined(hist.auroc),
      "auprc": defined(hist.auprc),
      "dice_best": dice_best,
      "threshold_best": threshold_best,
      "dice_at_threshold": dice_at_threshold,
      **chosen,
      "healthy_fpr": opts["healthy_fpr"],
      "dice_at_val_threshold": dice_at_val,
      **val,
      "lesion_validation": lesion_val,
      "dice_per_subject_val_threshold": at_val,
      "dice_per_subject_val_threshold_mean": val_mean,
      "dice_per_subject_val_threshold_std": val_std,
      "lesions": dict(lesion_table, threshold=shown),
      "dice_per_subject_mean": subject_mean,
      "dice_per_subject_std": subject_std,
      "dice_per_subject": per_subject,
      "healthy_subject_fp_fraction_mean": (
          float(np.mean(healthy_fp)) if healthy_fp and have_threshold
          else None),
      "slice_auroc": defined(lambda: detection.auroc(slice_scores, labels)),
      "slice_auprc": defined(lambda: detection.auprc(slice_scores, labels)),
      "n_test_slices": int(len(labels)),
      "n_test_lesion_slices": int(labels.sum()),
      "n_test_subjects": len(subjects),
      "n_test_brain_pixels": hist.num_pos + hist.num_neg,
      "n_test_lesion_pixels": hist.num_pos,
      "histogram_clipped_pixels": clipped,
      "network_calls_per_slice": calls,
      "network_calls_counted": calls_how,
      "seconds_per_slice": timer.per_slice(),
      "options": opts,
      "maps": sorted(files.relpath(p, out_dir) for p in map_paths),
  }
  if min_component:
    metrics["postprocess_status"] = (
        f"components under {min_component} pixels are removed from the "
        "thresholded maps behind dice_at_threshold, dice_at_val_threshold, "
        "the per-subject Dice, the lesion table and the prediction maps; "
        "auroc, auprc, dice_best and the choice of threshold_val use the "
        "unprocessed scores.")
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
    metrics["figure"] = files.relpath(report.detection_figure(
        rows, shown, files.join(out_dir, "examples.png")), out_dir)
    metrics["figure_slices"] = [f"{r['subject']}:{r['slice']}" for r in rows]
    metrics["examples"] = files.relpath(report.write_examples(
        files.join(out_dir, "examples.npz"), rows), out_dir)
  metrics["subject_histograms"] = files.relpath(
      protocol.write_subject_histograms(
          files.join(out_dir, "subject_histograms.npz"), subject_hists,
          chosen["threshold"], val_hists, val["threshold_val"]), out_dir)
  metrics["seconds"] = time.time() - t_start
  metrics["config"] = json.loads(config.to_json_best_effort())
  report.write_json(files.join(out_dir, "metrics.json"), metrics)
  report.write_detect_report(files.join(out_dir, "report.md"), metrics,
                             command)
  logging.info("Detection on %s: AUROC %s, AUPRC %s, Dice@threshold %s, "
               "best Dice %s. Wrote %s", split, metrics["auroc"],
               metrics["auprc"], metrics["dice_at_threshold"],
               metrics["dice_best"], out_dir)
  return metrics


def detect_mode(config, workdir):
  """`--mode=detect`: DIR/detect/{metrics.json,report.md,examples.png,maps}."""
  method, state = train.load_state(config, workdir)
  return detect(config, method, state, files.join(workdir, "detect"),
                command=report.reproduce_command(config, workdir, "detect"))
