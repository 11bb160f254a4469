r"""Does synthetic lesion data help a supervised segmentation model?

  python -m experiments.ablations.synthetic_utility --workdir=runs/utility \
      --generator_workdir=runs/lesion_cpu --config=configs/lesion_ddpm.py:cpu \
      --config.sample.sampler=ddim --config.sample.num_steps=100 \
      --real_patients=2 --num_synthetic=128

Given a trained lesion-conditioned generator (configs/lesion_ddpm.py, its
`generate(..., known=...)` painting a lesion into a healthy slice at a
mask), trains the segmenter of `genjax.segment` (a small UNet, soft Dice +
BCE) in three arms, once per --seeds:

  real            the lesion slices of K patients of the training mix
                  (config.data.train_split; --real_patients=K, chosen by a
                  fixed permutation of its patients, the same for every
                  seed)
  real_synthetic  the same plus N synthetic pairs (--num_synthetic=N);
                  --real_fraction of every batch is drawn from the real
                  pairs, the rest from the synthetic ones
  synthetic       the N synthetic pairs only

Synthetic pairs (made once, cached in WORKDIR/synthetic/): lesion masks from
the training mix's OTHER patients (--masks_from=train; each of their lesion
slices' masks), from the phantom's lesion generator (--masks_from=phantom)
or a folder (--masks=DIR, read as experiments/synthesize.py reads them),
cycled to N in a fixed random order. Each mask is paired with a random
healthy slice of the training mix among those whose brain covers it best,
clipped to that brain, and a lesion is painted there
(`lesion_ddpm.paint`: the slice is kept exactly outside the mask); the
pair is (painted slice, clipped mask).

Every segmenter is scored on the lesion slices of the TEST patients
(config.data.eval_split) at probability 0.5: pooled Dice (all pixels of all
patients together) and the mean over patients of their Dice, with 95%
intervals from a percentile bootstrap over test patients (1000 resamples,
`common.subject_resamples`), and each arm minus `real` with the interval of
the paired bootstrap (the same resamples for both). An arm's summary row
(seed 'all') pools its seeds: pooled Dice over every seed's counts, each
patient's Dice averaged over the seeds.

Fidelity of the synthetic lesions:
  - Dice of the `real` arm's segmenter (trained on real lesions only)
    against the conditioning masks on the synthetic slices, beside its Dice
    on the real test lesions and on the same healthy slices BEFORE painting
    (a control: near 0 unless the segmenter fires on healthy tissue);
  - the mean (and s.d.) intensity inside the lesion, per modality: the
    synthetic lesions, the real lesions of the training mix, and the
    healthy tissue the synthetic lesions replaced.

Writes WORKDIR/utility.{md,csv,json} and WORKDIR/utility_pairs.png (per
example: the real slice the mask comes from when there is one, the healthy
slice, the synthetic slice, the mask outlined in red). Nothing finished is
redone: the synthetic pairs (WORKDIR/synthetic/, while the generator's
checkpoint and config, the guidance and the masks and slices are the same)
and each arm and seed (WORKDIR/runs/<arm>/seed_<s>/result.json and
params.msgpack, while the data, the real patients, the segmenter's settings
and, for the arms trained on them, the synthetic pairs are the same); new
synthetic pairs only re-score the real arm's saved segmenters on them
(fidelity.json). --force recomputes everything.
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

from experiments.ablations import common
from genjax import files
from genjax import segment

ARMS = ("real", "real_synthetic", "synthetic")
ARM_LABELS = {"real": "real (K patients)",
              "real_synthetic": "real + synthetic",
              "synthetic": "synthetic only"}
MASKS_FROM = ("train", "phantom")
COLUMNS = ("arm", "seed", "n_real", "n_synthetic", "steps", "final_loss",
           "pooled_dice", "pooled_lo", "pooled_hi", "mean_subject_dice",
           "mean_subject_lo", "mean_subject_hi", "d_pooled", "d_pooled_lo",
           "d_pooled_hi", "d_mean_subject", "d_mean_subject_lo",
           "d_mean_subject_hi")
# Bump to recompute cached results of an older format.
_VERSION = 1
DEFAULT_SEGMENTER = {"base_channels": 16, "channel_mult": (1, 2, 4),
                     "num_res_blocks": 1, "num_groups": 8}


# --- Data ---------------------------------------------------------------------


def load_slices(data_config, split, batch_size=32):
  """Every slice of `split` as numpy arrays, in the pipeline's order.

  Returns:
    {'image' [N, H, W, C], 'mask', 'brain' [N, H, W, 1] float32,
     'label' [N] int, 'subject' [N] str}.
  """
  from genjax.data import pipeline  # pylint: disable=g-import-not-at-top
  parts = {k: [] for k in ("image", "mask", "brain", "label", "subject")}
  for batch in pipeline.eval_batches(data_config, split, batch_size):
    keep = np.asarray(batch["valid"], bool)
    for k in parts:
      parts[k].append(np.asarray(batch[k])[keep])
  out = {k: np.concatenate(v) for k, v in parts.items()}
  out["subject"] = np.array([s.decode() if isinstance(s, bytes) else str(s)
                             for s in out["subject"]])
  for k in ("image", "mask", "brain"):
    out[k] = out[k].astype(np.float32)
  return out


def select(data, keep):
  """The slices of `data` where `keep` [N] is True."""
  return {k: v[keep] for k, v in data.items()}


def patients_of(data):
  """Sorted ids of the subjects with at least one lesion slice."""
  return sorted(set(data["subject"][data["label"] == 1].tolist()))


def choose_patients(patients, k, seed=0):
  """k of `patients` (sorted ids), by a fixed permutation of `seed`."""
  if not 1 <= k <= len(patients):
    raise ValueError(f"--real_patients={k}: the training split has "
                     f"{len(patients)} patients; choose 1 to "
                     f"{len(patients)}.")
  order = np.random.default_rng(seed).permutation(len(patients))
  return sorted(patients[i] for i in order[:k])


def modality_names(data_config, channels):
  """Names of the image channels (config.data.modality for one)."""
  if channels == 1:
    return [data_config.get("modality") or "image"]
  return [f"channel_{c}" for c in range(channels)]


# --- Synthetic pairs ----------------------------------------------------------


def source_masks(masks_from, masks_dir, train, real, size, num, seed=0):
  """(masks [M, S, S, 1], the real slices they come from or None, sources).

  masks_from='train': the lesion masks of the training patients not in
  `real`; 'phantom': `synthesize.phantom_masks`; masks_dir: a folder.
  """
  from experiments import synthesize  # pylint: disable=g-import-not-at-top
  if masks_dir:
    masks, sources = synthesize.load_masks(masks_dir, size)
    return masks, None, sources
  if masks_from == "phantom":
    masks, sources = synthesize.phantom_masks(size, num, seed)
    return masks, None, sources
  if masks_from != "train":
    raise ValueError(f"masks_from={masks_from!r}: use "
                     f"{' or '.join(MASKS_FROM)}, or a masks folder.")
  others = [p for p in patients_of(train) if p not in set(real)]
  if not others:
    raise ValueError(
        f"--masks_from=train: all {len(real)} patients of the training "
        "split are the real arm's; lower --real_patients or use "
        "--masks_from=phantom.")
  keep = (train["label"] == 1) & np.isin(train["subject"], others)
  return (train["mask"][keep], train["image"][keep],
          [f"{s}/lesion slice {i}" for i, s in
           enumerate(train["subject"][keep])])


def pair_with_healthy(masks, brains, rng, tolerance=0.02):
  """For each mask, a healthy slice whose brain covers it (near) best.

  Args:
    masks: [M, H, W, 1] lesion masks.
    brains: [K, H, W, 1] brain masks of the healthy slices.
    rng: a numpy Generator.
    tolerance: slices whose coverage is within this of the best one are
      drawn from uniformly.

  Returns:
    (indices [M] into the healthy slices, the masks clipped to their
    slices' brains [M, H, W, 1], coverage [M] before clipping).
  """
  m = (np.asarray(masks) > 0.5).reshape(len(masks), -1).astype(np.float32)
  b = (np.asarray(brains) > 0.5).reshape(len(brains), -1).astype(np.float32)
  coverage = (m @ b.T) / np.maximum(m.sum(1, keepdims=True), 1.0)
  idx = np.empty(len(m), np.int64)
  for i, row in enumerate(coverage):
    candidates = np.flatnonzero(row >= row.max() - tolerance)
    idx[i] = rng.choice(candidates)
  clipped = (m * b[idx]).reshape(np.shape(masks)).astype(np.float32)
  return idx, clipped, coverage[np.arange(len(m)), idx]


def paint_lesions(config, method, state, healthy, masks, guidance, seed=0):
  """`lesion_ddpm.paint` in chunks of config.eval.batch_size (numpy)."""
  from genjax.methods import lesion_ddpm  # pylint: disable=g-import-not-at-top
  fn = jax.jit(lambda s, r, x, m: lesion_ddpm.paint(method, s, r, x, m,
                                                    guidance))
  n = len(masks)
  chunk = min(n, config.eval.batch_size)
  rng = jax.random.fold_in(jax.random.key(seed), 8_765_431)
  out = []
  for i, start in enumerate(range(0, n, chunk)):
    idx = np.arange(start, start + chunk) % n  # Full chunks: one shape.
    result = np.asarray(fn(state, jax.random.fold_in(rng, i), healthy[idx],
                           masks[idx]))
    out.append(result[:min(chunk, n - start)])
    logging.info("Painted %d of %d synthetic lesions.",
                 min(start + chunk, n), n)
  return np.concatenate(out).astype(np.float32)


def make_synthetic(config, generator_workdir, train, real, *, num, masks_from,
                   masks_dir, guidance, out_dir, force=False, log=None):
  """The synthetic pairs, made once and cached in out_dir/synthetic.npz.

  Returns:
    {'images' (painted), 'masks' (clipped), 'healthy' (before painting),
     'real_images' (the slice each mask comes from, or NaN), 'sources',
     'coverage', 'guidance_scale', 'generator_step'}.
  """
  from genjax import checkpoints  # pylint: disable=g-import-not-at-top
  size = config.data.image_size
  masks, real_images, sources = source_masks(masks_from, masks_dir, train,
                                             real, size, num, config.seed)
  rng = np.random.default_rng(config.seed)
  order = rng.permutation(len(masks))
  pick = order[np.arange(num) % len(masks)]
  masks = masks[pick]
  real_images = (np.full((num, *train["image"].shape[1:]), np.nan,
                         np.float32) if real_images is None
                 else real_images[pick])
  sources = [sources[i] for i in pick]
  healthy_pool = select(train, train["label"] == 0)
  if not len(healthy_pool["image"]):
    raise ValueError("The training split has no healthy slices to paint "
                     "lesions into.")
  idx, clipped, coverage = pair_with_healthy(masks, healthy_pool["brain"],
                                             rng)
  nonempty = clipped.reshape(num, -1).sum(1) > 0
  if not nonempty.any():
    raise ValueError("No mask overlaps the brain of any healthy slice.")
  if not nonempty.all():
    logging.warning("%d masks lie outside every healthy brain; dropped.",
                    int((~nonempty).sum()))
  healthy = healthy_pool["image"][idx][nonempty]
  clipped, real_images = clipped[nonempty], real_images[nonempty]
  sources = [s for s, k in zip(sources, nonempty) if k]
  coverage = coverage[nonempty]
  scale = (config.sample.guidance_scale if guidance is None
           else float(guidance))
  step = common.checkpoint_step(config, generator_workdir)
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {generator_workdir}: train "
                            "the generator first (experiments.main).")
  key = {"version": _VERSION, "generator_step": int(step),
         "generator": common.relevant(config), "guidance": scale,
         "inputs": common.array_digest(healthy, clipped)}
  path = files.join(out_dir, "synthetic.npz")
  key_path = files.join(out_dir, "synthetic.json")
  if not force and files.exists(path) and files.exists(key_path):
    if files.read_json(key_path) == json.loads(json.dumps(key)):
      logging.info("Reusing the synthetic pairs in %s.", path)
      with files.load_npz(path) as z:
        return {k: z[k] for k in z.files}
  method, state = checkpoints.load_state(config, generator_workdir)
  if method.generate is None:
    raise ValueError(f"config.method={config.method!r} cannot generate at "
                     "a mask; give a configs/lesion_ddpm.py run.")
  painted = paint_lesions(config, method, state, healthy, clipped, scale,
                          config.seed)
  result = {"images": painted, "masks": clipped, "healthy": healthy,
            "real_images": real_images, "sources": np.array(sources),
            "coverage": coverage.astype(np.float32),
            "guidance_scale": np.float32(scale),
            "generator_step": np.int64(step)}
  files.save_npz(path, compressed=False, **result)
  common.write_json(key_path, key)
  if log is not None:
    log.append(("synthetic", path))
  return result


# --- Scores -------------------------------------------------------------------


def summarise(counts, resamples, level=0.95):
  """Pooled and mean per-subject Dice with subject-bootstrap intervals.

  Args:
    counts: [S, 3] `segment.dice_counts` rows of one model, or [R, S, 3]
      of several (seeds): pooled Dice sums them all, a subject's Dice is
      the mean of its Dice over the models.
    resamples: [B, S] subject indices (`common.subject_resamples`).
    level: the intervals' coverage.

  Returns:
    {'pooled': {'value', 'lo', 'hi', 'n_valid', 'draws'},
     'mean_subject': {...}}; 'draws' the [B] bootstrap values (for paired
    differences).
  """
  counts = np.asarray(counts, np.int64)
  counts = counts[None] if counts.ndim == 2 else counts
  per_subject = np.array([[segment.dice_of_counts(row) for row in model]
                          for model in counts]).mean(0)
  fns = {"pooled": lambda rows: segment.dice_of_counts(counts[:, rows]),
         "mean_subject": lambda rows: float(per_subject[rows].mean())}
  out = {}
  for name, fn in fns.items():
    draws = [fn(rows) for rows in np.asarray(resamples, np.int64)]
    out[name] = {"value": fn(np.arange(counts.shape[1])),
                 **common.percentile_interval(draws, level), "draws": draws}
  return out


def intensity_stats(images, masks, names):
  """{modality: {'mean', 'std', 'n_pixels'}} of images inside the masks."""
  inside = np.asarray(masks)[..., 0] > 0.5
  out = {}
  for c, name in enumerate(names):
    values = np.asarray(images)[..., c][inside]
    out[name] = {"mean": float(values.mean()) if values.size else None,
                 "std": float(values.std()) if values.size else None,
                 "n_pixels": int(values.size)}
  return out


# --- One arm ------------------------------------------------------------------


def train_arm(arm, seed, pairs, test, settings, run_dir, key, *,
              force=False, log=None):
  """Trains (or reuses) one segmenter; returns its cached result dict.

  Args:
    arm: one of ARMS.
    seed: the segmenter's seed.
    pairs: (images, masks, weights) it trains on.
    test: the test lesion slices (load_slices' dict).
    settings: {'segmenter': model fields, 'steps', 'batch_size',
      'learning_rate'}.
    run_dir: where result.json and params.msgpack go.
    key: what the result depends on (reused only while it matches).
    force: retrain even when a matching result exists.
    log: a list; ('train', run_dir) is appended when trained.

  Returns:
    {'subjects', 'test_counts' [S, 3], 'final_loss' (mean of the last 10
     steps), 'n_train'}.
  """
  from flax import serialization  # pylint: disable=g-import-not-at-top
  path = files.join(run_dir, "result.json")
  key = json.loads(json.dumps({**key, "arm": arm, "seed": seed}))
  if not force and files.exists(path) and files.exists(
      files.join(run_dir, "params.msgpack")):
    saved = files.read_json(path)
    if saved.get("key") == key:
      logging.info("Reusing %s.", run_dir)
      return saved["value"]
  model = segment.make_model(**settings["segmenter"])
  images, masks, weights = pairs
  logging.info("Training the %s segmenter (seed %d) on %d pairs.", arm, seed,
               len(images))
  state, losses = segment.train(
      model, images, masks, steps=settings["steps"],
      batch_size=settings["batch_size"],
      learning_rate=settings["learning_rate"], seed=seed, weights=weights,
      log_every=max(1, settings["steps"] // 10))
  subjects, counts = segment.dice_counts(
      segment.predict(model, state.params, test["image"]), test["mask"],
      test["subject"])
  value = {"subjects": subjects, "test_counts": counts.tolist(),
           "final_loss": float(losses[-10:].mean()),
           "n_train": int(len(images))}
  files.write_bytes(files.join(run_dir, "params.msgpack"),
                    serialization.to_bytes(jax.device_get(state.params)))
  common.write_json(path, {"key": key, "value": value})
  if log is not None:
    log.append(("train", run_dir))
  return value


def segmenter_fidelity(run_dir, settings, synthetic, synthetic_digest, *,
                       force=False, log=None):
  """The real arm's Dice on the synthetic slices, cached in run_dir.

  Its saved segmenter (params.msgpack) segments the synthetic slices and
  the same healthy slices before painting; each is scored against the
  conditioning masks. Reused while the segmenter (result.json) and the
  synthetic pairs are unchanged, so new synthetic pairs do not retrain it.

  Returns:
    {'synthetic_counts', 'unpainted_counts': [1, 3] `dice_counts` rows}.
  """
  from flax import serialization  # pylint: disable=g-import-not-at-top
  path = files.join(run_dir, "fidelity.json")
  key = {"segmenter": files.read_json(files.join(run_dir, "result.json"))[
      "key"], "synthetic": synthetic_digest}
  if not force and files.exists(path):
    saved = files.read_json(path)
    if saved.get("key") == key:
      return saved["value"]
  params = serialization.msgpack_restore(
      files.read_bytes(files.join(run_dir, "params.msgpack")))
  model = segment.make_model(**settings["segmenter"])
  value = {}
  for name, x in (("synthetic_counts", synthetic["images"]),
                  ("unpainted_counts", synthetic["healthy"])):
    _, c = segment.dice_counts(segment.predict(model, params, x),
                               synthetic["masks"])
    value[name] = c.tolist()
  common.write_json(path, {"key": key, "value": value})
  if log is not None:
    log.append(("fidelity", path))
  return value


def arm_pairs(arm, real, synthetic, real_fraction):
  """(images, masks, sampling weights or None) of an arm."""
  if arm == "real":
    return real["image"], real["mask"], None
  if arm == "synthetic":
    return synthetic["images"], synthetic["masks"], None
  n_real, n_syn = len(real["image"]), len(synthetic["images"])
  weights = np.concatenate([np.full(n_real, real_fraction / n_real),
                            np.full(n_syn, (1 - real_fraction) / n_syn)])
  return (np.concatenate([real["image"], synthetic["images"]]),
          np.concatenate([real["mask"], synthetic["masks"]]), weights)


# --- The study ----------------------------------------------------------------


def run(workdir, config, generator_workdir, *, real_patients=2,
        num_synthetic=128, masks_from="train", masks_dir=None, seeds=(0, 1, 2),
        segmenter=None, steps=500, batch_size=16, learning_rate=1e-3,
        real_fraction=0.5, guidance=None, num_resamples=1000, force=False,
        command=None, arms=ARMS):
  """Trains every arm and seed (reusing finished ones), scores, tabulates.

  Args:
    workdir: where everything goes.
    config: the generator's config (its data section is the study's data).
    generator_workdir: the trained lesion_ddpm run.
    real_patients: K, patients of the training split in the real arms.
    num_synthetic: N synthetic pairs.
    masks_from: 'train' or 'phantom' (when masks_dir is None).
    masks_dir: a folder of mask files, or None.
    seeds: segmenter seeds.
    segmenter: `segment.make_model` fields; None: DEFAULT_SEGMENTER.
    steps, batch_size, learning_rate: the segmenter's training.
    real_fraction: share of each real_synthetic batch that is real.
    guidance: the painting's guidance scale (None: the config's).
    num_resamples: bootstrap resamples over test patients.
    force: recompute the synthetic pairs and every arm.
    command: the command line, for utility.md.
    arms: the arms to train, a subset of ARMS that includes 'real' (every
      difference is against it); e.g. ('real',) at several K to see how
      Dice grows with real patients.

  Returns:
    {'rows', 'fidelity', 'computed': [(kind, path)], 'outputs'}.
  """
  unknown = [a for a in arms if a not in ARMS]
  if unknown or "real" not in arms:
    raise ValueError(f"arms={','.join(arms)}: a subset of "
                     f"{','.join(ARMS)} that includes 'real'.")
  arms = [a for a in ARMS if a in arms]
  if not 0.0 < real_fraction < 1.0:
    raise ValueError(f"real_fraction={real_fraction}: in (0, 1).")
  if num_synthetic < 1:
    raise ValueError(f"num_synthetic={num_synthetic}: at least 1.")
  segmenter = dict(DEFAULT_SEGMENTER, **(segmenter or {}))
  segmenter["channel_mult"] = tuple(segmenter["channel_mult"])
  data = config.data
  computed = []
  train = load_slices(data, data.train_split, config.eval.batch_size)
  test = load_slices(data, data.eval_split, config.eval.batch_size)
  test = select(test, test["label"] == 1)
  if not len(test["image"]):
    raise ValueError(f"Split {data.eval_split!r} has no lesion slices.")
  real_ids = choose_patients(patients_of(train), real_patients)
  real = select(train, (train["label"] == 1)
                & np.isin(train["subject"], real_ids))
  synthetic = make_synthetic(
      config, generator_workdir, train, real_ids, num=num_synthetic,
      masks_from=masks_from, masks_dir=masks_dir, guidance=guidance,
      out_dir=files.join(workdir, "synthetic"), force=force, log=computed)
  settings = {"segmenter": segmenter, "steps": int(steps),
              "batch_size": int(batch_size),
              "learning_rate": float(learning_rate)}
  data_key = {k: v for k, v in common.relevant(config).items()
              if k.startswith("data.")}
  base_key = {"version": _VERSION, "settings": settings, "data": data_key,
              "real_patients": real_ids,
              "test": common.array_digest(test["image"], test["mask"])}
  syn_key = {"synthetic": common.array_digest(synthetic["images"],
                                       synthetic["masks"]),
             "real_fraction": float(real_fraction)}
  results, fidelity_counts = {}, {}
  for arm in arms:
    key = dict(base_key, **({} if arm == "real" else syn_key))
    for seed in seeds:
      run_dir = files.join(workdir, "runs", arm, f"seed_{seed}")
      results[(arm, seed)] = train_arm(
          arm, int(seed), arm_pairs(arm, real, synthetic, real_fraction),
          test, settings, run_dir, key, force=force, log=computed)
      if arm == "real":
        fidelity_counts[seed] = segmenter_fidelity(
            run_dir, settings, synthetic, syn_key["synthetic"], force=force,
            log=computed)

  subjects = results[(ARMS[0], seeds[0])]["subjects"]
  plan = common.subject_resamples(len(subjects), num_resamples, 0)
  rows, summaries = [], {}
  for arm in arms:
    per_seed = [np.asarray(results[(arm, s)]["test_counts"]) for s in seeds]
    for seed, counts in list(zip(seeds, per_seed)) + [("all", per_seed)]:
      summaries[(arm, seed)] = summarise(counts, plan)
  for arm in arms:
    for seed in list(seeds) + ["all"]:
      s, base = summaries[(arm, seed)], summaries[("real", seed)]
      losses = [results[(arm, x)]["final_loss"] for x in
                (seeds if seed == "all" else [seed])]
      row = {"arm": arm, "seed": str(seed),
             "n_real": len(real["image"]) if arm != "synthetic" else 0,
             "n_synthetic": (len(synthetic["images"]) if arm != "real"
                             else 0),
             "steps": int(steps), "final_loss": float(np.mean(losses))}
      for name in ("pooled", "mean_subject"):
        row[f"{name}_dice"] = s[name]["value"]
        row[f"{name}_lo"], row[f"{name}_hi"] = s[name]["lo"], s[name]["hi"]
        d = common.paired_difference(s[name]["draws"], base[name]["draws"],
                                     s[name]["value"], base[name]["value"])
        row[f"d_{name}"] = d["value"]
        row[f"d_{name}_lo"], row[f"d_{name}_hi"] = d["lo"], d["hi"]
      rows.append(row)

  names = modality_names(data, train["image"].shape[-1])
  real_lesions = select(train, train["label"] == 1)
  fidelity = {
      "segmenter_dice": [
          {"seed": int(s),
           "synthetic": segment.dice_of_counts(
               fidelity_counts[s]["synthetic_counts"]),
           "unpainted": segment.dice_of_counts(
               fidelity_counts[s]["unpainted_counts"]),
           "real_test": segment.dice_of_counts(
               results[("real", s)]["test_counts"])} for s in seeds],
      "intensity": {
          "synthetic": intensity_stats(synthetic["images"],
                                       synthetic["masks"], names),
          "real_train": intensity_stats(real_lesions["image"],
                                        real_lesions["mask"], names),
          "healthy_before": intensity_stats(synthetic["healthy"],
                                            synthetic["masks"], names)},
      "modalities": names}
  info = {"real_patients": real_ids, "n_real_slices": len(real["image"]),
          "n_synthetic": len(synthetic["images"]),
          "masks_from": masks_dir or masks_from,
          "guidance_scale": float(synthetic["guidance_scale"]),
          "generator_step": int(synthetic["generator_step"]),
          "generator_workdir": generator_workdir,
          "test_subjects": subjects, "n_test_slices": len(test["image"]),
          "settings": settings, "real_fraction": real_fraction,
          "seeds": [int(s) for s in seeds], "num_resamples": num_resamples}
  outputs = {
      "csv": common.write_csv(files.join(workdir, "utility.csv"), rows,
                              list(COLUMNS)),
      "json": common.write_json(files.join(workdir, "utility.json"), {
          "command": command, "rows": rows, "fidelity": fidelity, **info}),
      "figure": pairs_figure(synthetic,
                             files.join(workdir, "utility_pairs.png")),
  }
  outputs["markdown"] = write_markdown(
      files.join(workdir, "utility.md"), rows, fidelity, info, command,
      outputs)
  return {"rows": rows, "fidelity": fidelity, "computed": computed,
          "outputs": outputs, **info}


# --- Outputs ------------------------------------------------------------------


def pairs_figure(synthetic, path, num=8):
  """Per example (rows): real slice of the mask (if any), healthy slice,
  synthetic slice, each with the mask outlined."""
  n = min(num, len(synthetic["images"]))
  has_real = bool(np.isfinite(synthetic["real_images"][:n]).all())
  columns = ([("real", synthetic["real_images"])] if has_real else []) + [
      ("healthy (before)", synthetic["healthy"]),
      ("synthetic (painted)", synthetic["images"])]
  fig, axes = plt.subplots(n, len(columns),
                           figsize=(1.8 * len(columns), 1.8 * n + 0.3),
                           squeeze=False)
  for i in range(n):
    for j, (title, images) in enumerate(columns):
      ax = axes[i, j]
      ax.imshow(images[i, ..., 0], cmap="gray", vmin=-1, vmax=1)
      ax.contour(synthetic["masks"][i, ..., 0], levels=[0.5], colors="r",
                 linewidths=0.6)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(title, fontsize=8)
  fig.suptitle("Real vs synthetic lesions at the same masks (red)"
               if has_real else "Synthetic lesions at the masks (red)",
               fontsize=9)
  fig.tight_layout()
  common.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def write_markdown(path, rows, fidelity, info, command, outputs):
  """utility.md: the arms' Dice table, fidelity, and the figure."""
  w = common.with_interval
  lines = [
      "# Synthetic lesion data for a supervised segmenter", "",
      "Produced by:", "", "```", command or "(called from Python)", "```", "",
      f"Generator: {info['generator_workdir']} (step "
      f"{info['generator_step']}, guidance {info['guidance_scale']:g}). "
      f"Real arm: the {info['n_real_slices']} lesion slices of "
      f"{len(info['real_patients'])} training patients "
      f"({', '.join(info['real_patients'])}). Synthetic: "
      f"{info['n_synthetic']} lesions painted into healthy training slices "
      f"at masks from {info['masks_from']}. real_synthetic draws "
      f"{info['real_fraction']:.0%} of each batch from the real pairs. "
      f"Segmenter: {info['settings']['segmenter']}, "
      f"{info['settings']['steps']} steps of batch "
      f"{info['settings']['batch_size']}, Adam "
      f"{info['settings']['learning_rate']:g}; seeds "
      f"{', '.join(map(str, info['seeds']))}.", "",
      f"Test: the {info['n_test_slices']} lesion slices of "
      f"{len(info['test_subjects'])} test patients, probability > 0.5.", "",
      "| arm | seed | train pairs (real + synthetic) | pooled Dice [95%] | "
      "Δ vs real [95%, paired] | mean patient Dice [95%] | Δ vs real "
      "[95%, paired] | final loss |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    delta = lambda k, r=r: ("—" if r["arm"] == "real" else
                            w(r[k], r[k + "_lo"], r[k + "_hi"]))
    lines.append("| " + " | ".join([
        ARM_LABELS[r["arm"]], r["seed"], f"{r['n_real']} + {r['n_synthetic']}",
        w(r["pooled_dice"], r["pooled_lo"], r["pooled_hi"]),
        delta("d_pooled"),
        w(r["mean_subject_dice"], r["mean_subject_lo"], r["mean_subject_hi"]),
        delta("d_mean_subject"), common.fmt(r["final_loss"], 3)]) + " |")
  lines += [
      "", "Intervals: 95% percentile bootstrap over test patients "
      f"({info['num_resamples']} resamples); Δ: the arm minus the real "
      "arm of the same seed (or all seeds) on the same resamples. Seed "
      "'all': pooled Dice over every seed's pixels, each patient's Dice "
      "averaged over the seeds. All columns, unrounded: utility.csv.", "",
      "## Fidelity of the synthetic lesions", "",
      "Dice of the real arm's segmenter (trained on real lesions only) "
      "against the conditioning masks:", "",
      "| seed | synthetic slices | the same healthy slices before painting "
      "(control) | real test lesions |", "|---|---|---|---|"]
  for d in fidelity["segmenter_dice"]:
    lines.append(f"| {d['seed']} | {common.fmt(d['synthetic'], 3)} | "
                 f"{common.fmt(d['unpainted'], 3)} | "
                 f"{common.fmt(d['real_test'], 3)} |")
  lines += ["", "Intensity inside the lesion (images in [-1, 1]; mean ± "
            "s.d. over lesion pixels):", "",
            "| modality | synthetic lesions | real lesions (training "
            "split) | healthy tissue they replaced |", "|---|---|---|---|"]
  stat = lambda s: (f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n_pixels']})"
                    if s["mean"] is not None else "n/a")
  for name in fidelity["modalities"]:
    i = fidelity["intensity"]
    lines.append(f"| {name} | {stat(i['synthetic'][name])} | "
                 f"{stat(i['real_train'][name])} | "
                 f"{stat(i['healthy_before'][name])} |")
  lines += ["", f"![pairs]({files.path(outputs['figure']).name})"]
  return common.write_text(path, "\n".join(lines))


# --- Command line -------------------------------------------------------------


def define_flags():
  """The command-line flags (defined only when run as a script)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file(
      "config", None, "The generator's config, e.g. "
      "configs/lesion_ddpm.py:cpu (default: its workdir's config.json).",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Where the study's outputs go.")
  flags.DEFINE_string("generator_workdir", None,
                      "The trained lesion_ddpm run.")
  flags.DEFINE_integer("real_patients", 2, "K: training patients whose "
                       "lesion slices the real arms train on.")
  flags.DEFINE_integer("num_synthetic", 128, "N: synthetic pairs.")
  flags.DEFINE_list("arms", list(ARMS), "Arms to train (a subset that "
                    "includes real; e.g. --arms=real at several "
                    "--real_patients).")
  flags.DEFINE_enum("masks_from", "train", MASKS_FROM,
                    "Masks of the synthetic pairs: the other training "
                    "patients' or the phantom's lesion generator.")
  flags.DEFINE_string("masks", None, "Instead: a folder of mask files.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Segmenter seeds.")
  flags.DEFINE_integer("steps", 500, "Segmenter training steps.")
  flags.DEFINE_integer("batch_size", 16, "Segmenter batch size.")
  flags.DEFINE_float("learning_rate", 1e-3, "Segmenter Adam step size.")
  flags.DEFINE_integer("seg_base_channels", 16, "Segmenter UNet width.")
  flags.DEFINE_list("seg_channel_mult", ["1", "2", "4"],
                    "Segmenter UNet level multipliers.")
  flags.DEFINE_integer("seg_num_groups", 8, "Segmenter GroupNorm groups.")
  flags.DEFINE_float("real_fraction", 0.5, "real_synthetic: share of each "
                     "batch drawn from the real pairs.")
  flags.DEFINE_float("guidance", None, "Painting guidance scale (default "
                     "config.sample.guidance_scale).")
  flags.DEFINE_bool("force", False, "Recompute the synthetic pairs and "
                    "retrain every arm.")
  flags.mark_flags_as_required(["workdir", "generator_workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    config = (f.config if f.config is not None
              else common.config_from_workdir(f.generator_workdir))
    common.validate(config)
    seeds = [int(s) for s in f.seeds]
    segmenter = {"base_channels": f.seg_base_channels,
                 "channel_mult": tuple(int(m) for m in f.seg_channel_mult),
                 "num_groups": f.seg_num_groups}
  except (KeyError, ValueError, FileNotFoundError) as e:
    sys.exit(f"Config error: {e.args[0] if e.args else e}")
  try:
    result = run(f.workdir, config, f.generator_workdir,
                 real_patients=f.real_patients,
                 num_synthetic=f.num_synthetic, masks_from=f.masks_from,
                 masks_dir=f.masks, seeds=seeds, segmenter=segmenter,
                 steps=f.steps, batch_size=f.batch_size,
                 learning_rate=f.learning_rate,
                 real_fraction=f.real_fraction, guidance=f.guidance,
                 force=f.force, command=common.command_line(sys.argv),
                 arms=tuple(f.arms))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"Error: {e}")
  logging.info("Wrote %s", result["outputs"]["markdown"])
  print(files.read_text(result["outputs"]["markdown"]))


if __name__ == "__main__":
  define_flags()
  app.run(main)
