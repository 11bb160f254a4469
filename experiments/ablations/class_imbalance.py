r"""The seed report's questions 1 and 2: class imbalance and its remedies (VAE).

  python -m experiments.ablations.class_imbalance --workdir=runs/imbalance
  python -m experiments.ablations.class_imbalance --workdir=runs/imbalance \
      --remedies=baseline,oversampling --steps=500 --variant=cpu

Trains the VAE (configs/vae.py:<variant>) on `train_mixed` (healthy and
patients; lesion slices a minority) once per remedy, alone and all together:

  baseline       nothing (the natural lesion ratio)
  oversampling   data.lesion_fraction=0.5
  smote          smote.enabled=True (SMOTE-like interpolation of lesion slices)
  augmentation   augment.elastic, augment.gamma, augment.crop
  lesion_weight  vae.lesion_weight=10 (reconstruction weight inside lesions)
  perceptual     vae.perceptual_weight=1
  all            all of the above

each in WORKDIR/<remedy>/ through `genjax.train.train_and_evaluate`
(resuming; a finished run is only restored), then the one evaluator and
detector (reused when made from the same checkpoint and config), and two
measures of its own, cached in WORKDIR/<remedy>/imbalance/:

healthy bias (healthy_bias.json): on the lesion slices of the test split,
  the mean |x - reconstruct(x)| over lesion pixels and over the healthy
  brain pixels of the same slices, and their ratio. A VAE that "heals"
  lesions (reconstructs them as healthy tissue) has a high lesion error
  and ratio; one that learned lesions reproduces them (ratio near 1).

lesion-like samples (lesion_like.json): the fraction of prior samples that
  hold a lesion-like region, defined by `lesion_like_components`:
    1. brain region = pixels brighter than -0.9 (background is -1), holes
       filled, eroded by 2 pixels (the dark partial-volume rim is left out);
    2. dark = brain-region pixels below the `percentile`-th percentile of
       the brain-region intensities of the HEALTHY real test slices;
    3. the sample is lesion-like if an 8-connected component of dark pixels
       has at least `min_pixels` pixels (default image_size^2 / 512: 8 at
       64 px, 32 at 128 px).
  T1 lesions are hypointense towards CSF, so ventricles can pass this test
  too: the same measure on the real healthy and real lesion test slices is
  reported beside it (WORKDIR/reference.json), and only a rate above the healthy
  slices' means lesion-like content.

Writes WORKDIR/imbalance.{md,csv,json}, imbalance.png (bars per remedy) and
reconstructions.png (the same lesion slices; rows = remedies).
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import scipy.ndimage

from experiments.ablations import common
from genjax import anomaly
from genjax import files
from genjax import parallel

BASE = ("data.train_split=train_mixed",)
REMEDIES = {
    "baseline": (),
    "oversampling": ("data.lesion_fraction=0.5",),
    "smote": ("smote.enabled=True",),
    "augmentation": ("augment.elastic=True", "augment.gamma=True",
                     "augment.crop=True"),
    "lesion_weight": ("vae.lesion_weight=10.0",),
    "perceptual": ("vae.perceptual_weight=1.0",),
}
REMEDIES["all"] = tuple(o for r in REMEDIES.values() for o in r)

BACKGROUND = -0.9  # Images are in [-1, 1]; background is -1.
EROSION = 2

COLUMNS = ("remedy", "step", "lesion_error", "tissue_error",
           "lesion_tissue_ratio", "lesion_tissue_ratio_lo",
           "lesion_tissue_ratio_hi", "ssim", "ssim_brain", "psnr", "auprc",
           "auprc_lo", "auprc_hi", "auroc", "dice_at_threshold",
           "dice_at_val_threshold", "dice_best", "lesion_like_fraction",
           "lesion_like_lo", "lesion_like_hi",
           "n_samples", "d_ratio", "d_ratio_lo", "d_ratio_hi", "d_auprc",
           "d_auprc_lo", "d_auprc_hi")
# The bias measure's format; bump to recompute caches of an older one.
_BIAS_VERSION = 2


# --- The lesion-like measure --------------------------------------------------


def brain_region(image, background=BACKGROUND, erosion=EROSION):
  """Boolean [H, W]: pixels above `background`, holes filled, eroded."""
  region = scipy.ndimage.binary_fill_holes(np.asarray(image) > background)
  if erosion:
    region = scipy.ndimage.binary_erosion(region, iterations=erosion)
  return region


def healthy_intensity_threshold(images, percentile=1.0):
  """The `percentile`-th percentile of brain-region intensities.

  Args:
    images: [N, H, W, 1] healthy real slices.
    percentile: in (0, 100).

  Returns:
    float.
  """
  values = [np.asarray(x)[..., 0][brain_region(x[..., 0])] for x in images]
  values = np.concatenate(values) if values else np.zeros(0)
  if not values.size:
    raise ValueError("No brain pixels in the healthy reference slices.")
  return float(np.percentile(values, percentile))


def lesion_like_components(image, threshold, min_pixels):
  """Sizes of the dark components that make `image` lesion-like.

  Args:
    image: [H, W] or [H, W, 1] in [-1, 1].
    threshold: intensities below it are dark.
    min_pixels: the smallest component counted.

  Returns:
    Sorted (largest first) list of component sizes >= min_pixels; the image
    is lesion-like iff it is not empty.
  """
  image = np.asarray(image)
  image = image[..., 0] if image.ndim == 3 else image
  dark = brain_region(image) & (image < threshold)
  labels, n = scipy.ndimage.label(dark, structure=np.ones((3, 3)))
  sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
  return sorted((int(s) for s in sizes if s >= min_pixels), reverse=True)


def lesion_like_fraction(images, threshold, min_pixels):
  """Fraction of images [N, H, W, 1] with a lesion-like component."""
  if not len(images):
    return None
  return float(np.mean([bool(lesion_like_components(x, threshold,
                                                    min_pixels))
                        for x in images]))


def default_min_pixels(image_size):
  return max(4, int(round(image_size * image_size / 512)))


def real_reference(config, percentile, min_pixels):
  """Threshold from healthy test slices, and the measure on real slices."""
  healthy, lesion = [], []
  for batch in anomaly.eval_batches(config, config.data.eval_split):
    valid = np.asarray(batch["valid"], bool)
    images = np.asarray(batch["image"], np.float32)
    healthy += list(images[valid & (batch["label"] == 0)])
    lesion += list(images[valid & (batch["label"] == 1)])
  threshold = healthy_intensity_threshold(healthy, percentile)
  return {"threshold": threshold, "percentile": percentile,
          "min_pixels": min_pixels,
          "healthy_fraction": lesion_like_fraction(healthy, threshold,
                                                   min_pixels),
          "lesion_fraction": lesion_like_fraction(lesion, threshold,
                                                  min_pixels),
          "n_healthy": len(healthy), "n_lesion": len(lesion)}


# --- Measures of a trained model ----------------------------------------------


def healthy_bias(config, method, state):
  """Reconstruction error inside lesions vs healthy brain of lesion slices."""
  mesh = parallel.make_mesh()
  recon_fn = jax.jit(method.reconstruct)
  rng = jax.random.fold_in(jax.random.key(config.seed), 4_000_037)
  per_subject = {}  # subject -> [lesion sum, tissue sum, lesion n, tissue n]
  n_slices = 0
  for i, batch in enumerate(anomaly.eval_batches(config,
                                                 config.data.eval_split)):
    use = np.asarray(batch["valid"], bool) & (batch["label"] == 1)
    if not use.any():
      continue
    images, _ = anomaly.batch_to_device(batch, mesh, config.eval.batch_size)
    recon = np.asarray(jax.device_get(
        recon_fn(state, images, jax.random.fold_in(rng, i))))
    error = np.abs(np.asarray(batch["image"]) - recon)[use][..., 0]
    brain = batch["brain"][use][..., 0] > 0.5
    lesion = (batch["mask"][use][..., 0] > 0.5) & brain
    tissue = brain & ~lesion
    for j, subject in enumerate(np.asarray(batch["subject"])[use]):
      row = per_subject.setdefault(str(subject), [0.0, 0.0, 0, 0])
      row[0] += float(error[j][lesion[j]].sum())
      row[1] += float(error[j][tissue[j]].sum())
      row[2] += int(lesion[j].sum())
      row[3] += int(tissue[j].sum())
    n_slices += int(use.sum())
  subjects = sorted(per_subject)
  table = np.array([per_subject[k] for k in subjects],
                   np.float64).reshape(-1, 4)
  return {**error_ratio(table), "n_lesion_slices": n_slices,
          "n_lesion_pixels": int(table[:, 2].sum()),
          "n_tissue_pixels": int(table[:, 3].sum()),
          "subjects": subjects, "per_subject": table.tolist(),
          "bootstrap": bootstrap_error_ratio(table)}


def error_ratio(table):
  """Pooled errors of [S, 4] per-subject (lesion sum, tissue sum, lesion n,
  tissue n): lesion_error, tissue_error and their ratio (None if empty)."""
  sums = np.asarray(table, np.float64).reshape(-1, 4).sum(0)
  lesion = float(sums[0] / sums[2]) if sums[2] else None
  tissue = float(sums[1] / sums[3]) if sums[3] else None
  return {"lesion_error": lesion, "tissue_error": tissue,
          "lesion_tissue_ratio": (lesion / tissue if lesion is not None
                                  and tissue else None)}


def bootstrap_error_ratio(table, num_resamples=1000, seed=0, level=0.95,
                          resamples=None):
  """Percentile bootstrap of `error_ratio` over subjects.

  Subjects are drawn with replacement (their pixels stay together: they are
  not independent), as for the detector's metrics
  (`common.bootstrap_subjects`).

  Returns:
    {metric: {"lo", "hi"}} (None without subjects).
  """
  table = np.asarray(table, np.float64).reshape(-1, 4)
  keys = ("lesion_error", "tissue_error", "lesion_tissue_ratio")
  if not len(table):
    return {k: {"lo": None, "hi": None} for k in keys}
  if resamples is None:
    resamples = common.subject_resamples(len(table), num_resamples, seed)
  draws = [error_ratio(table[rows]) for rows in np.asarray(resamples, np.int64)]
  out = {}
  for k in keys:
    interval = common.percentile_interval(
        [d[k] for d in draws if d[k] is not None], level)
    out[k] = {"lo": interval["lo"], "hi": interval["hi"]}
  return out


def ratio_draws(table, resamples):
  """lesion_tissue_ratio of `error_ratio` on each resample of subjects."""
  table = np.asarray(table, np.float64).reshape(-1, 4)
  return [error_ratio(table[rows])["lesion_tissue_ratio"]
          for rows in resamples]


def versus_baseline(runs, baseline="baseline", num_resamples=1000, seed=0):
  """Each remedy minus the baseline, paired over the same test subjects.

  The remedies are measured on the same subjects, so their intervals
  overlap even where every resample moves the same way; a paired bootstrap
  (one resample plan for all runs) gives the interval of the difference.

  Args:
    runs: {remedy: {"bias": healthy_bias(...), "hist": the detector's
      subject histograms}}, `baseline` among them.

  Returns:
    {remedy: {"lesion_tissue_ratio": paired difference, "auprc": ...}};
    {} without a baseline run.
  """
  if baseline not in runs:
    return {}
  base = runs[baseline]
  subjects = base["bias"]["subjects"]
  hist_subjects = base["hist"]["subjects"]
  plan = common.subject_resamples(len(subjects), num_resamples, seed)
  hist_plan = common.subject_resamples(len(hist_subjects), num_resamples, seed)
  base_ratio = ratio_draws(base["bias"]["per_subject"], plan)
  base_auprc = common.metric_draws(base["hist"], "auprc", hist_plan)
  base_point = common.histogram_metrics(
      anomaly.pooled_histogram(base["hist"]), None)["auprc"]
  out = {}
  for name, run_ in runs.items():
    if (run_["bias"]["subjects"] != subjects
        or run_["hist"]["subjects"] != hist_subjects):
      raise ValueError(f"{name} and {baseline} were measured on different "
                       "test subjects; they cannot be paired.")
    point = common.histogram_metrics(anomaly.pooled_histogram(run_["hist"]),
                                     None)["auprc"]
    out[name] = {
        "lesion_tissue_ratio": common.paired_difference(
            ratio_draws(run_["bias"]["per_subject"], plan), base_ratio,
            run_["bias"]["lesion_tissue_ratio"],
            base["bias"]["lesion_tissue_ratio"]),
        "auprc": common.paired_difference(
            common.metric_draws(run_["hist"], "auprc", hist_plan),
            base_auprc, point, base_point)}
  return out


def wilson_interval(fraction, n, z=1.959964):
  """The Wilson score interval of a binomial proportion (95% by default)."""
  if fraction is None or not n:
    return None, None
  centre = (fraction + z * z / (2 * n)) / (1 + z * z / n)
  half = (z / (1 + z * z / n)) * np.sqrt(
      fraction * (1 - fraction) / n + z * z / (4 * n * n))
  return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def draw_samples(config, method, state, n):
  """n prior samples [n, H, W, 1] (numpy), in eval.batch_size batches."""
  sample_fn = jax.jit(method.sample, static_argnums=2)
  rng = jax.random.fold_in(jax.random.key(config.seed), 5_000_011)
  size = config.eval.batch_size
  out = []
  for i in range(-(-n // size)):
    out.append(np.asarray(jax.device_get(
        sample_fn(state, jax.random.fold_in(rng, i), size)), np.float32))
  return np.concatenate(out)[:n]


def cached(path, key, compute, log=None, force=False):
  """compute() saved to `path` with `key`; reused while the key matches
  (unless `force`). `log` gets ('measure', path) when computed."""
  key = json.loads(json.dumps(anomaly._finite(key)))  # pylint: disable=protected-access
  if files.exists(path) and not force:
    saved = files.read_json(path)
    if saved.get("key") == key:
      return saved["value"]
  value = compute()
  common.write_json(path, {"key": key, "value": value})
  if log is not None:
    log.append(("measure", path))
  return value


# --- The experiment -----------------------------------------------------------


def build_configs(variant="cpu", remedies=tuple(REMEDIES), steps=None,
                  overrides=()):
  """{remedy: validated VAE config}."""
  unknown = [r for r in remedies if r not in REMEDIES]
  if unknown:
    raise ValueError(f"Unknown remedies {unknown}: use "
                     f"{', '.join(REMEDIES)}.")
  extra = [f"train.num_steps={int(steps)}"] if steps else []
  return {r: common.method_config("vae", variant, list(BASE)
                                  + list(REMEDIES[r]) + extra
                                  + list(overrides))
          for r in remedies}


def run(workdir, configs, *, num_samples=None, percentile=1.0,
        min_pixels=None, force=False, command=None):
  """Trains/reuses each remedy's VAE, measures, tabulates.

  Returns:
    {'rows': [...], 'reference': {...}, 'computed': [(kind, path)], ...}.
  """
  first = next(iter(configs.values()))
  min_pixels = min_pixels or default_min_pixels(first.data.image_size)
  computed, rows, results, paired = [], [], {}, {}
  data_key = {k: v for k, v in common.relevant(first).items()
              if k.startswith("data.") and k != "data.train_split"}
  reference = cached(
      files.join(workdir, "reference.json"),
      {"data": data_key, "percentile": percentile, "min_pixels": min_pixels},
      lambda: real_reference(first, percentile, min_pixels), computed, force)
  for name, config in configs.items():
    run_dir = files.join(workdir, name)
    method, state, ev, det = common.train_eval_detect(
        config, run_dir, force=force, command=command, log=computed)
    step = int(jax.device_get(state.step))
    base_key = {"step": step, "config": common.relevant(config)}
    bias = cached(files.join(run_dir, "imbalance", "healthy_bias.json"),
                  {**base_key, "version": _BIAS_VERSION},
                  lambda: healthy_bias(config, method, state),
                  computed, force)
    n = num_samples or config.eval.num_samples

    def like():
      samples = draw_samples(config, method, state, n)
      return {"fraction": lesion_like_fraction(
          samples, reference["threshold"], min_pixels), "n_samples": n}
    lesion_like = cached(
        files.join(run_dir, "imbalance", "lesion_like.json"),
        {**base_key, "n": n, "threshold": reference["threshold"],
         "min_pixels": min_pixels}, like, computed, force)
    recon = ev["reconstruction"][config.data.eval_split]
    hist = anomaly.load_subject_histograms(
        files.join(run_dir, "detect", det["subject_histograms"]))
    auprc = common.bootstrap_subjects(hist)["auprc"]
    paired[name] = {"bias": bias, "hist": hist}
    like_lo, like_hi = wilson_interval(lesion_like["fraction"],
                                       lesion_like["n_samples"])
    ratio_ci = bias["bootstrap"]["lesion_tissue_ratio"]
    rows.append({"remedy": name, "step": step, **{
        k: bias[k] for k in ("lesion_error", "tissue_error",
                             "lesion_tissue_ratio")},
                 "lesion_tissue_ratio_lo": ratio_ci["lo"],
                 "lesion_tissue_ratio_hi": ratio_ci["hi"],
                 **{k: recon.get(k) for k in ("ssim", "ssim_brain", "psnr")},
                 **{k: det.get(k) for k in ("auprc", "auroc",
                                            "dice_at_threshold",
                                            "dice_at_val_threshold",
                                            "dice_best")},
                 "auprc_lo": auprc["lo"], "auprc_hi": auprc["hi"],
                 "lesion_like_fraction": lesion_like["fraction"],
                 "lesion_like_lo": like_lo, "lesion_like_hi": like_hi,
                 "n_samples": lesion_like["n_samples"]})
    results[name] = {"dir": run_dir, "detect": det}
  differences = versus_baseline(paired)
  for row in rows:
    for key, short in (("lesion_tissue_ratio", "d_ratio"),
                       ("auprc", "d_auprc")):
      d = differences.get(row["remedy"], {}).get(key, {})
      row.update({short: d.get("value"), short + "_lo": d.get("lo"),
                  short + "_hi": d.get("hi")})

  outputs = {
      "csv": common.write_csv(files.join(workdir, "imbalance.csv"), rows,
                              list(COLUMNS)),
      "json": common.write_json(files.join(workdir, "imbalance.json"), {
          "command": command, "rows": rows, "reference": reference,
          "remedies": {r: list(BASE) + list(REMEDIES[r]) for r in configs}}),
      "plot": plot_bars(rows, reference,
                        files.join(workdir, "imbalance.png")),
  }
  figure = reconstruction_figure(results,
                                 files.join(workdir, "reconstructions.png"))
  if figure:
    outputs["reconstructions"] = figure
  outputs["markdown"] = write_markdown(
      files.join(workdir, "imbalance.md"), rows, reference, configs,
      command, outputs, common.protocol_sentence(
          next(iter(results.values()))["detect"]) if results else "")
  return {"rows": rows, "reference": reference, "computed": computed,
          "outputs": outputs}


def plot_bars(rows, reference, path):
  panels = (("lesion_tissue_ratio", "lesion / healthy-tissue error\n"
             "(high = lesions 'healed')"),
            ("auprc", "pixel AUPRC"),
            ("dice_at_threshold", "Dice at the healthy threshold"),
            ("ssim", "SSIM, healthy test slices"),
            ("lesion_like_fraction", "samples with a lesion-like region"))
  names = [r["remedy"] for r in rows]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.6))
  for ax, (key, title) in zip(axes, panels):
    values = [np.nan if r[key] is None else r[key] for r in rows]
    bounds = {"lesion_tissue_ratio": "lesion_tissue_ratio",
              "auprc": "auprc", "lesion_like_fraction": "lesion_like"}
    yerr = None
    if key in bounds:  # 95% intervals (subject bootstrap / Wilson).
      lo = [r.get(bounds[key] + "_lo") for r in rows]
      hi = [r.get(bounds[key] + "_hi") for r in rows]
      yerr = np.array([[v - l if None not in (v, l) else 0 for v, l in
                        zip(values, lo)],
                       [h - v if None not in (v, h) else 0 for v, h in
                        zip(values, hi)]], np.float64)
    ax.bar(range(len(rows)), values, color="tab:blue", yerr=yerr,
           capsize=3 if yerr is not None else 0)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
    if key == "lesion_like_fraction":
      for value, label, style in (
          (reference["healthy_fraction"], "real healthy", "--"),
          (reference["lesion_fraction"], "real lesion", ":")):
        if value is not None:
          ax.axhline(value, color="k", linestyle=style, label=label)
      ax.legend(fontsize=7)
  fig.tight_layout()
  common.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def reconstruction_figure(results, path):
  """The detector's lesion slices: input, mask, each remedy's
  reconstruction (rows)."""
  examples = {}
  for name, r in results.items():
    if not r["detect"].get("examples"):
      return None
    with files.load_npz(files.join(r["dir"], "detect",
                                   r["detect"]["examples"])) as f:
      examples[name] = {k: f[k] for k in f.files}
  names = list(examples)
  first = examples[names[0]]
  rows = ([("input", first["image"]), ("lesion", 2 * first["mask"] - 1)]
          + [(n, examples[n]["reconstruction"]) for n in names])
  cols = len(first["image"])
  fig, axes = plt.subplots(len(rows), cols,
                           figsize=(1.3 * cols, 1.35 * len(rows) + 0.4),
                           squeeze=False)
  for i, (label, images) in enumerate(rows):
    for j in range(cols):
      axes[i, j].imshow(images[j, ..., 0], cmap="gray", vmin=-1, vmax=1)
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
    axes[i, 0].set_ylabel(label, fontsize=8)
  fig.suptitle("Lesion test slices and their reconstructions per remedy",
               fontsize=10)
  fig.tight_layout()
  common.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def display_table(rows):
  """The markdown table of the main columns, intervals in brackets."""
  w = common.with_interval
  lines = ["| remedy | lesion error | tissue error | lesion/tissue "
           "[95%] | Δ vs baseline [95%, paired] | SSIM | PSNR | AUPRC [95%] "
           "| Δ vs baseline [95%, paired] | Dice@thr | Dice@val thr | "
           "lesion-like samples [95%] |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ratio = w(r["lesion_tissue_ratio"], r["lesion_tissue_ratio_lo"],
              r["lesion_tissue_ratio_hi"], 2)
    auprc = w(r["auprc"], r["auprc_lo"], r["auprc_hi"], 3)
    like = w(r["lesion_like_fraction"], r["lesion_like_lo"],
             r["lesion_like_hi"], 2)
    d_ratio = w(r.get("d_ratio"), r.get("d_ratio_lo"), r.get("d_ratio_hi"),
                2)
    d_auprc = w(r.get("d_auprc"), r.get("d_auprc_lo"), r.get("d_auprc_hi"),
                3)
    cells = [r["remedy"], common.fmt(r["lesion_error"], 3),
             common.fmt(r["tissue_error"], 3), ratio, d_ratio,
             common.fmt(r["ssim"], 3), common.fmt(r["psnr"], 1), auprc,
             d_auprc,
             common.fmt(r["dice_at_threshold"], 3),
             common.fmt(r.get("dice_at_val_threshold"), 3),
             f"{like} (n={r['n_samples']})"]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def write_markdown(path, rows, reference, configs, command, outputs,
                   protocol=""):
  ref = reference
  lines = [
      "# Class imbalance: remedies for the VAE's healthy bias", "",
      "Produced by:", "", "```", command or "(called from Python)", "```", "",
      "Every run trains `configs/vae.py:"
      f"{next(iter(configs.values())).variant}` on `train_mixed` "
      "with the remedy's overrides:", "",
      "| remedy | overrides |", "|---|---|",
      *[f"| {r} | {' '.join(REMEDIES[r]) or '(none)'} |" for r in configs],
      "", *display_table(rows), "",
      "Intervals: 95%; lesion/tissue ratio and AUPRC by a percentile "
      "bootstrap over test subjects (1000 resamples), lesion-like "
      "fraction by Wilson's interval over the samples. Δ: the remedy minus "
      "the baseline, with the interval of a paired bootstrap (the same "
      "subject resamples for both runs), since all runs are measured on "
      "the same subjects. All columns, unrounded: imbalance.csv.", "",
      "- lesion_error / tissue_error: mean |x − reconstruct(x)| over lesion "
      "pixels / over the healthy brain pixels of the same test lesion "
      "slices; lesion_tissue_ratio = their ratio (high: lesions are "
      "reconstructed as healthy tissue).",
      "- ssim, ssim_brain, psnr: healthy test slices (eval/metrics.json); "
      "auprc, auroc, dice_*: the detector (detect/metrics.json); Dice@thr "
      "at the healthy-FPR threshold, Dice@val thr at the threshold "
      "maximising Dice on the validation patients. " + protocol,
      f"- lesion_like_fraction: fraction of prior samples with an "
      f"8-connected region of at least {ref['min_pixels']} pixels inside the "
      f"(eroded) brain darker than {ref['threshold']:.4f}, the "
      f"{ref['percentile']}th percentile of healthy test brain intensities. "
      f"The same measure flags {common.fmt(ref['healthy_fraction'], 3)} of "
      f"the {ref['n_healthy']} real healthy test slices and "
      f"{common.fmt(ref['lesion_fraction'], 3)} of the {ref['n_lesion']} "
      "real lesion slices (ventricles are dark too); only a rate above the "
      "healthy slices' indicates lesion-like content.", "",
      f"![bars]({files.path(outputs['plot']).name})",
  ]
  if "reconstructions" in outputs:
    lines += ["", f"![reconstructions]"
              f"({files.path(outputs['reconstructions']).name})"]
  return common.write_text(path, "\n".join(lines))


# --- Command line -------------------------------------------------------------

def define_flags():
  """The command-line flags (defined only when run as a script)."""
  flags.DEFINE_string("workdir", None, "Where the runs go.")
  flags.DEFINE_string("variant", "cpu", "VAE config variant.")
  flags.DEFINE_list("remedies", list(REMEDIES), "Remedies run.")
  flags.DEFINE_integer("steps", None,
                       "Training steps (default: the config's).")
  flags.DEFINE_multi_string("override", [],
                            "FIELD=VALUE for every run (repeatable).")
  flags.DEFINE_integer("num_samples", None, "Samples for the lesion-like "
                       "measure (default config.eval.num_samples).")
  flags.DEFINE_float("percentile", 1.0, "Dark = below this percentile of "
                     "healthy brain intensities.")
  flags.DEFINE_integer("min_pixels", None, "Smallest lesion-like component "
                       "(default image_size^2 / 512).")
  flags.DEFINE_bool("force", False,
                    "Recompute eval, detect and the measures.")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    configs = build_configs(f.variant, f.remedies, f.steps, f.override)
  except (KeyError, ValueError) as e:
    sys.exit(f"Config error: {e.args[0] if e.args else e}")
  result = run(f.workdir, configs, num_samples=f.num_samples,
               percentile=f.percentile, min_pixels=f.min_pixels,
               force=f.force, command=common.command_line(sys.argv))
  logging.info("Wrote %s", result["outputs"]["markdown"])
  print(files.read_text(result["outputs"]["markdown"]))


if __name__ == "__main__":
  define_flags()
  app.run(main)
