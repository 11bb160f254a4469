r"""Image quality of a trained method: reconstructions and samples.

  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/ddpm_cpu --mode=eval

Writes DIR/eval/metrics.json, DIR/eval/report.md, two figures and their
arrays (DIR/eval/figures.npz, see `write_figure_arrays`). For every
method, through `reconstruct` and `sample` only:

Reconstruction of HEALTHY slices (label 0) of config.data.eval_split and of
config.data.val_split, per split (`reconstruction.<split>.*`):
  ssim, ssim_brain    mean SSIM (Gaussian 11-px window, sigma 1.5, data
                      range 2 for [-1, 1]) over the whole slice / over the
                      windows centred in the brain mask;
  ms_ssim             multi-scale SSIM of the whole slice (scales whose
                      image would be smaller than the window are dropped:
                      `ms_ssim_scales` says how many were used);
  psnr, psnr_brain    10 log10(2^2 / MSE), whole slice / brain pixels;
  sharpness, sharpness_input
                      mean Sobel gradient magnitude of reconstructions and of
                      their inputs (a blurry model has the first lower).
Every mean is over the real (`valid`) healthy slices only.

Synthesis: config.eval.num_samples samples against the real slices of
config.data.eval_split (`eval.reference` 'healthy': label 0 only, the
distribution the models learn; 'all': every slice):
  fid, kid_mean, kid_std
                      FID / KID on the standard FID Inception pool3 features
                      when config.eval.inception_weights names a converted
                      weights file; otherwise null, and `fid_status` says why.
  fd_random_conv, kid_random_conv_mean, kid_random_conv_std
                      Fréchet distance / KID on the features of a FIXED
                      RANDOM conv net (genjax.nn.features.RandomConvNet,
                      He-normal weights from seed 0; spatial means of the ReLU
                      maps of its 3 levels, 112 numbers). It needs no
                      download, but it is NOT FID: its features are untrained,
                      so it measures low-level statistics (intensity
                      histogram, contrast, edges, texture), not anatomy; its
                      values are on another scale than FID and comparable only
                      between runs at the same image_size.
  sharpness_samples / sharpness_real, hf_energy_samples / hf_energy_real
                      mean Sobel gradient magnitude, and fraction of spectral
                      energy above 0.25 cycles/pixel (blur lowers both);
  diversity_ms_ssim_samples / diversity_ms_ssim_real
                      mean pairwise MS-SSIM of up to `eval.diversity_num_images`
                      images (higher = less diverse; mode collapse -> 1).
"""

import json
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from genjax import files
from genjax import parallel
from genjax import train
from genjax import viz
from genjax.detect import batches
from genjax.detect import report
from genjax.metrics import distribution
from genjax.metrics import image
from genjax.nn import features
from genjax.nn import inception

DATA_RANGE = 2.0  # genjax images are in [-1, 1].

# The evaluator's fields of config.eval (configs/base.py documents them).
EVAL_FIELDS = ("reference", "diversity_num_images", "diversity_max_pairs",
               "kid_subset_size", "kid_num_subsets", "num_figure_images")

# The download-free feature network: fixed, so that numbers stay comparable.
RANDOM_CONV_CHANNELS = (16, 32, 64)
RANDOM_CONV_SEED = 0


def eval_options(config):
  """The evaluator's options from config.eval, validated."""
  opts = {k: config.eval[k] for k in EVAL_FIELDS}
  if opts["reference"] not in ("healthy", "all"):
    raise ValueError(f"config.eval.reference={opts['reference']!r}: use "
                     "'healthy' or 'all'.")
  if opts["diversity_num_images"] < 2:
    raise ValueError("config.eval.diversity_num_images must be >= 2.")
  if config.eval.num_samples < 2:
    raise ValueError(f"config.eval.num_samples={config.eval.num_samples}: "
                     "needs >= 2 samples for distribution statistics.")
  return opts


# --- Per-batch computations (jitted) ------------------------------------------


def make_quality_fn(method):
  """(state, images, brain, rng) -> reconstructions and per-slice metrics."""

  def quality(state, images, brain, rng):
    recon = method.reconstruct(state, images, rng).astype(jnp.float32)
    return {
        "reconstruction": recon,
        "ssim": image.ssim(images, recon, data_range=DATA_RANGE),
        "ssim_brain": image.ssim(images, recon, data_range=DATA_RANGE,
                                 mask=brain),
        "ms_ssim": image.ms_ssim(images, recon, data_range=DATA_RANGE),
        "psnr": image.psnr(images, recon, data_range=DATA_RANGE),
        "psnr_brain": image.psnr(images, recon, data_range=DATA_RANGE,
                                 mask=brain),
        "sharpness": image.sharpness(recon),
        "sharpness_input": image.sharpness(images),
    }
  return quality


def random_conv_features_fn():
  """images [B, H, W, 1] -> [B, sum(RANDOM_CONV_CHANNELS)] (jittable).

  Spatial means of the ReLU maps of every level of a conv net with fixed
  random weights; see the module docstring for what it can and cannot tell.
  """
  net = features.RandomConvNet(RANDOM_CONV_CHANNELS)
  params = net.init(jax.random.key(RANDOM_CONV_SEED),
                    jnp.zeros((1, 16, 16, 1)))

  def fn(images):
    maps = net.apply(params, images.astype(jnp.float32))
    return jnp.concatenate([m.mean(axis=(1, 2)) for m in maps], axis=-1)
  return fn


def make_image_stats_fn():
  """images -> random-conv features, sharpness, HF energy (per image)."""
  features = random_conv_features_fn()

  def stats(images):
    return {"random_conv": features(images),
            "sharpness": image.sharpness(images),
            "hf_energy": image.high_frequency_energy(images)}
  return stats


# --- Accumulation on the host -------------------------------------------------


class Reservoir:
  """A uniform random sample of at most `size` items of a stream (seeded)."""

  def __init__(self, size, seed):
    self.size, self.items, self.seen = size, [], 0
    self.rng = np.random.default_rng(seed)

  def add(self, item):
    self.seen += 1
    if len(self.items) < self.size:
      self.items.append(item)
    else:
      j = int(self.rng.integers(self.seen))
      if j < self.size:
        self.items[j] = item


class ImageSet:
  """Streamed statistics of a set of images (real slices or samples)."""

  def __init__(self, keep, seed):
    self.features = {"random_conv": [], "inception": []}
    self.sharpness, self.hf_energy = [], []
    self.kept = Reservoir(keep, seed)

  def add(self, images, stats, inception=None):
    """images [n, H, W, 1] numpy and their `make_image_stats_fn` outputs."""
    self.features["random_conv"].append(np.asarray(stats["random_conv"]))
    if inception is not None:
      self.features["inception"].append(np.asarray(inception))
    self.sharpness.append(np.asarray(stats["sharpness"]))
    self.hf_energy.append(np.asarray(stats["hf_energy"]))
    for image in images:
      self.kept.add(np.asarray(image))

  @property
  def n(self):
    return int(sum(len(s) for s in self.sharpness))

  def array(self, name):
    parts = self.features[name]
    return np.concatenate(parts).astype(np.float64) if parts else None

  def mean(self, name):
    values = np.concatenate(getattr(self, name)).astype(np.float64)
    return float(np.mean(values)) if len(values) else None


def _weighted_means(rows, weights):
  """Mean of each per-slice metric over the slices with weight True."""
  weights = np.concatenate(weights)
  out = {}
  for key in rows[0]:
    values = np.concatenate([r[key] for r in rows]).astype(np.float64)
    out[key] = float(np.mean(values[weights])) if weights.any() else None
  return out


# --- The evaluator ------------------------------------------------------------


def reconstruction_quality(config, quality_fn, state, split, rng, mesh,
                           keep=0):
  """Reconstruction metrics of the healthy slices of `split`.

  Args:
    config: the run's config.
    quality_fn: jitted `make_quality_fn(method)`.
    state: the method's state.
    split: the split to read.
    rng: key; batch i uses fold_in(rng, i).
    mesh: the device mesh.
    keep: how many (input, reconstruction) pairs to return for a figure,
      drawn uniformly over the split's healthy slices.

  Returns:
    (metrics dict with n_slices, figure pairs [(input, reconstruction)]).
  """
  metric_rows, weights = [], []
  # eval_batches is ordered by subject: a reservoir spreads the figure's
  # slices over the whole split instead of the first subject's neighbours.
  pairs = Reservoir(keep, config.seed)
  for i, batch in enumerate(batches.eval_batches(config, split)):
    images, brain = batches.batch_to_device(
        batch, mesh, config.eval.batch_size)
    out = jax.device_get(quality_fn(state, images, brain,
                                    jax.random.fold_in(rng, i)))
    use = np.asarray(batch["valid"], bool) & (batch["label"] == 0)
    weights.append(use)
    metric_rows.append({k: np.asarray(v) for k, v in out.items()
                        if k != "reconstruction"})
    if keep:
      for j in np.nonzero(use)[0]:
        pairs.add((batch["image"][j], np.asarray(out["reconstruction"][j])))
  result = {"n_slices": int(np.concatenate(weights).sum())}
  result.update(_weighted_means(metric_rows, weights))
  return result, pairs.items


def feature_distances(f_real, f_fake, *, num_subsets, subset_size, seed):
  """(Fréchet distance, KID mean, KID std) of fake vs real feature arrays.

  KID on `num_subsets` subsets of `subset_size` vectors (capped at the
  smaller set), seeded by `seed`; (None, None, None) when either set is
  missing or has fewer than 2 vectors.
  """
  if f_real is None or f_fake is None or min(len(f_real), len(f_fake)) < 2:
    return None, None, None
  mu1, s1 = distribution.feature_statistics(f_fake)
  mu2, s2 = distribution.feature_statistics(f_real)
  fd = distribution.frechet_distance(mu1, s1, mu2, s2)
  kid_mean, kid_std = distribution.kid(
      f_fake, f_real, num_subsets=num_subsets, subset_size=subset_size,
      rng=seed)
  return fd, kid_mean, kid_std


def _distances(real, fake, name, opts, seed):
  """feature_distances of one feature set of two ImageSets."""
  return feature_distances(real.array(name), fake.array(name),
                           num_subsets=opts["kid_num_subsets"],
                           subset_size=opts["kid_subset_size"], seed=seed)


def _diversity(images, opts, seed):
  if len(images) < 2:
    return None
  return image.pairwise_ms_ssim(np.stack(images), data_range=DATA_RANGE,
                                max_pairs=opts["diversity_max_pairs"],
                                rng=seed)


def synthesis_quality(config, method, state, rng, mesh, opts):
  """Samples against real slices: distances, sharpness, diversity.

  Returns:
    (metrics dict, ImageSet of reals, ImageSet of samples).
  """
  fid_fn, fid_status = inception.fid_features_fn(config)
  stats_fn = jax.jit(make_image_stats_fn())
  keep = max(opts["diversity_num_images"], opts["num_figure_images"])
  real = ImageSet(keep, config.seed)
  for batch in batches.eval_batches(config, config.data.eval_split):
    use = np.asarray(batch["valid"], bool)
    if opts["reference"] == "healthy":
      use = use & (batch["label"] == 0)
    if not use.any():
      continue
    images = np.asarray(batch["image"], np.float32)
    stats = jax.device_get(stats_fn(images))
    stats = {k: np.asarray(v)[use] for k, v in stats.items()}
    real.add(images[use], stats,
             fid_fn(images[use]) if fid_fn is not None else None)

  fake = ImageSet(keep, config.seed + 1)
  batch_size = config.eval.batch_size
  sample_fn = jax.jit(method.sample, static_argnums=2,
                      out_shardings=parallel.replicated(mesh))
  n = int(config.eval.num_samples)
  for i in range(-(-n // batch_size)):
    images = np.asarray(jax.device_get(
        sample_fn(state, jax.random.fold_in(rng, i), batch_size)), np.float32)
    if not np.all(np.isfinite(images)):
      raise FloatingPointError(
          f"{config.method} produced non-finite samples (batch {i}): check "
          "the checkpoint (did training diverge?).")
    # Statistics of the whole batch (one compiled shape), then the n needed.
    take = min(batch_size, n - i * batch_size)
    stats = {k: np.asarray(v)[:take]
             for k, v in jax.device_get(stats_fn(images)).items()}
    images = images[:take]
    fake.add(images, stats, fid_fn(images) if fid_fn is not None else None)

  fd, kid_mean, kid_std = _distances(real, fake, "random_conv", opts,
                                     config.seed)
  metrics = {
      "reference": opts["reference"],
      "n_samples": fake.n,
      "n_real": real.n,
      "fid": None, "fid_status": fid_status, "kid_mean": None,
      "kid_std": None,
      "fd_random_conv": fd,
      "kid_random_conv_mean": kid_mean,
      "kid_random_conv_std": kid_std,
      "sharpness_samples": fake.mean("sharpness"),
      "sharpness_real": real.mean("sharpness") if real.n else None,
      "hf_energy_samples": fake.mean("hf_energy"),
      "hf_energy_real": real.mean("hf_energy") if real.n else None,
      "diversity_ms_ssim_samples": _diversity(
          fake.kept.items[:opts["diversity_num_images"]], opts, config.seed),
      "diversity_ms_ssim_real": _diversity(
          real.kept.items[:opts["diversity_num_images"]], opts, config.seed),
  }
  if fid_fn is not None:
    fid, kid_mean, kid_std = _distances(real, fake, "inception", opts,
                                        config.seed)
    metrics.update(fid=fid, kid_mean=kid_mean, kid_std=kid_std)
    if fid is None:
      metrics["fid_status"] = (f"needs >= 2 samples and real slices, got "
                               f"{fake.n} and {real.n}.")
  if real.n < 2:
    metrics["reference_status"] = (
        f"split {config.data.eval_split!r} has {real.n} {opts['reference']} "
        "slices: distances need at least 2.")
  return metrics, real, fake


def _figure_rows(images, title, ncols, upscale):
  tile = viz.image_grid(np.stack(images), ncols=ncols, upscale=upscale)
  return viz.titled(tile, title)


def evaluate(config, method, state, out_dir, *, mesh=None, command=None):
  """Runs every evaluation and writes metrics.json, report.md and figures.

  Args:
    config: the run's config.
    method: a `genjax.methods.Method` (uses `reconstruct` and `sample`).
    state: its state (must have `step`).
    out_dir: output folder (DIR/eval).
    mesh: device mesh (default: all devices).
    command: the command line shown in report.md.

  Returns:
    The metrics dict written to metrics.json.
  """
  batches.check_single_host()
  t_start = time.time()
  opts = eval_options(config)
  mesh = parallel.make_mesh() if mesh is None else mesh
  rng = jax.random.fold_in(jax.random.key(config.seed), 3_000_017)
  recon_rng, sample_rng = jax.random.split(rng)
  quality_fn = jax.jit(make_quality_fn(method))
  n_fig = opts["num_figure_images"]

  reconstruction, pairs = {}, []
  splits = [config.data.eval_split]
  if (config.data.val_split not in splits
      and batches.has_split(config.data, config.data.val_split)):
    splits.append(config.data.val_split)
  for s, split in enumerate(splits):
    reconstruction[split], kept = reconstruction_quality(
        config, quality_fn, state, split, jax.random.fold_in(recon_rng, s),
        mesh, keep=n_fig if s == 0 else 0)
    pairs += kept

  synthesis, real, fake = synthesis_quality(config, method, state, sample_rng,
                                            mesh, opts)
  size = config.data.image_size
  metrics = {
      "method": config.method,
      "step": int(jax.device_get(state.step)),
      "reconstruction": reconstruction,
      "ms_ssim_scales": image.ms_ssim_num_scales(size),
      **synthesis,
      "random_conv": {"channels": list(RANDOM_CONV_CHANNELS),
                      "seed": RANDOM_CONV_SEED,
                      "dims": int(sum(RANDOM_CONV_CHANNELS))},
      "options": opts,
  }

  upscale = max(1, 96 // size)
  figures = {}
  if fake.kept.items:
    rows = [_figure_rows(fake.kept.items[:n_fig], "samples", n_fig, upscale)]
    if real.kept.items:
      rows.append(_figure_rows(
          real.kept.items[:n_fig],
          f"real ({config.data.eval_split}, {opts['reference']})", n_fig,
          upscale))
    figures["samples"] = viz.save_png(files.join(out_dir, "samples.png"),
                                      viz.stack_vertically(rows))
  if pairs:
    inputs, recons = zip(*pairs)
    # |x - x'| in [0, 2], shifted to [-1, 1] to be drawn as a gray level.
    diff = [np.abs(a - b) - 1.0 for a, b in pairs]
    rows = [_figure_rows(list(inputs), "inputs (healthy)", n_fig, upscale),
            _figure_rows(list(recons), "reconstructions", n_fig, upscale),
            _figure_rows(diff, "|input - reconstruction| (black 0, white 2)",
                         n_fig, upscale)]
    figures["reconstructions"] = viz.save_png(
        files.join(out_dir, "reconstructions.png"),
        viz.stack_vertically(rows))
  metrics["figures"] = {k: files.relpath(v, out_dir)
                        for k, v in figures.items()}
  metrics["figure_arrays"] = files.relpath(write_figure_arrays(
      files.join(out_dir, "figures.npz"), fake.kept.items[:n_fig],
      real.kept.items[:n_fig], pairs), out_dir)
  metrics["seconds"] = time.time() - t_start
  metrics["config"] = json.loads(config.to_json_best_effort())
  report.write_json(files.join(out_dir, "metrics.json"), metrics)
  write_eval_report(files.join(out_dir, "report.md"), metrics, command)
  logging.info("Eval of %s: %s; wrote %s", config.method,
               {k: metrics[k] for k in ("fid", "fd_random_conv",
                                        "sharpness_samples",
                                        "sharpness_real")}, out_dir)
  return metrics


def write_figure_arrays(path, samples, real, pairs):
  """DIR/eval/figures.npz: the figures' images as arrays, to combine runs.

  Holds samples, real, inputs and reconstructions, each [N, H, W, 1]
  float32 in [-1, 1] (N may be 0); `inputs` are the first healthy slices of
  config.data.eval_split in dataset order, so they are the same slices for
  every method evaluated on the same data.
  """
  def stack(images):
    images = [np.asarray(x, np.float32) for x in images]
    return np.stack(images) if images else np.zeros((0, 0, 0, 1), np.float32)
  files.save_npz(path, samples=stack(samples), real=stack(real),
                      inputs=stack([a for a, _ in pairs]),
                      reconstructions=stack([b for _, b in pairs]))
  return path


# --- Report -------------------------------------------------------------------

_RECON_ROWS = (
    ("ssim", "SSIM, whole slice"),
    ("ssim_brain", "SSIM, windows centred in the brain"),
    ("ms_ssim", "MS-SSIM, whole slice"),
    ("psnr", "PSNR (dB), whole slice"),
    ("psnr_brain", "PSNR (dB), brain pixels"),
    ("sharpness", "Sobel gradient magnitude of reconstructions"),
    ("sharpness_input", "... of their inputs"),
)


def write_eval_report(path, metrics, command):
  """DIR/eval/report.md: tables, the command and the figures."""
  m, fmt = metrics, report.fmt
  splits = list(m["reconstruction"])
  lines = [
      f"# Evaluation: {m['method']} (step {m['step']})", "",
      "Produced by:", "", "```", command or "(called from Python)", "```", "",
      "## Reconstruction of healthy slices", "",
      "| metric | " + " | ".join(splits) + " |",
      "|---|" + "---|" * len(splits),
      "| slices | " + " | ".join(str(m["reconstruction"][s]["n_slices"])
                                 for s in splits) + " |",
  ]
  for key, label in _RECON_ROWS:
    lines.append(f"| {key}: {label} | " + " | ".join(
        fmt(m["reconstruction"][s].get(key)) for s in splits) + " |")
  lines += [
      "", f"Data range 2 (images in [-1, 1]); SSIM with an 11-px Gaussian "
      f"window (sigma 1.5); MS-SSIM with {m['ms_ssim_scales']} scale(s) at "
      "this image size (coarser scales smaller than the window are dropped "
      "and the weights renormalised).", "",
      f"## Samples ({m['n_samples']}) against real slices ({m['n_real']}, "
      f"{m['reference']})", "",
      "| metric | samples | real | definition |", "|---|---|---|---|",
      f"| fid | {fmt(m['fid'])} | | FID, Inception pool3 |",
      f"| kid | {fmt(m['kid_mean'])} ± {fmt(m['kid_std'])} | | KID, "
      "Inception pool3 |",
      f"| fd_random_conv | {fmt(m['fd_random_conv'])} | | Fréchet distance "
      "on fixed random conv features (**not FID**, see below) |",
      f"| kid_random_conv | {fmt(m['kid_random_conv_mean'], 6)} ± "
      f"{fmt(m['kid_random_conv_std'], 6)} | | KID on the same features |",
      f"| sharpness | {fmt(m['sharpness_samples'])} | "
      f"{fmt(m['sharpness_real'])} | mean Sobel gradient magnitude |",
      f"| hf_energy | {fmt(m['hf_energy_samples'])} | "
      f"{fmt(m['hf_energy_real'])} | spectral energy above 0.25 cycles/px |",
      f"| diversity_ms_ssim | {fmt(m['diversity_ms_ssim_samples'])} | "
      f"{fmt(m['diversity_ms_ssim_real'])} | mean pairwise MS-SSIM (higher ="
      " less diverse) |", "",
      f"FID: {m['fid_status']}", "",
      "fd_random_conv uses a conv net with FIXED RANDOM weights (levels "
      f"{m['random_conv']['channels']}, seed {m['random_conv']['seed']}; "
      f"{m['random_conv']['dims']} features: spatial means of each ReLU "
      "map). It needs no download but is not FID: untrained features see "
      "intensity, contrast, edges and texture, not anatomy; its scale differs "
      "from FID's, it is biased upwards for few samples (as FID), and it is "
      "comparable only between runs at the same image size.",
  ]
  dims = m["random_conv"]["dims"]
  if min(m["n_samples"], m["n_real"]) <= dims:
    lines += ["", f"With {min(m['n_samples'], m['n_real'])} images for "
              f"{dims} features the covariances are rank-deficient: "
              "fd_random_conv is dominated by estimation noise here; compare "
              "KID, or raise config.eval.num_samples."]
  if m.get("reference_status"):
    lines += ["", m["reference_status"]]
  for name, caption in (("samples", "Samples (top) and real slices (bottom)"),
                        ("reconstructions", "Healthy test inputs, their "
                         "reconstructions and the absolute difference")):
    if name in m["figures"]:
      lines += ["", f"![{name}]({m['figures'][name]})", "", caption + "."]
  files.write_text(path, "\n".join(lines) + "\n")
  return path


def eval_mode(config, workdir):
  """`--mode=eval`: DIR/eval/{metrics.json, report.md, samples.png, ...}."""
  method, state = train.load_state(config, workdir)
  return evaluate(config, method, state, files.join(workdir, "eval"),
                  command=report.reproduce_command(config, workdir, "eval"))
