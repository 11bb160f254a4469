r"""How real and how diverse are synthesised lesions? DDPM and VAE vs real.

  python -m experiments.ablations.lesion_realism --workdir=runs/realism_cpu \
      --ddpm_config=configs/lesion_ddpm.py:cpu --ddpm_workdir=runs/lesion_cpu \
      --ddpm_config.sample.sampler=ddim --ddpm_config.sample.num_steps=100 \
      --vae_config=configs/lesion_vae.py:cpu --vae_workdir=runs/lesion_vae_cpu \
      --guidances=0,1,2 --num=64

Either generator may be left out (at least one is needed). The reference set
is --num lesion slices of the TEST split (config.data.eval_split, spread
evenly over it as `experiments.synthesize --masks_from=test` takes them):
the real images and their masks. Each generator draws a whole slice with a
lesion at each of those masks (`synthesize.generate_images`, the noise that
`experiments.synthesize --mode=generate --masks_from=test` uses), the
lesion DDPM once per --guidances scale s (u + s (c - u): s=0 is its
unconditional model, which ignores the mask, a control; s=1 the
conditional one), the VAE at its only scale, 1.

Rows of the table:
  real (validation) vs real (test)   the floor: as many real lesion slices
      of config.data.val_split against the test ones, i.e. the distance two
      real samples of this size have (a generator cannot do better). The
      phantom's validation split is healthy: then the lesion slices of
      config.data.train_split (other patients) are used, and the row says so.
  DDPM, s=...; VAE                  the generated slices against the test ones.

Columns: n; the Fréchet distance and KID of `evaluate`'s download-free
random-conv features, and FID/KID of Inception pool3 features when
config.eval.inception_weights names a converted weights file (else n/a and
why); the lesion contrast (mean inside the mask minus the mean of a 3-pixel
ring around it inside the brain, `genjax.metrics.lesion_synthesis`), its
median and IQR over slices; the visible fraction (generated lesions at
least as conspicuous as the 10th percentile of the real test ones,
sign-aware); for generators, diversity: for the first 4 masks, 6 draws each,
the mean pairwise MS-SSIM of the whole slices within a mask's draws and the
mean RMS difference of the draws inside the mask; and the wall time per
generated slice (jit compilation included).

Writes WORKDIR/lesion_realism.md (table, this command, what each column
means), lesion_realism.json (everything, per-slice contrasts included),
lesion_realism_grid.png (rows: the first 6 masks; columns: the real test
slice, then each generator; the mask outlined in red on every tile) and
lesion_realism_diversity.png (for 2 masks, the draws of each generator in a
row). Each generator row's images are cached in WORKDIR/rows/<row>.npz, keyed
by a digest of its checkpoint step, config, guidance and masks: a rerun
generates only what changed; --force regenerates everything. All writes go
through genjax.files (a gs:// workdir works).
"""

import hashlib
import json
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from experiments import synthesize
from experiments.ablations import common
from genjax import files
from genjax import viz
from genjax.metrics import lesion_synthesis

# Bump to regenerate cached rows of an older format.
_VERSION = 1
ROWS_DIR = "rows"
FLOOR = "real_floor"
RING = 3  # Lesion-contrast ring width (dilation iterations).
VISIBLE_PERCENTILE = 10
NUM_DIVERSITY_MASKS = 4  # M: masks whose draws measure diversity.
NUM_DRAWS = 6  # K: draws per mask.
NUM_GRID_MASKS = 6  # Rows of lesion_realism_grid.png.
NUM_DIVERSITY_FIGURE_MASKS = 2  # Masks of lesion_realism_diversity.png.
TITLE_HEIGHT = 18  # Label bar above every figure tile.
DATA_RANGE = 2.0  # Images in [-1, 1].
# Noise of the diversity draws (the main images use synthesize's offset).
DIVERSITY_SEED_OFFSET = 5_432_109
# The config.data fields that decide which real slices are read; two
# generators must agree on them.
DATA_FIELDS = ("dataset", "builder_config", "modality", "image_size",
               "eval_split", "val_split", "slice_range", "min_brain_fraction",
               "clip_percentiles", "slice_pattern")
SLOTS = ("ddpm", "vae")


class RealismError(ValueError):
  """An input the study cannot use; the message names the flag."""


# --- Inputs -------------------------------------------------------------------


def _guidance_name(g):
  return f"{float(g):g}"


def generator_rows(slot, config, guidances):
  """The rows of one generator: [{'name', 'label', 'short', 'guidance'}]."""
  if slot == "vae":
    return [{"name": "vae", "label": "VAE", "short": "VAE",
             "guidance": float(config.sample.guidance_scale)}]
  rows = []
  for g in guidances:
    s = _guidance_name(g)
    rows.append({"name": f"ddpm_s{s}",
                 "label": f"DDPM, s={s}" + (" (unconditional)" if g == 0
                                            else ""),
                 "short": f"DDPM s={s}", "guidance": float(g)})
  return rows


def check_inputs(generators, guidances, num):
  """Checks what the study is given, before any data is read.

  Args:
    generators: {slot: (config or None, workdir or None)} for 'ddpm' and
      'vae'.
    guidances: the DDPM's guidance scales.
    num: reference slices.

  Returns:
    [{'slot', 'config', 'workdir', 'step', 'rows'}] of the generators given.

  Raises:
    RealismError: naming the flag at fault.
  """
  # pylint: disable=g-import-not-at-top
  from genjax import config as config_lib
  from genjax import methods
  # pylint: enable=g-import-not-at-top
  if num < 2:
    raise RealismError(f"--num={num}: at least 2 slices (a covariance "
                       "needs two).")
  out = []
  for slot in SLOTS:
    config, workdir = generators.get(slot, (None, None))
    if config is None and workdir is None:
      continue
    if config is None or workdir is None:
      given, missing = (("config", "workdir") if workdir is None
                        else ("workdir", "config"))
      raise RealismError(f"--{slot}_{given} needs --{slot}_{missing} too.")
    scales = ([float(g) for g in guidances] if slot == "ddpm"
              else [config.sample.guidance_scale])
    if slot == "ddpm" and not scales:
      raise RealismError("--guidances: give at least one guidance scale for "
                         "the DDPM.")
    is_vae = config.get("method") == "lesion_vae"
    if slot == "vae" and is_vae and any(isinstance(g, bool) or g != 1
                                        for g in scales):
      raise RealismError(
          f"--vae_config.sample.guidance_scale={scales[0]!r}: the lesion "
          "VAE has no classifier-free guidance; it must be 1 (--guidances "
          "applies to the DDPM only).")
    if slot == "ddpm" and is_vae:
      raise RealismError(
          "--ddpm_config is a lesion_vae config: give it as --vae_config "
          "(a VAE has no classifier-free guidance, so no --guidances rows).")
    try:
      config_lib.validate(config)
    except config_lib.ConfigError as e:
      raise RealismError(f"--{slot}_config: {e}") from None
    if methods.get(config).generate is None:
      raise RealismError(
          f"--{slot}_config: config.method={config.method!r} samples only "
          "unconditionally (no `generate` at a mask); give "
          f"configs/lesion_{slot}.py.")
    if slot == "vae" and not is_vae:
      raise RealismError(
          f"--vae_config: config.method={config.method!r} is not the lesion "
          "VAE; give configs/lesion_vae.py (a lesion DDPM goes in "
          "--ddpm_config).")
    step = common.checkpoint_step(config, workdir)
    if step is None:
      raise RealismError(
          f"--{slot}_workdir={workdir}: no checkpoint in it; train the "
          f"generator first (python -m experiments.main --config=... "
          f"--workdir={workdir}).")
    out.append({"slot": slot, "config": config, "workdir": workdir,
                "step": int(step),
                "rows": generator_rows(slot, config, scales)})
  if not out:
    raise RealismError("Give a generator: --ddpm_config with --ddpm_workdir "
                       "and/or --vae_config with --vae_workdir.")
  if len(out) == 2:
    a, b = (g["config"].data for g in out)
    differ = [k for k in DATA_FIELDS if a.get(k) != b.get(k)]
    if differ:
      raise RealismError(
          "--ddpm_config and --vae_config read different data ("
          + ", ".join(f"data.{k}: {a.get(k)!r} vs {b.get(k)!r}"
                      for k in differ) + "); compare them on the same.")
  return out


# --- Measures -----------------------------------------------------------------


def batched_features(fn, images, batch_size):
  """fn over images in full batches of batch_size (one compiled shape)."""
  n = len(images)
  out = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % n
    out.append(np.asarray(fn(images[idx]))[:min(batch_size, n - start)])
  return np.concatenate(out).astype(np.float64)


def distances(real, fake, config):
  """(Fréchet distance, KID mean, KID std) of fake vs real features, as the
  evaluator computes them (`evaluate.feature_distances` with config.eval's
  KID subsets, seeded by config.seed)."""
  from genjax import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.feature_distances(
      real, fake, num_subsets=int(config.eval.kid_num_subsets),
      subset_size=int(config.eval.kid_subset_size), seed=config.seed)


def contrast_summary(contrast, reference):
  """Median, quartiles and visible fraction of per-slice contrasts."""
  finite = contrast[np.isfinite(contrast)]
  if not len(finite):
    return {"contrast_median": None, "contrast_q25": None,
            "contrast_q75": None, "n_contrast": 0, "visible_fraction": None}
  q25, median, q75 = np.percentile(finite, [25, 50, 75])
  return {"contrast_median": float(median), "contrast_q25": float(q25),
          "contrast_q75": float(q75), "n_contrast": int(len(finite)),
          "visible_fraction": lesion_synthesis.visible_fraction(
              contrast, reference, VISIBLE_PERCENTILE)}


def diversity(draws, masks, num_draws, seed):
  """Within-mask diversity of draws [M*K, H, W, 1] for masks [M, H, W, 1].

  Returns:
    {'diversity_ms_ssim': mean over masks of the mean pairwise MS-SSIM of
     its K whole slices, 'region_diversity': mean over masks of
     `region_diversity`, and both per mask}.
  """
  from genjax.metrics import image  # pylint: disable=g-import-not-at-top
  ms, region = [], []
  for m in range(len(masks)):
    group = draws[m * num_draws:(m + 1) * num_draws]
    ms.append(image.pairwise_ms_ssim(group, data_range=DATA_RANGE, rng=seed))
    region.append(lesion_synthesis.region_diversity(group, masks[m]))
  region_arr = np.asarray(region, np.float64)
  return {"diversity_ms_ssim": float(np.mean(ms)),
          "region_diversity": (float(np.nanmean(region_arr))
                               if np.isfinite(region_arr).any() else None),
          "diversity_ms_ssim_per_mask": ms,
          "region_diversity_per_mask": region}


# --- Generation, cached -------------------------------------------------------


def row_key(generator, row, masks, diversity_masks):
  """The cache key of a generator row: what its images depend on."""
  key = {"version": _VERSION, "step": generator["step"],
         "config": common.relevant(generator["config"]),
         "guidance": row["guidance"],
         "masks": common.array_digest(np.asarray(masks, np.float32)),
         "diversity_masks": common.array_digest(np.asarray(diversity_masks,
                                                    np.float32)),
         "seed_offsets": [7_654_321, DIVERSITY_SEED_OFFSET]}
  text = json.dumps(key, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def generate_row(generator, row, masks, diversity_masks, path, *,
                 force=False, loaded=None):
  """A row's images and diversity draws: from its cache, or generated.

  Args:
    generator: a `check_inputs` entry.
    row: one of its rows.
    masks: [N, H, W, 1] the reference masks.
    diversity_masks: [M * K, H, W, 1] each diversity mask K times.
    path: the row's cache file (WORKDIR/rows/<row>.npz).
    force: generate even if the cache matches.
    loaded: a dict caching (method, state) per slot, filled on first use.

  Returns:
    ({'images', 'draws', 'seconds', 'draw_seconds'}, reused: bool).
  """
  from genjax import checkpoints  # pylint: disable=g-import-not-at-top
  key = row_key(generator, row, masks, diversity_masks)
  if not force and files.exists(path):
    with files.load_npz(path) as z:
      cached = {k: z[k] for k in z.files}
    if str(cached.get("key")) == key:
      logging.info("Reusing %s (%s).", path, row["label"])
      return {k: cached[k] for k in ("images", "draws")} | {
          "seconds": float(cached["seconds"]),
          "draw_seconds": float(cached["draw_seconds"])}, True
    logging.info("%s is of other inputs; regenerating.", path)
  loaded = {} if loaded is None else loaded
  slot, config = generator["slot"], generator["config"]
  if slot not in loaded:
    loaded[slot] = checkpoints.load_state(config, generator["workdir"])
  method, state = loaded[slot]
  logging.info("Generating %d slices and %d diversity draws: %s.",
               len(masks), len(diversity_masks), row["label"])
  start = time.perf_counter()
  images = synthesize.generate_images(config, method, state, masks,
                                      row["guidance"])
  seconds = time.perf_counter() - start
  start = time.perf_counter()
  draws = synthesize.generate_images(config, method, state, diversity_masks,
                                     row["guidance"],
                                     seed_offset=DIVERSITY_SEED_OFFSET)
  draw_seconds = time.perf_counter() - start
  for name, a in (("images", images), ("draws", draws)):
    if not np.all(np.isfinite(a)):
      raise FloatingPointError(
          f"{row['label']}: non-finite {name} from {generator['workdir']} "
          "(did training diverge?).")
  out = {"images": images, "draws": draws, "seconds": seconds,
         "draw_seconds": draw_seconds}
  files.save_npz(path, key=np.array(key), images=images, draws=draws,
                 masks=np.asarray(masks, np.float32),
                 seconds=np.float64(seconds),
                 draw_seconds=np.float64(draw_seconds),
                 guidance=np.float64(row["guidance"]),
                 step=np.int64(generator["step"]))
  return out, False


# --- Real slices --------------------------------------------------------------


def reference_slices(config, num):
  """(images, masks, names) of `num` lesion slices of the test split."""
  try:
    return synthesize.split_slices(config, config.data.eval_split, True, num)
  except synthesize.SynthesisError as e:
    raise RealismError(f"The reference set: {e}") from None


def floor_slices(config, num):
  """(split, images, masks) of `num` real lesion slices other than test's.

  config.data.val_split's lesion slices, or (none there, e.g. the phantom's
  healthy validation split) config.data.train_split's; (None, None, None)
  when neither has any.
  """
  for split in dict.fromkeys((config.data.val_split,
                              config.data.train_split)):
    if split == config.data.eval_split:
      continue
    try:
      images, masks, _ = synthesize.split_slices(config, split, True, num)
    except (synthesize.SynthesisError, ValueError) as e:
      logging.info("No floor slices in split %r: %s", split, e)
      continue
    return split, images, masks
  return None, None, None


# --- Figures ------------------------------------------------------------------


def tile_upscale(size):
  """Pixels per image pixel in the figures: a tile ~192 px (3x at 64 px)."""
  return max(1, -(-192 // int(size)))


def tile(image, mask, label, upscale):
  """One labelled figure tile: the slice upscaled, the mask outlined in red.

  Returns:
    uint8 [TITLE_HEIGHT + H * upscale, W * upscale, 3].
  """
  gray = viz.to_uint8(np.asarray(image)[..., 0])
  gray = gray.repeat(upscale, axis=0).repeat(upscale, axis=1)
  m = np.asarray(mask)[..., 0].repeat(upscale, axis=0).repeat(upscale, axis=1)
  rgb = viz.overlay_outlines(gray[None], m[None])[0]
  return viz.titled(rgb, label, height=TITLE_HEIGHT)


def grid_figure(path, real, masks, columns, num=NUM_GRID_MASKS):
  """Rows: the first `num` masks; columns: real test slice, each generator.

  Args:
    path: the PNG.
    real: [N, H, W, 1] real test slices.
    masks: [N, H, W, 1] their masks.
    columns: [(short label, images [N, H, W, 1])] of the generator rows.
    num: masks shown.
  """
  n = min(num, len(real))
  up = tile_upscale(real.shape[1])
  tiles = []
  for i in range(n):
    tiles.append(tile(real[i], masks[i], f"real (test) #{i}", up))
    tiles += [tile(images[i], masks[i], f"{label} #{i}", up)
              for label, images in columns]
  viz.save_png(path, viz.grid(np.stack(tiles), ncols=1 + len(columns),
                              pad=2, pad_value=255))
  return path


def diversity_figure(path, real, masks, columns, num_draws,
                     num=NUM_DIVERSITY_FIGURE_MASKS):
  """For `num` masks, a row per generator: the real slice, then its draws.

  Args:
    path: the PNG.
    real: [M, H, W, 1] the real slices of the diversity masks.
    masks: [M, H, W, 1] the diversity masks.
    columns: [(short label, draws [M * K, H, W, 1])].
    num_draws: K.
    num: masks shown.
  """
  up = tile_upscale(real.shape[1])
  tiles = []
  for m in range(min(num, len(masks))):
    for label, draws in columns:
      tiles.append(tile(real[m], masks[m], f"real (test) #{m}", up))
      tiles += [tile(draws[m * num_draws + k], masks[m],
                     f"{label} #{m} draw {k + 1}", up)
                for k in range(num_draws)]
  viz.save_png(path, viz.grid(np.stack(tiles), ncols=1 + num_draws, pad=2,
                              pad_value=255))
  return path


# --- The study ----------------------------------------------------------------


def run(workdir, *, ddpm_config=None, ddpm_workdir=None, vae_config=None,
        vae_workdir=None, guidances=(0.0, 1.0, 2.0), num=64,
        num_diversity_masks=NUM_DIVERSITY_MASKS, num_draws=NUM_DRAWS,
        force=False, command=None):
  """The realism and diversity table and figures of the generators given.

  Args:
    workdir: where the outputs go (a local folder or gs://...).
    ddpm_config, ddpm_workdir: a lesion_ddpm config and its trained run, or
      None for no DDPM.
    vae_config, vae_workdir: a lesion_vae config and its trained run, or
      None for no VAE.
    guidances: the DDPM's guidance scales, one row each.
    num: reference slices (lesion slices of the test split).
    num_diversity_masks: M, the first masks whose draws measure diversity.
    num_draws: K >= 2, draws per diversity mask.
    force: regenerate every row even where its cache matches.
    command: the command line, for lesion_realism.md.

  Returns:
    {'rows': [row dicts, the floor first], 'reference': the test set's
     contrast summary, 'floor_split', 'generated': [row names generated
     now], 'reused': [row names read from their cache], 'outputs': {name:
     path}, 'inception_status'}.

  Raises:
    RealismError: inputs the study cannot use (the message names the flag).
  """
  # pylint: disable=g-import-not-at-top
  from genjax import evaluate
  from genjax.nn import inception
  # pylint: enable=g-import-not-at-top
  if num_draws < 2:
    raise RealismError(f"num_draws={num_draws}: at least 2 draws per mask.")
  guidances = list(dict.fromkeys(float(g) for g in guidances))
  generators = check_inputs({"ddpm": (ddpm_config, ddpm_workdir),
                             "vae": (vae_config, vae_workdir)}, guidances,
                            num)
  config = generators[0]["config"]  # Its data and eval settings are used.
  batch_size = int(config.eval.batch_size)

  real, masks, names = reference_slices(config, num)
  real, masks = real.astype(np.float32), masks.astype(np.float32)
  n = len(real)
  floor_split, floor_real, floor_masks = floor_slices(config, n)
  m = min(num_diversity_masks, n)
  diversity_masks = np.repeat(masks[:m], num_draws, axis=0)

  features_fn = jax.jit(evaluate.random_conv_features_fn())
  fid_fn, fid_status = inception.fid_features_fn(config)

  def features(images):
    out = {"random_conv": batched_features(features_fn, images, batch_size),
           "inception": None}
    if fid_fn is not None:
      out["inception"] = np.asarray(fid_fn(images), np.float64)
    return out

  def measures(images, row_masks, feats):
    contrast = lesion_synthesis.lesion_contrast(images, row_masks,
                                                ring=RING)["contrast"]
    fd, kid_mean, kid_std = distances(ref_features["random_conv"],
                                      feats["random_conv"], config)
    fid, fid_kid_mean, fid_kid_std = distances(ref_features["inception"],
                                               feats["inception"], config)
    return {"n": len(images), "fd_random_conv": fd,
            "kid_random_conv_mean": kid_mean,
            "kid_random_conv_std": kid_std, "fid": fid,
            "kid_mean": fid_kid_mean, "kid_std": fid_kid_std,
            **contrast_summary(contrast, ref_contrast),
            "contrast": contrast.tolist()}

  ref_features = features(real)
  ref_contrast = lesion_synthesis.lesion_contrast(real, masks,
                                                  ring=RING)["contrast"]
  reference = dict(contrast_summary(ref_contrast, ref_contrast), n=n,
                   split=config.data.eval_split, slices=names,
                   contrast=ref_contrast.tolist())

  rows = []
  floor_label = (f"real ({floor_split}) vs real "
                 f"({config.data.eval_split})" if floor_split else
                 "real (no other lesion split) vs real "
                 f"({config.data.eval_split})")
  floor = {"name": FLOOR, "label": floor_label, "kind": "real",
           "split": floor_split}
  if floor_split is None:
    floor.update(n=0, fd_random_conv=None, kid_random_conv_mean=None,
                 kid_random_conv_std=None, fid=None, kid_mean=None,
                 kid_std=None, **contrast_summary(np.array([np.nan]),
                                                  ref_contrast))
  else:
    floor.update(measures(floor_real.astype(np.float32),
                          floor_masks.astype(np.float32),
                          features(floor_real.astype(np.float32))))
  rows.append(floor)

  generated, reused, loaded, shown = [], [], {}, []
  for generator in generators:
    for row in generator["rows"]:
      path = files.join(workdir, ROWS_DIR, f"{row['name']}.npz")
      out, was_cached = generate_row(generator, row, masks, diversity_masks,
                                     path, force=force, loaded=loaded)
      (reused if was_cached else generated).append(row["name"])
      result = {"name": row["name"], "label": row["label"],
                "kind": "generated", "generator": generator["slot"],
                "workdir": generator["workdir"], "step": generator["step"],
                "guidance": row["guidance"], "cached": was_cached,
                **measures(out["images"], masks, features(out["images"])),
                **diversity(out["draws"], masks[:m], num_draws, config.seed),
                "seconds_per_slice": out["seconds"] / n,
                "seconds_per_draw": out["draw_seconds"] / len(
                    diversity_masks)}
      rows.append(result)
      shown.append((row["short"], out["images"], out["draws"]))

  outputs = {
      "grid": grid_figure(files.join(workdir, "lesion_realism_grid.png"),
                          real, masks, [(s, i) for s, i, _ in shown]),
      "diversity": diversity_figure(
          files.join(workdir, "lesion_realism_diversity.png"), real[:m],
          masks[:m], [(s, d) for s, _, d in shown], num_draws)}
  info = {
      "command": command, "n": n, "floor_split": floor_split,
      "reference": reference, "inception_status": fid_status,
      "settings": {"ring": RING, "visible_percentile": VISIBLE_PERCENTILE,
                   "num_diversity_masks": m, "num_draws": num_draws,
                   "kid_num_subsets": int(config.eval.kid_num_subsets),
                   "kid_subset_size": min(
                       n, int(config.eval.kid_subset_size)),
                   "data": {k: config.data.get(k) for k in DATA_FIELDS}},
      "generators": [{"slot": g["slot"], "workdir": g["workdir"],
                      "step": g["step"], "method": g["config"].method,
                      "sample": g["config"].sample.to_dict()}
                     for g in generators]}
  outputs["json"] = common.write_json(
      files.join(workdir, "lesion_realism.json"),
      dict(info, rows=rows, outputs=dict(outputs)))
  outputs["markdown"] = write_markdown(
      files.join(workdir, "lesion_realism.md"), rows, info)
  return {"rows": rows, "reference": reference, "floor_split": floor_split,
          "generated": generated, "reused": reused, "outputs": outputs,
          "inception_status": fid_status}


# --- Report -------------------------------------------------------------------


def _num(value, digits=3):
  if value is None or (isinstance(value, float) and not np.isfinite(value)):
    return "n/a"
  return f"{value:.{digits}f}"


def _small(value):
  """KIDs are small and may be negative: 3 significant digits."""
  return "n/a" if value is None else f"{value:.3g}"


def write_markdown(path, rows, info):
  """lesion_realism.md: the table, the command, what each column means."""
  ref = info["reference"]
  iqr = lambda r: (f"{_num(r['contrast_median'])} "
                   f"[{_num(r['contrast_q25'])}, {_num(r['contrast_q75'])}]"
                   if r["contrast_median"] is not None else "n/a")
  lines = [
      "# Realism and diversity of synthesised lesions", "",
      "Produced by:", "", "```", info["command"] or "(called from Python)",
      "```", ""]
  for g in info["generators"]:
    sampler = (f", sampler {g['sample'].get('sampler')} with "
               f"{g['sample'].get('num_steps') or 'every'} steps"
               if g["slot"] == "ddpm" else "")
    lines.append(f"- {g['slot'].upper()}: {g['workdir']} ({g['method']}, "
                 f"step {g['step']}{sampler})")
  lines += [
      "", f"Reference: {ref['n']} lesion slices of the {ref['split']} split "
      "(real images and their masks); every generator draws one slice at "
      f"each of those masks. Real lesion contrast: median [IQR] "
      f"{iqr(ref)}.", ""]
  if info["floor_split"] and info["floor_split"] != info["settings"][
      "data"]["val_split"]:
    lines += [f"The validation split ({info['settings']['data']['val_split']})"
              f" has no lesion slices: the floor row uses the "
              f"{info['floor_split']} split's (other patients).", ""]
  lines += [
      "| row | n | FD random-conv | KID random-conv | FID | KID Inception | "
      "lesion contrast median [IQR] | visible | within-mask MS-SSIM | "
      "region diversity | s / slice |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    gen = r["kind"] == "generated"
    lines.append("| " + " | ".join([
        r["label"], str(r["n"]), _num(r["fd_random_conv"], 4),
        _small(r["kid_random_conv_mean"]), _num(r["fid"], 2),
        _small(r["kid_mean"]), iqr(r), _num(r["visible_fraction"], 2),
        _num(r["diversity_ms_ssim"]) if gen else "—",
        _num(r["region_diversity"]) if gen else "—",
        (_num(r["seconds_per_slice"], 2) + (" (cached)" if r["cached"]
                                            else "")) if gen else "—"])
                 + " |")
  s = info["settings"]
  lines += [
      "", "What the columns mean:", "",
      "- **n**: slices in the row, compared with the reference slices.",
      "- **FD random-conv / KID random-conv**: the Fréchet distance and the "
      "Kernel Inception Distance (cubic polynomial kernel, "
      f"{s['kid_num_subsets']} subsets of {s['kid_subset_size']}) between "
      "the row's slices and the reference ones, on the features of "
      "genjax.evaluate's fixed random conv net (download-free; not FID). "
      "Whole slices: they judge the anatomy as much as the lesion. The "
      "floor row is what two real samples of this size score; a generator "
      "near it is as close to the test slices as other real slices are. FD "
      "is biased upwards at small n, KID is not (it can be slightly "
      "negative).",
      "- **FID / KID Inception**: the same on Inception pool3 features "
      "(FID proper); " + ("computed." if info["inception_status"].startswith(
          "ok") else f"n/a: {info['inception_status']}"),
      f"- **lesion contrast**: per slice, the mean intensity inside the "
      f"mask minus the mean of a {s['ring']}-pixel ring around it inside the "
      "brain (images in [-1, 1]); median and interquartile range over "
      "slices. Sign: hyperintense lesions positive. The unconditional "
      "model (s=0) ignores the mask: its contrast is that of healthy "
      "tissue, a control.",
      f"- **visible**: the fraction of the row's lesions at least as "
      f"conspicuous (contrast times the sign of the real median) as the "
      f"{s['visible_percentile']}th percentile of the real test lesions; "
      f"real lesions score about {1 - s['visible_percentile'] / 100:.2f}.",
      f"- **within-mask MS-SSIM**: for the first {s['num_diversity_masks']} "
      f"masks, {s['num_draws']} draws each, the mean MS-SSIM (data range 2) "
      "over pairs of draws of the same mask, whole slices. 1: the "
      "generator gives the same slice every time; lower is more diverse.",
      "- **region diversity**: for the same draws, the RMS difference "
      "inside the mask between two draws of the same mask, averaged over "
      "pairs and masks: does the lesion itself vary (0: always the same "
      "lesion)?",
      "- **s / slice**: wall-clock seconds per generated slice on this "
      "machine, jit compilation included (\"cached\": measured when the "
      "row was generated).", "",
      "![grid](lesion_realism_grid.png)", "",
      "![diversity](lesion_realism_diversity.png)"]
  return common.write_text(path, "\n".join(lines))


# --- Command line -------------------------------------------------------------


def define_flags():
  """The command-line flags (defined only when run as a script)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file(
      "ddpm_config", None, "The lesion DDPM's config, e.g. "
      "configs/lesion_ddpm.py:cpu.", lock_config=True)
  flags.DEFINE_string("ddpm_workdir", None, "The trained lesion_ddpm run.")
  config_flags.DEFINE_config_file(
      "vae_config", None, "The lesion VAE's config, e.g. "
      "configs/lesion_vae.py:cpu.", lock_config=True)
  flags.DEFINE_string("vae_workdir", None, "The trained lesion_vae run.")
  flags.DEFINE_string("workdir", None, "Where the study's outputs go.")
  flags.DEFINE_list("guidances", ["0", "1", "2"],
                    "The DDPM's classifier-free guidance scales, a row each.")
  flags.DEFINE_integer("num", 64, "Reference lesion slices of the test "
                       "split (and generated slices per row).")
  flags.DEFINE_bool("force", False, "Regenerate every row.")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    guidances = [float(g) for g in f.guidances]
  except ValueError:
    sys.exit(f"Flag error: --guidances={','.join(f.guidances)}: give "
             "numbers, e.g. 0,1,2.")
  try:
    result = run(f.workdir, ddpm_config=f.ddpm_config,
                 ddpm_workdir=f.ddpm_workdir, vae_config=f.vae_config,
                 vae_workdir=f.vae_workdir, guidances=guidances, num=f.num,
                 force=f.force, command=common.command_line(sys.argv))
  except (RealismError, FileNotFoundError) as e:
    sys.exit(f"Error: {e}")
  logging.info("Wrote %s", result["outputs"]["markdown"])
  print(files.read_text(result["outputs"]["markdown"]))


if __name__ == "__main__":
  define_flags()
  app.run(main)
