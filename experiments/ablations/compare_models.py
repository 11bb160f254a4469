r"""Every detector of genjax side by side: the seed report's questions 1, 3
and 4, and issue 19's comparison of the diffusion detectors with their cost.

  python -m experiments.ablations.compare_models --workdir=runs/compare19 \
      --seeds=0,1,2 --noeval --override=train.num_steps=600
  python -m experiments.ablations.compare_models --workdir=runs/compare \
      --entries=vae,gan,ddpm --seeds=0 --override=eval.num_samples=64

Entries (`ENTRIES`; --entries picks some): the intensity floor, the VAE,
f-AnoGAN, AnoDDPM (one t, DDIM back), the DDPM ensemble (t = 250/500/750,
DDIM back from each), one-step x0 estimates (the same three t, one call
each), pDDPM, cDDPM and AutoDDPM. Entries that differ only in how they
reconstruct share one training run (`TRAINED_AS`: the ensemble, one-step and
AutoDDPM use the DDPM's network).

Per seed s (config.seed = s; --seeds): each training run in
WORKDIR/seed<s>/<run>/ (resumed, or only restored once finished); each
entry's detector in WORKDIR/seed<s>/<run>/detect_<entry>[/<field>=<value>],
reused when made from the same checkpoint and config (unless --force).
Hyperparameters in `GRIDS` (t, AutoDDPM's mask threshold) are chosen per
seed by the validation patients' AUPRC (`auprc_val`; ties: the first, the
cheaper), and that run's test metrics are reported; the detector itself
chooses its threshold on the same validation patients.

Writes WORKDIR/comparison.{md,csv,json}: per entry the mean over seeds of
pixel AUPRC, AUROC, Dice at the validation threshold and slice AUROC, the
standard deviation over seeds, a 95 % subject-bootstrap interval of the
seed mean (the same test-subject resamples for every seed and entry), the
chosen hyperparameters, and the cost: network evaluations per slice,
seconds per slice and per volume on this machine, peak accelerator memory
where the device reports it (CPUs do not: n/a). Figures: residuals.png (the
same lesion slices, every entry's residual map, seed s0) and, with --eval
(the one evaluator on the first seed's trained models: SSIM, PSNR, samples;
expensive for diffusion models, whose samples take 1000 ancestral steps),
samples.png, reconstructions.png and the reconstruction/sample rows.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments.ablations import common
from genjax import anomaly
from genjax import checkpoints
from genjax import files
from genjax import methods

# name: (configs/<file>.py, overrides, what it is).
ENTRIES = {
    "floor": ("floor", (), "intensity threshold of the normalised image "
              "(no network)"),
    "vae": ("vae", (), "VAE reconstruction"),
    "gan": ("gan", (), "f-AnoGAN (DCGAN + izif encoder)"),
    "ddpm": ("ddpm", (), "AnoDDPM: noise to one t, DDIM back"),
    "ddpm_ensemble": ("ddpm", ("anomaly.noise_levels=(250, 500, 750)",),
                      "DDPM ensemble: t = 250, 500, 750, DDIM back from "
                      "each, residuals averaged"),
    "one_step": ("ddpm", ("anomaly.sampler=one_step",
                          "anomaly.noise_levels=(250, 500, 750)"),
                 "one-step x0 estimates at t = 250, 500, 750, averaged"),
    "pddpm": ("pddpm", (), "pDDPM: patches noised in a clean context, "
              "one step each, tiled"),
    "cddpm": ("cddpm", (), "cDDPM: conditioned on an encoding of the input, "
              "one-step t = 250, 500, 750"),
    "autoddpm": ("autoddpm", (), "AutoDDPM: mask, stitch, re-sample"),
}
# Entries that reconstruct with another entry's trained network.
TRAINED_AS = {"ddpm_ensemble": "ddpm", "one_step": "ddpm", "autoddpm": "ddpm"}
# Chosen on the validation patients: entry -> (field, candidates).
GRIDS = {
    "ddpm": ("anomaly.noise_level", (100, 200, 300)),
    "pddpm": ("anomaly.noise_level", (250, 500)),
    "autoddpm": ("autoddpm.threshold", (0.15, 0.25, 0.35, 0.5, 0.75, 1.0)),
}
SELECT_BY = "auprc_val"
# Kept for the seed-report comparison (question 1, 3, 4).
METHODS = ("vae", "gan", "ddpm")
# Metrics with a subject-bootstrap interval (the detector's histograms).
BOOT_METRICS = ("auprc", "auroc", "dice_at_val_threshold")

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
    ("detection", "network_calls_per_slice", "network evaluations per slice"),
    ("detection", "seconds_per_slice", "seconds per slice (this machine)"),
)


def build_configs(variant="cpu", entries=tuple(ENTRIES), overrides=(),
                  entry_overrides=None):
  """{entry: validated config}: configs/<file>.py:<variant>, the entry's own
  overrides, then `overrides` (FIELD=VALUE, every entry), then
  entry_overrides[entry]. An entry trained as another (`TRAINED_AS`) also
  gets that entry's overrides, so both describe the same network."""
  entry_overrides = entry_overrides or {}
  unknown = set(entries) - set(ENTRIES)
  if unknown:
    raise ValueError(f"Unknown entr(y/ies) {sorted(unknown)}: use "
                     f"{', '.join(ENTRIES)}.")

  def config(name):
    file, own, _ = ENTRIES[name]
    base = TRAINED_AS.get(name)
    return common.method_config(
        file, variant, list(own) + list(overrides)
        + (list(entry_overrides.get(base, ())) if base else [])
        + list(entry_overrides.get(name, ())))
  out = {e: config(e) for e in entries}
  for e in entries:  # Every grid value must make a valid config too.
    if e in GRIDS:
      field, values = GRIDS[e]
      for v in values:
        common.validate(_with(out[e], field, v))
  return out


def _with(config, field, value):
  config = common.deep_copy(config)
  common.set_field(config, field, value)
  return config


def train_config(entry, configs, variant):
  """The config the entry's network is trained with (its TRAINED_AS's)."""
  base = TRAINED_AS.get(entry)
  if base is None:
    return configs[entry]
  if base in configs:
    return configs[base]
  return build_configs(variant, (base,))[base]


def _seeded(config, seed):
  config = common.deep_copy(config)
  config.seed = seed
  return config


def _detect(entry, config, state, out_dir, *, force, command, log):
  """The entry's detector run(s): (chosen metrics, its dir, {value: val
  score} of the grid, or None)."""
  if entry not in GRIDS:
    metrics = common.run_or_reuse("detect", config, methods.get(config),
                                  state, out_dir, force=force,
                                  command=command, log=log)
    return metrics, out_dir, None
  field, values = GRIDS[entry]
  best, scores = None, {}
  for v in values:
    cfg = _with(config, field, v)
    d = files.join(out_dir, f"{field}={v}")
    metrics = common.run_or_reuse("detect", cfg, methods.get(cfg), state, d,
                                  force=force, command=command, log=log)
    scores[v] = metrics.get(SELECT_BY)
    if scores[v] is not None and (best is None or scores[v] > best[0]):
      best = (scores[v], metrics, d)
  if best is None:
    raise ValueError(f"{entry}: no validation patients, so nothing can be "
                     f"chosen on validation ({field}).")
  return best[1], best[2], scores


def peak_memory():
  """Peak bytes in use on the first device, or None where it is not reported
  (CPUs)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def run(workdir, configs, *, seeds=(0,), evaluate=True, force=False,
        command=None, num_resamples=1000):
  """Trains/reuses, detects (and evaluates) every entry for every seed.

  Args:
    workdir: WORKDIR (see the module docstring for the layout).
    configs: `build_configs`' {entry: config}.
    seeds: training seeds.
    evaluate: also run the evaluator on the first seed's trained models.
    force: rerun eval and detect even where outputs exist.
    command: the command line, for the report.
    num_resamples: subject-bootstrap resamples.

  Returns:
    {'table': {entry: {key: value}}, 'rows', 'computed': [(kind, dir)],
     'outputs'}.
  """
  variant = next(iter(configs.values())).variant
  computed, per_seed, evals = [], {e: [] for e in configs}, {}
  for seed in seeds:
    root = files.join(workdir, f"seed{seed}")
    states = {}
    for entry, config in configs.items():
      tcfg = _seeded(train_config(entry, configs, variant), seed)
      run_name = TRAINED_AS.get(entry, entry)
      run_dir = files.join(root, run_name)
      if run_name not in states:
        method = methods.get(tcfg)
        if method.trainable:
          before = common.checkpoint_step(tcfg, run_dir)
          _, state = common.train_or_resume(tcfg, run_dir)
          if before != common.checkpoint_step(tcfg, run_dir):
            computed.append(("train", run_dir))
        else:
          _, state = checkpoints.load_state(tcfg, run_dir)
        states[run_name] = state
        if evaluate and seed == seeds[0] and method.trainable:
          evals[run_name] = common.run_or_reuse(
              "eval", tcfg, method, state,
              files.join(run_dir, "eval"), force=force, command=command,
              log=computed)
      ecfg = _seeded(config, seed)
      metrics, det_dir, scores = _detect(
          entry, ecfg, states[run_name], files.join(run_dir,
                                                    f"detect_{entry}"),
          force=force, command=command, log=computed)
      per_seed[entry].append({"seed": seed, "metrics": metrics,
                              "dir": det_dir, "grid": scores})
  table = summarise(per_seed, num_resamples)
  memory = peak_memory()
  for entry in table:
    table[entry]["peak_memory_bytes"] = memory
  rows = [dict(entry=e, **table[e]) for e in table]
  outputs = {
      "csv": common.write_csv(files.join(workdir, "comparison.csv"), rows,
                              ["entry", *COLUMNS]),
      "json": common.write_json(files.join(workdir, "comparison.json"), {
          "command": command, "variant": variant, "seeds": list(seeds),
          "selected_by": SELECT_BY, "grids": {e: list(GRIDS[e][1]) for e
                                              in configs if e in GRIDS},
          "bootstrap": {"resamples": num_resamples, "level": 0.95,
                        "unit": "test subject"},
          "entries": {e: {"table": table[e], "runs": [
              {"seed": r["seed"], "dir": r["dir"], "grid": r["grid"],
               "metrics": {k: r["metrics"].get(k) for k in
                           ("auprc", "auroc", "auprc_val", "step",
                            "dice_at_val_threshold", "slice_auroc")}}
              for r in per_seed[e]]} for e in configs}}),
  }
  outputs.update(figures(per_seed, evals, configs, workdir))
  outputs["markdown"] = write_markdown(
      files.join(workdir, "comparison.md"), table, per_seed, evals,
      configs, variant, seeds, command, outputs)
  logging.info("Wrote %s", outputs["markdown"])
  return {"table": table, "rows": rows, "computed": computed,
          "outputs": outputs, "evals": evals}


COLUMNS = ("description", "chosen", "step",
           "auprc", "auprc_sd", "auprc_lo", "auprc_hi",
           "auroc", "auroc_sd", "auroc_lo", "auroc_hi",
           "dice_at_val_threshold", "dice_at_val_threshold_sd",
           "dice_at_val_threshold_lo", "dice_at_val_threshold_hi",
           "slice_auroc", "slice_auroc_sd",
           "network_calls_per_slice", "seconds_per_slice",
           "seconds_per_volume", "peak_memory_bytes", "n_seeds")


def _mean_sd(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return float(np.mean(values)), (float(np.std(values, ddof=1))
                                  if len(values) > 1 else None)


def summarise(per_seed, num_resamples=1000):
  """{entry: row}: means over seeds, their sd, and bootstrap intervals of the
  seed mean over the same test-subject resamples."""
  subjects, resamples, table = None, None, {}
  for entry, runs in per_seed.items():
    draws = {m: [] for m in BOOT_METRICS}
    for r in runs:
      data = anomaly.load_subject_histograms(
          files.join(r["dir"], r["metrics"]["subject_histograms"]))
      if subjects is None:
        subjects = list(data["subjects"])
        resamples = common.subject_resamples(len(subjects), num_resamples)
      elif list(data["subjects"]) != subjects:
        raise ValueError(f"{r['dir']} was tested on other subjects than the "
                         "first entry: were the runs made on different data?")
      for m in BOOT_METRICS:
        draws[m].append(common.metric_draws(data, m, resamples))
    row = {"description": ENTRIES[entry][2], "n_seeds": len(runs),
           "step": ", ".join(str(r["metrics"]["step"]) for r in runs)}
    field = GRIDS.get(entry, (None,))[0]
    row["chosen"] = (", ".join(
        f"s{r['seed']}: {field.split('.')[-1]}="
        f"{r['dir'].rsplit('=', 1)[-1]}" for r in runs) if field else "")
    for m in BOOT_METRICS + ("slice_auroc",):
      row[m], row[f"{m}_sd"] = _mean_sd(r["metrics"].get(m) for r in runs)
    for m in BOOT_METRICS:
      means = [np.mean([d[i] for d in draws[m]])
               for i in range(len(resamples))
               if all(d[i] is not None for d in draws[m])]
      interval = common.percentile_interval(means)
      row[f"{m}_lo"], row[f"{m}_hi"] = interval["lo"], interval["hi"]
    m0 = runs[0]["metrics"]
    row["network_calls_per_slice"] = m0.get("network_calls_per_slice")
    row["seconds_per_slice"] = _mean_sd(
        r["metrics"].get("seconds_per_slice") for r in runs)[0]
    per_volume = m0["n_test_slices"] / max(m0["n_test_subjects"], 1)
    row["seconds_per_volume"] = (row["seconds_per_slice"] * per_volume
                                 if row["seconds_per_slice"] is not None
                                 else None)
    table[entry] = row
  return table


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
  with files.load_npz(path) as f:
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
  common.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def figures(per_seed, evals, configs, workdir):
  """residuals.png (rows = entries, first seed) and, with evals,
  samples.png and reconstructions.png (rows = evaluated training runs)."""
  out = {}
  names = list(per_seed)
  examples = {}
  for e in names:
    r = per_seed[e][0]
    if r["metrics"].get("examples"):
      examples[e] = _arrays(files.join(r["dir"], r["metrics"]["examples"]))
  if examples and len(examples) == len(names):
    first = examples[names[0]]
    for e in names[1:]:
      if not np.array_equal(examples[e]["image"], first["image"]):
        raise ValueError(f"{e}'s detector shows other lesion slices than "
                         f"{names[0]}'s: were they run on different data?")
    # Each entry's maps on its own scale, black 0 to white at its 99th
    # percentile over these slices: the scores' units differ (the floor's is
    # the intensity itself), and a shared scale hides the quieter maps.
    def scale(r):
      top = float(np.percentile(r, 99)) or 1.0
      return np.clip(2.0 * r / top - 1.0, -1.0, 1.0)
    out["residuals"] = _image_rows(
        [first["image"], 2.0 * first["mask"] - 1.0]
        + [scale(examples[e]["residual"]) for e in names],
        ["input", "lesion"] + names, files.join(workdir, "residuals.png"),
        "Lesion slices: each entry's map, black 0 to white at its own "
        "99th percentile")
  if evals:
    seed = per_seed[names[0]][0]["seed"]
    arrays = {m: _arrays(files.join(workdir, f"seed{seed}", m, "eval",
                                    ev["figure_arrays"]))
              for m, ev in evals.items()}
    runs = list(arrays)
    first = arrays[runs[0]]
    out["samples"] = _image_rows(
        [arrays[m]["samples"] for m in runs] + [first["real"]],
        runs + ["real"], files.join(workdir, "samples.png"),
        "Samples (rows: methods; last row: real test slices)")
    if len(first["inputs"]):
      for m in runs[1:]:
        if not np.array_equal(arrays[m]["inputs"], first["inputs"]):
          raise ValueError(f"{m}'s evaluation shows other healthy slices "
                           f"than {runs[0]}'s: were they run on different "
                           "data?")
      out["reconstructions"] = _image_rows(
          [first["inputs"]] + [arrays[m]["reconstructions"] for m in runs],
          ["input"] + runs, files.join(workdir, "reconstructions.png"),
          "Healthy test slices (top) and each method's reconstruction")
  return out


def _cell(row, m, digits=3):
  value = row.get(m)
  if value is None:
    return "n/a"
  text = f"{value:.{digits}f}"
  if row.get(f"{m}_lo") is not None:
    text += f" [{row[f'{m}_lo']:.{digits}f}, {row[f'{m}_hi']:.{digits}f}]"
  if row.get(f"{m}_sd") is not None:
    text += f" ±{row[f'{m}_sd']:.{digits}f}"
  return text


def write_markdown(path, table, per_seed, evals, configs, variant, seeds,
                   command, outputs):
  lines = ["# Detectors compared", "", "Produced by:", "", "```",
           command or "(called from Python)", "```", "",
           f"Configs `configs/<file>.py:{variant}`, seeds "
           f"{', '.join(map(str, seeds))}. Each cell: the mean over seeds, "
           "[a 95 % subject-bootstrap interval of that mean] and ± the "
           "standard deviation over seeds. `chosen`: the hyperparameter with "
           f"the best validation-patient AUPRC ({SELECT_BY}) per seed.", "",
           "| entry | chosen | pixel AUPRC | pixel AUROC | Dice at val "
           "threshold | slice AUROC | network calls / slice | s / slice | "
           "s / volume | peak memory |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for e, row in table.items():
    mem = row.get("peak_memory_bytes")
    lines.append(
        f"| {e} | {row['chosen'] or '-'} | {_cell(row, 'auprc')} | "
        f"{_cell(row, 'auroc')} | {_cell(row, 'dice_at_val_threshold')} | "
        f"{_cell(row, 'slice_auroc')} | "
        f"{row['network_calls_per_slice']} | "
        f"{common.fmt(row['seconds_per_slice'], 4)} | "
        f"{common.fmt(row['seconds_per_volume'], 2)} | "
        f"{'n/a' if mem is None else f'{mem / 2**20:.0f} MiB'} |")
  lines += ["", "Entries: " + "; ".join(
      f"**{e}**: {ENTRIES[e][2]}" for e in table) + ".", ""]
  first = per_seed[next(iter(per_seed))][0]["metrics"]
  lines += ["Detection protocol: " + common.protocol_sentence(first), ""]
  if evals:
    seed = seeds[0]
    split = next(iter(configs.values())).data.eval_split
    cols = {m: table_column(ev, per_seed[m][0]["metrics"]
                            if m in per_seed else {}, split)
            for m, ev in evals.items()}
    names = list(cols)
    lines += [f"## Reconstructions and samples (seed {seed})", ""]
    group = None
    for g, key, label in EVAL_ROWS + DETECT_ROWS:
      if g != group:
        group = g
        lines += ["", f"### {group}", "", "| metric | " + " | ".join(names)
                  + " |", "|---|" + "---|" * len(names)]
      lines.append(f"| {label} | " + " | ".join(
          anomaly.fmt(cols[m][key]) for m in names) + " |")
    statuses = {ev.get("fid_status") for ev in evals.values()}
    lines += ["", "FID: " + "; ".join(sorted(s for s in statuses if s)), "",
              "fd_random_conv is a Fréchet distance on the features of a "
              "fixed random conv net: download-free, comparable between these "
              "methods (same image size, same real slices), but NOT FID."]
  for key in ("residuals", "samples", "reconstructions"):
    if key in outputs:
      lines += ["", f"![{key}]({files.path(outputs[key]).name})"]
  return common.write_text(path, "\n".join(lines))


# --- Command line -------------------------------------------------------------

def define_flags():
  """The command-line flags (defined only when run as a script)."""
  flags.DEFINE_string("workdir", None, "Where the runs go.")
  flags.DEFINE_string("variant", "cpu", "Config variant: cpu, smoke or "
                      "empty (research scale).")
  flags.DEFINE_list("entries", list(ENTRIES), "Entries compared.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
  flags.DEFINE_bool("eval", False, "Also run the evaluator (SSIM, PSNR, "
                    "samples) on the first seed's trained models.")
  flags.DEFINE_integer("num_resamples", 1000, "Subject-bootstrap resamples.")
  flags.DEFINE_multi_string("override", [],
                            "FIELD=VALUE for every entry (repeatable).")
  for e in ENTRIES:
    flags.DEFINE_multi_string(f"override_{e}", [],
                              f"FIELD=VALUE for {e} only (repeatable).")
  flags.DEFINE_bool("force", False, "Rerun eval and detect.")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    seeds = [int(s) for s in f.seeds]
    configs = build_configs(f.variant, f.entries, f.override,
                            {e: f[f"override_{e}"].value for e in ENTRIES})
  except (KeyError, ValueError) as e:
    sys.exit(f"Config error: {e.args[0] if e.args else e}")
  result = run(f.workdir, configs, seeds=seeds, evaluate=f.eval,
               force=f.force, command=common.command_line(sys.argv),
               num_resamples=f.num_resamples)
  print(files.read_text(result["outputs"]["markdown"]))


if __name__ == "__main__":
  define_flags()
  app.run(main)
