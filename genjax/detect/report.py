"""What the detector writes beside its maps: JSON, report.md, the figure.

`write_json`, `fmt` and `reproduce_command` are shared with `--mode=eval`
(genjax.evaluate).
"""

import importlib
import json
import shlex

import numpy as np

from genjax import files
from genjax import protocol
from genjax import train
from genjax import viz
from genjax.detect import maps
from genjax.metrics import lesions

colorize = maps.colorize


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


def write_examples(path, rows):
  """DIR/detect/examples.npz: the figure's slices as arrays (stacked)."""
  arrays = {k: np.stack([np.asarray(r[k], np.float32) for r in rows])
            for k in ("image", "mask", "brain", "reconstruction",
                      "residual")}
  files.save_npz(
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
  """Writes `data` (non-finite floats as null) as JSON through epath."""
  files.write_json(path, _finite(data), indent=2, sort_keys=False)
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


def score_line(opts):
  """How the residual map was made, in one sentence of report.md."""
  o = opts
  n = o["num_reconstructions"]
  if o.get("score", "residual") == "mahalanobis":
    inner = (f"|x − mu| / sqrt(s² + {o['mahalanobis_eps']}) over {n} "
             "reconstructions (mean mu, variance s²)")
  else:
    inner = f"mean over {n} reconstruction(s) of |x − reconstruct(x)|"
  brain = (f"brain eroded by {o['erode_brain']} px" if o.get("erode_brain")
           else "brain")
  line = (f"Residual = {brain} · median_{o['median_filter']}({brain} · "
          f"{inner}).")
  if o.get("min_component"):
    line += (f" Thresholded maps drop 8-connected components under "
             f"{o['min_component']} pixels per slice.")
  return line


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
      score_line(m["options"]) + " Pixel metrics from streamed histograms "
      f"of {m['options']['histogram_bins']} bins on "
      f"[0, {m['options']['histogram_max']}] "
      f"({m['histogram_clipped_pixels']} pixels clipped to the edge bins).",
  ]
  if m.get("network_calls_per_slice") is not None:
    lines += ["", f"Cost: {m['network_calls_per_slice']} network "
              f"evaluations per slice ({m.get('network_calls_counted')}), "
              f"{fmt(m.get('seconds_per_slice'))} s per slice."]
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
  files.write_text(path, "\n".join(lines) + "\n")
  return path
