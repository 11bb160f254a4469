r"""The seed report's question 5: how does the noise level t change detection?

  python -m experiments.ablations.noise_level --workdir=runs/ddpm_cpu
  python -m experiments.ablations.noise_level --workdir=runs/ddpm_cpu \
      --noise_levels=50,100,200 --noises=gaussian --sampler=ddim \
      --override=anomaly.num_steps=50

For a trained DDPM in WORKDIR (its config is rebuilt from WORKDIR/config.json,
or given with --config), runs `genjax.anomaly.detect` once per (noise, t)
with config.anomaly.noise / noise_level set, into
WORKDIR/ablations/noise_level/<noise>_t<t>/ (the detector's usual outputs,
without the per-subject NIfTI maps unless --write_maps). A (noise, t) whose
outputs exist for the same checkpoint and config is not recomputed.

Then writes, in WORKDIR/ablations/noise_level/:
  results.csv, results.md, results.json
      one row per (noise, t): pixel AUPRC, AUROC, Dice at the healthy
      validation threshold, Dice at the threshold chosen on the validation
      patients (genjax.protocol) and best Dice (upper bound), each with a
      bootstrap interval over test subjects (subjects resampled with
      replacement, metrics recomputed from their pixel histograms), slice
      AUROC/AUPRC and the detector's seconds;
  Per noise, the t with the best validation-patient AUPRC (`auprc_val`) is
  marked `chosen`: t is chosen on validation and reported on test.
  metrics.png   AUPRC and Dice against t, one line per noise, error bars =
                the bootstrap interval;
  residuals_<noise>.png
                residual maps of the same lesion slices (rows) at each t
                (columns), one colour scale per figure.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags
import numpy as np

from experiments.ablations import common
from genjax import anomaly
from genjax import files
from genjax import methods
from genjax import train
from genjax.diffusion import samplers
from genjax.diffusion import schedules

DEFAULT_LEVELS = (25, 50, 100, 200, 300, 400, 500, 750)
DEFAULT_NOISES = ("gaussian", "simplex")
SAMPLERS = {"ancestral": "ddpm", "ddpm": "ddpm", "ddim": "ddim"}
METRICS = ("auprc", "auroc", "dice_at_threshold", "dice_at_val_threshold",
           "dice_best")
# What t is chosen by: the validation patients' pixel AUPRC (threshold-free,
# so t is chosen before, and independently of, the threshold).
SELECT_BY = "auprc_val"
VALIDATION = ("auprc_val", "dice_val", "threshold_val",
              "n_validation_patients")

COLUMNS = (["noise", "t", "chosen", "sampler", "model_evals", "step"]
           + [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]
           + list(VALIDATION)
           + ["slice_auroc", "slice_auprc", "dice_per_subject_mean",
              "threshold", "n_test_subjects", "seconds"])


def level_dir(root, noise, t):
  return files.join(root, f"{noise}_t{int(t):04d}")


def model_evaluations(config, t):
  """UNet evaluations per reconstruction at noise level t (None: not a
  discrete sampler). A config's anomaly.num_steps is the step density of a
  full run from T (genjax.diffusion.samplers), so level t takes about
  num_steps * t / T of them."""
  if config.anomaly.sampler not in ("ddpm", "ddim"):
    return None
  n = config.diffusion.num_timesteps
  start = schedules.noise_level_to_index(int(t), n)
  steps = config.anomaly.num_steps
  steps = samplers.scaled_num_steps(steps, start, n) if steps else None
  return int(len(samplers.timestep_sequence(start, steps)))


def level_config(config, noise, t):
  """The run's config with the detector's noise and level set."""
  cfg = common.deep_copy(config)
  common.set_field(cfg, "anomaly.noise", noise)
  common.set_field(cfg, "anomaly.noise_level", int(t))
  return common.validate(cfg)


def choose(rows, key=SELECT_BY):
  """Marks, per noise, the t with the best validation score.

  Args:
    rows: the sweep's rows (dicts with noise, t and `key`).
    key: the validation metric maximised (ties: the smaller t, cheaper).

  Returns:
    {noise: chosen t} (a noise without any validation score is absent);
    each row's "chosen" is set to True or False.
  """
  chosen = {}
  for row in rows:
    best = chosen.get(row["noise"])
    if row.get(key) is not None and (best is None or (
        row[key], -row["t"]) > (best[key], -best["t"])):
      chosen[row["noise"]] = row
  for row in rows:
    row["chosen"] = chosen.get(row["noise"]) is row
  return {noise: row["t"] for noise, row in chosen.items()}


def run(config, workdir, noise_levels=DEFAULT_LEVELS, noises=DEFAULT_NOISES,
        *, num_resamples=1000, seed=0, force=False, command=None):
  """The sweep; returns {'rows': [...], 'computed': [(noise, t)], ...}.

  Args:
    config: the DDPM run's config (with any overrides applied).
    workdir: the run's workdir (checkpoints are read from it).
    noise_levels: the t values (noising steps of T).
    noises: 'gaussian' and/or 'simplex'.
    num_resamples: bootstrap resamples.
    seed: bootstrap seed.
    force: recompute every (noise, t).
    command: the command line, for the reports.
  """
  if config.method != "ddpm":
    raise ValueError(f"{workdir} holds a {config.method!r} run: the noise "
                     "level is the DDPM's (config.method='ddpm').")
  root = files.join(workdir, "ablations", "noise_level")
  # Every (noise, t) config is built (and validated) before any work.
  configs = {(n, int(t)): level_config(config, n, t)
             for n in noises for t in noise_levels}
  _, state = train.load_state(config, workdir)
  computed, rows, examples = [], [], {}
  for (noise, t), cfg in configs.items():
    out_dir = level_dir(root, noise, t)
    log = []
    metrics = common.run_or_reuse(
        "detect", cfg, methods.get(cfg), state, out_dir, force=force,
        command=command, log=log)
    if log:
      computed.append((noise, t))
    data = anomaly.load_subject_histograms(
        files.join(out_dir, metrics["subject_histograms"]))
    boot = common.bootstrap_subjects(data, num_resamples, seed)
    row = {"noise": noise, "t": t, "sampler": cfg.anomaly.sampler,
           "model_evals": model_evaluations(cfg, t), "step": metrics["step"]}
    for m in METRICS:
      row[m] = metrics[m]
      row[f"{m}_lo"], row[f"{m}_hi"] = boot[m]["lo"], boot[m]["hi"]
    for key in VALIDATION + ("slice_auroc", "slice_auprc",
                             "dice_per_subject_mean", "threshold",
                             "n_test_subjects", "seconds"):
      row[key] = metrics.get(key)
    rows.append(row)
    protocol = common.protocol_sentence(metrics)
    if metrics.get("examples"):
      examples[(noise, t)] = files.join(out_dir, metrics["examples"])
    logging.info("noise=%s t=%d: AUPRC %s, Dice %s (%.0f s)", noise, t,
                 row["auprc"], row["dice_at_threshold"], row["seconds"])

  chosen = choose(rows)
  outputs = {
      "csv": common.write_csv(files.join(root, "results.csv"), rows,
                              COLUMNS),
      "json": common.write_json(files.join(root, "results.json"), {
          "workdir": workdir, "command": command, "rows": rows,
          "chosen": chosen, "chosen_by": SELECT_BY,
          "bootstrap": {"resamples": num_resamples, "seed": seed,
                        "level": 0.95, "unit": "test subject"}}),
      "plot": plot_metrics(rows, noises, files.join(root, "metrics.png")),
  }
  for noise in noises:
    paths = [examples[(noise, int(t))] for t in noise_levels
             if (noise, int(t)) in examples]
    if paths:
      outputs[f"residuals_{noise}"] = residual_figure(
          paths, [int(t) for t in noise_levels if (noise, int(t)) in examples],
          noise, files.join(root, f"residuals_{noise}.png"))
  outputs["markdown"] = write_markdown(
      files.join(root, "results.md"), rows, config, num_resamples,
      command, outputs, protocol if rows else "")
  return {"rows": rows, "computed": computed, "outputs": outputs,
          "root": root, "chosen": chosen}


def plot_metrics(rows, noises, path):
  """AUPRC, Dice at threshold and best Dice against t, with error bars."""
  panels = (("auprc", "pixel AUPRC"),
            ("dice_at_threshold", "Dice at the healthy threshold"),
            ("dice_at_val_threshold", "Dice at the validation threshold"),
            ("dice_best", "best Dice (upper bound)"))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
  for ax, (key, title) in zip(axes, panels):
    for noise in noises:
      sel = [r for r in rows if r["noise"] == noise and r[key] is not None]
      if not sel:
        continue
      t = np.array([r["t"] for r in sel])
      y = np.array([r[key] for r in sel], np.float64)
      lo = np.array([r[f"{key}_lo"] if r[f"{key}_lo"] is not None else v
                     for r, v in zip(sel, y)], np.float64)
      hi = np.array([r[f"{key}_hi"] if r[f"{key}_hi"] is not None else v
                     for r, v in zip(sel, y)], np.float64)
      # Percentile intervals need not contain the point estimate.
      err = np.stack([np.maximum(y - lo, 0), np.maximum(hi - y, 0)])
      ax.errorbar(t, y, yerr=err, marker="o", capsize=3, label=noise)
    ax.set_xlabel("noise level t (noising steps)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.suptitle("DDPM anomaly detection against t "
               "(error bars: 95% bootstrap over test subjects)", fontsize=10)
  fig.tight_layout()
  common.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def residual_figure(paths, levels, noise, path):
  """Rows: the lesion slices of detect's examples.npz; columns: input,
  lesion mask, then the residual at each t (one colour scale)."""
  loaded = []
  for p in paths:
    with files.load_npz(p) as f:
      loaded.append({k: f[k] for k in f.files})
  first = loaded[0]
  keys = [f"{s}:{k}" for s, k in zip(first["subject"], first["slice"])]
  for t, ex in zip(levels, loaded):
    other = [f"{s}:{k}" for s, k in zip(ex["subject"], ex["slice"])]
    if other != keys:
      # The detector picks the largest lesions, which do not depend on t.
      raise ValueError(f"{paths[0]} and the t={t} examples show different "
                       f"slices ({keys} vs {other}).")
  n = len(keys)
  vmax = max(float(ex["residual"].max()) for ex in loaded) or 1.0
  cols = 2 + len(levels)
  fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n + 0.6),
                           squeeze=False)
  for i in range(n):
    axes[i, 0].imshow(first["image"][i, ..., 0], cmap="gray", vmin=-1,
                      vmax=1)
    axes[i, 1].imshow(first["mask"][i, ..., 0], cmap="gray", vmin=0, vmax=1)
    for j, ex in enumerate(loaded):
      im = axes[i, 2 + j].imshow(ex["residual"][i, ..., 0], cmap="inferno",
                                 vmin=0, vmax=vmax)
    axes[i, 0].set_ylabel(keys[i], fontsize=6)
  for j, title in enumerate(["input", "lesion"] + [f"t={t}" for t in levels]):
    axes[0, j].set_title(title, fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(im, ax=axes, shrink=0.6, label="residual")
  fig.suptitle(f"Residual maps, {noise} noise", fontsize=10)
  common.save_figure(fig, path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def write_markdown(path, rows, config, num_resamples, command, outputs,
                   protocol=""):
  table = []
  for r in rows:
    cell = {k: r[k] for k in ("noise", "t", "sampler", "model_evals",
                              "step")}
    cell["t"] = f"**{r['t']}** (chosen)" if r.get("chosen") else r["t"]
    cell["auprc_val"] = common.fmt(r.get("auprc_val"), 3)
    for m in METRICS:
      cell[m] = common.with_interval(r[m], r[f"{m}_lo"], r[f"{m}_hi"])
    cell["slice_auroc"] = common.fmt(r["slice_auroc"], 3)
    cell["seconds"] = common.fmt(r["seconds"], 0)
    table.append({k: str(v) for k, v in cell.items()})
  cols = ["noise", "t", "sampler", "model_evals", "step", "auprc_val",
          *METRICS,
          "slice_auroc",
          "seconds"]
  lines = [
      "# DDPM anomaly detection against the noise level t", "",
      "Produced by:", "", "```", command or "(called from Python)", "```", "",
      f"Checkpoint step {rows[0]['step'] if rows else 'n/a'}; reconstruction "
      f"sampler `{config.anomaly.sampler}` (num_steps "
      f"{config.anomaly.num_steps}); split `{config.data.eval_split}`, "
      f"{rows[0]['n_test_subjects'] if rows else 'n/a'} subjects.", "",
      f"**Protocol**: {protocol} Per noise, the chosen t (bold) has the "
      f"best validation `{SELECT_BY}` (pixel AUPRC of the validation "
      "patients); every other column is the test subjects' number, so the "
      "chosen row is the unbiased result and the others show the trend.", "",
      common.markdown_table(table, cols), "",
      f"Brackets: 95% percentile bootstrap interval ({num_resamples} "
      "resamples of the test subjects with replacement, pixel metrics "
      "recomputed from each resample's pooled histograms). "
      "dice_at_threshold uses the threshold chosen on healthy validation "
      "pixels at each t, dice_at_val_threshold the Dice-optimal threshold of "
      "the validation patients at each t; dice_best is the optimistic "
      "bound chosen on the test labels. The numbers outside the brackets are the detector's "
      "metrics.json in `<noise>_t<t>/`. model_evals: UNet evaluations per "
      "reconstruction (anomaly.num_steps is the step density of a full run "
      "from T, so a level t takes about num_steps * t / T; None: every "
      "step from t).", "",
      f"![metrics]({files.path(outputs['plot']).name})",
  ]
  for key, value in outputs.items():
    if key.startswith("residuals_"):
      lines += ["", f"![{key}]({files.path(value).name})"]
  return common.write_text(path, "\n".join(lines))


# --- Command line -------------------------------------------------------------

def define_flags():
  """The command-line flags (defined only when run as a script, so that the
  ablation modules can be imported together)."""
  flags.DEFINE_string("workdir", None, "A trained DDPM's workdir.")
  config_flags.DEFINE_config_file(
      "config", None, "Optional: the run's config file (default: rebuilt "
      "from WORKDIR/config.json); --config.FIELD=VALUE overrides then work.",
      lock_config=True)
  flags.DEFINE_list("noise_levels", [str(t) for t in DEFAULT_LEVELS],
                    "Noise levels t (noising steps).")
  flags.DEFINE_list("noises", list(DEFAULT_NOISES),
                    "Noise types: gaussian, simplex.")
  flags.DEFINE_enum("sampler", None, list(SAMPLERS),
                    "Reconstruction sampler (default: the config's "
                    "anomaly.sampler).")
  flags.DEFINE_multi_string("override", [], "FIELD=VALUE config override, "
                            "e.g. anomaly.num_steps=50 (repeatable).")
  flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples.")
  flags.DEFINE_bool("write_maps", False,
                    "Also write per-subject NIfTI maps per t.")
  flags.DEFINE_bool("force", False, "Recompute every (noise, t).")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  workdir = f.workdir
  config = (f.config if f.config is not None
            else common.config_from_workdir(workdir))
  overrides = [("anomaly.write_maps", f.write_maps)]
  if f.sampler:
    overrides.append(("anomaly.sampler", SAMPLERS[f.sampler]))
  try:
    common.apply_overrides(config, overrides + list(f.override))
    common.validate(config)
    levels = [int(t) for t in f.noise_levels]
  except (KeyError, ValueError) as e:
    sys.exit(f"Config error: {e.args[0] if e.args else e}")
  result = run(config, workdir, levels, f.noises, num_resamples=f.bootstrap,
               force=f.force, command=common.command_line(sys.argv))
  print(files.read_text(result["outputs"]["markdown"]))


if __name__ == "__main__":
  define_flags()
  app.run(main)
