r"""The seed report's questions 1, 3 and 4: VAE, GAN and DDPM side by side.

  python -m experiments.ablations.compare_models --workdir=runs/compare
  python -m experiments.ablations.compare_models --workdir=runs/compare --variant= \
      --override_gan=gan.gan_steps=50000 --override=eval.num_samples=4096

Trains each method with configs/<method>.py:<variant> (plus --override for
all and --override_<method> for one) in WORKDIR/<method>/ through
`genjax.train.train_and_evaluate`, which resumes from the checkpoints there
(a finished run is only restored); then runs the one evaluator
(`--mode=eval`) and the one detector (`--mode=detect`) on each into
WORKDIR/<method>/{eval,detect}/, reusing outputs made from the same
checkpoint and config unless --force.

Writes WORKDIR/comparison.{md,csv,json}: every reconstruction, sample and
detection metric, one column per method, and figures:
  samples.png          rows = methods (and the real slices), samples;
  reconstructions.png  the same healthy test slices (top row) and each
                       method's reconstruction of them;
  residuals.png        the same lesion slices, each method's residual map.
FID/KID appear only when Inception weights are configured; otherwise the
row `fd_random_conv` is the download-free random-feature Fréchet distance,
which is not FID and is labelled so.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments.ablations import common
from genjax import anomaly

METHODS = ("vae", "gan", "ddpm")

# (group, key in the metrics, label). Reconstruction keys are read from
# metrics["reconstruction"][eval_split].
EVAL_ROWS = (
    ("reconstruction (healthy test slices)", "ssim", "SSIM, whole slice"),
    ("reconstruction (healthy test slices)", "ssim_brain", "SSIM, brain"),
    ("reconstruction (healthy test slices)", "ms_ssim", "MS-SSIM"),
    ("reconstruction (healthy test slices)", "psnr", "PSNR (dB), whole slice"),
    ("reconstruction (healthy test slices)", "psnr_brain",
     "PSNR (dB), brain"),
    ("reconstruction (healthy test slices)", "sharpness",
     "sharpness of reconstructions (Sobel)"),
    ("reconstruction (healthy test slices)", "sharpness_input",
     "sharpness of their inputs"),
    ("samples", "fid", "FID (Inception; null without weights)"),
    ("samples", "kid_mean", "KID (Inception)"),
    ("samples", "fd_random_conv",
     "fd_random_conv: random-feature Fréchet distance (NOT FID)"),
    ("samples", "kid_random_conv_mean", "KID on the same random features (not Inception KID)"),
    ("samples", "sharpness_samples", "sharpness of samples"),
    ("samples", "sharpness_real", "sharpness of real slices"),
    ("samples", "hf_energy_samples", "high-frequency energy of samples"),
    ("samples", "hf_energy_real", "high-frequency energy of real slices"),
    ("samples", "diversity_ms_ssim_samples",
     "mean pairwise MS-SSIM of samples (higher = less diverse)"),
    ("samples", "diversity_ms_ssim_real", "... of real slices"),
)
DETECT_ROWS = (
    ("detection", "auroc", "pixel AUROC"),
    ("detection", "auprc", "pixel AUPRC"),
    ("detection", "dice_at_threshold", "Dice at the healthy threshold"),
    ("detection", "threshold", "that threshold (residual)"),
    ("detection", "dice_at_val_threshold",
     "Dice at the threshold chosen on validation patients"),
    ("detection", "threshold_val", "that threshold (residual)"),
    ("detection", "dice_val", "its Dice on the validation patients"),
    ("detection", "dice_best", "best Dice (upper bound, test labels)"),
    ("detection", "dice_per_subject_mean", "per-subject Dice, mean"),
    ("detection", "dice_per_subject_std", "per-subject Dice, std"),
    ("detection", "slice_auroc", "slice AUROC"),
    ("detection", "slice_auprc", "slice AUPRC"),
    ("detection", "healthy_subject_fp_fraction_mean",
     "flagged fraction of healthy subjects' brain"),
)


def build_configs(variant="cpu", method_names=METHODS, overrides=(),
                  method_overrides=None):
  """{method: validated config}: configs/<method>.py:<variant>, then
  `overrides` (FIELD=VALUE, every method), then method_overrides[method]."""
  method_overrides = method_overrides or {}
  unknown = set(method_names) - set(METHODS)
  if unknown:
    raise ValueError(f"Unknown method(s) {sorted(unknown)}: use "
                     f"{', '.join(METHODS)}.")
  return {m: common.method_config(
      m, variant, list(overrides) + list(method_overrides.get(m, ())))
          for m in method_names}


def run(workdir, configs, *, force=False, command=None):
  """Trains/reuses, evaluates and detects each method, then tabulates.

  Args:
    workdir: WORKDIR; method m lives in WORKDIR/m.
    configs: `build_configs`' {method: config}.
    force: rerun eval and detect even where outputs exist.
    command: the command line, for the report.

  Returns:
    {'table': {method: {key: value}}, 'computed': [(kind, dir)], ...}.
  """
  variant = next(iter(configs.values())).variant
  computed, results = [], {}
  for m, config in configs.items():
    run_dir = os.path.join(workdir, m)
    _, _, ev, det = common.train_eval_detect(
        config, run_dir, force=force, command=command, log=computed)
    results[m] = {"config": config, "eval": ev, "detect": det,
                  "dir": run_dir}

  table = {m: table_column(r["eval"], r["detect"],
                           r["config"].data.eval_split)
           for m, r in results.items()}
  rows = [{"group": g, "metric": k, "label": label,
           **{m: table[m][k] for m in table}}
          for g, k, label in EVAL_ROWS + DETECT_ROWS]
  outputs = {
      "csv": common.write_csv(os.path.join(workdir, "comparison.csv"), rows,
                              ["group", "metric", *table]),
      "json": common.write_json(os.path.join(workdir, "comparison.json"), {
          "command": command, "variant": variant,
          "methods": {m: {"workdir": r["dir"], "step": r["eval"]["step"],
                          "metrics": table[m],
                          "fid_status": r["eval"].get("fid_status")}
                      for m, r in results.items()}}),
  }
  outputs.update(figures(results, workdir))
  outputs["markdown"] = write_markdown(
      os.path.join(workdir, "comparison.md"), rows, results, variant,
      command, outputs)
  logging.info("Wrote %s", outputs["markdown"])
  return {"table": table, "rows": rows, "computed": computed,
          "outputs": outputs}


def table_column(ev, det, split):
  """One method's numbers: {key: value} for EVAL_ROWS + DETECT_ROWS."""
  recon = ev["reconstruction"][split]
  out = {}
  for group, key, _ in EVAL_ROWS:
    out[key] = recon.get(key) if group.startswith("reconstruction") else (
        ev.get(key))
  for _, key, _ in DETECT_ROWS:
    out[key] = det.get(key)
  return out


def _arrays(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _image_rows(rows, labels, path, title, cmap="gray", vmin=-1.0, vmax=1.0):
  """A figure of image rows [N, H, W, 1] with a label per row."""
  n_cols = max(len(r) for r in rows)
  fig, axes = plt.subplots(len(rows), n_cols,
                           figsize=(1.3 * n_cols, 1.35 * len(rows) + 0.5),
                           squeeze=False)
  for i, (images, label) in enumerate(zip(rows, labels)):
    for j in range(n_cols):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if j < len(images):
        ax.imshow(images[j, ..., 0], cmap=cmap, vmin=vmin, vmax=vmax)
      else:
        ax.axis("off")
    axes[i, 0].set_ylabel(label, fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def figures(results, workdir):
  """samples.png, reconstructions.png, residuals.png (rows = methods)."""
  out = {}
  arrays = {m: _arrays(os.path.join(r["dir"], "eval",
                                    r["eval"]["figure_arrays"]))
            for m, r in results.items()}
  names = list(results)
  first = arrays[names[0]]
  out["samples"] = _image_rows(
      [arrays[m]["samples"] for m in names] + [first["real"]],
      names + ["real"], os.path.join(workdir, "samples.png"),
      "Samples (rows: methods; last row: real test slices)")
  if len(first["inputs"]):
    for m in names[1:]:
      if not np.array_equal(arrays[m]["inputs"], first["inputs"]):
        raise ValueError(f"{m}'s evaluation shows other healthy slices than "
                         f"{names[0]}'s: were they run on different data?")
    out["reconstructions"] = _image_rows(
        [first["inputs"]] + [arrays[m]["reconstructions"] for m in names],
        ["input"] + names, os.path.join(workdir, "reconstructions.png"),
        "Healthy test slices (top) and each method's reconstruction")
  examples = {m: os.path.join(r["dir"], "detect", r["detect"]["examples"])
              for m, r in results.items() if r["detect"].get("examples")}
  if len(examples) == len(names):
    ex = {m: _arrays(p) for m, p in examples.items()}
    top = max(float(e["residual"].max()) for e in ex.values()) or 1.0
    # Residual maps in [0, top] drawn on the same scale as the images.
    scale = lambda r: 2.0 * r / top - 1.0
    out["residuals"] = _image_rows(
        [ex[names[0]]["image"], 2.0 * ex[names[0]]["mask"] - 1.0]
        + [scale(ex[m]["residual"]) for m in names],
        ["input", "lesion"] + names, os.path.join(workdir, "residuals.png"),
        f"Lesion slices: residual maps (black 0, white {top:.2f})")
  return out


def write_markdown(path, rows, results, variant, command, outputs):
  names = list(results)
  lines = ["# VAE, GAN and DDPM compared", "", "Produced by:", "", "```",
           command or "(called from Python)", "```", "",
           f"Configs `configs/<method>.py:{variant}`; "
           + ", ".join(f"{m}: step {r['eval']['step']}"
                       for m, r in results.items()) + ".", ""]
  group = None
  for row in rows:
    if row["group"] != group:
      group = row["group"]
      lines += ["", f"## {group}", "", "| metric | " + " | ".join(names)
                + " |", "|---|" + "---|" * len(names)]
    lines.append(f"| {row['label']} | " + " | ".join(
        anomaly.fmt(row[m]) for m in names) + " |")
  statuses = {r["eval"].get("fid_status") for r in results.values()}
  lines += ["", "FID: " + "; ".join(sorted(s for s in statuses if s)), "",
            "fd_random_conv is a Fréchet distance on the features of a fixed "
            "random conv net: download-free, comparable between these "
            "methods (same image size, same real slices), but NOT FID. "
            "Each method's own eval/report.md and detect/report.md hold the "
            "details.", "",
            "Detection: " + " ".join(
                f"{m}: {common.protocol_sentence(r['detect'])}"
                for m, r in results.items())]
  for key in ("samples", "reconstructions", "residuals"):
    if key in outputs:
      lines += ["", f"![{key}]({os.path.basename(outputs[key])})"]
  return common.write_text(path, "\n".join(lines))


# --- Command line -------------------------------------------------------------

def define_flags():
  """The command-line flags (defined only when run as a script)."""
  flags.DEFINE_string("workdir", None, "Where the runs go.")
  flags.DEFINE_string("variant", "cpu", "Config variant: cpu, smoke or "
                      "empty (research scale).")
  flags.DEFINE_list("methods", list(METHODS), "Methods compared.")
  flags.DEFINE_multi_string("override", [],
                            "FIELD=VALUE for every method (repeatable).")
  for m in METHODS:
    flags.DEFINE_multi_string(f"override_{m}", [],
                              f"FIELD=VALUE for the {m} only (repeatable).")
  flags.DEFINE_bool("force", False, "Rerun eval and detect.")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    configs = build_configs(f.variant, f.methods, f.override,
                            {m: f[f"override_{m}"].value for m in METHODS})
  except (KeyError, ValueError) as e:
    sys.exit(f"Config error: {e.args[0] if e.args else e}")
  result = run(f.workdir, configs, force=f.force,
               command=common.command_line(sys.argv))
  print(open(result["outputs"]["markdown"]).read())


if __name__ == "__main__":
  define_flags()
  app.run(main)
