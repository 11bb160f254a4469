"""`--mode=data`: what the pipeline feeds the models, as figures and counts.

Writes `WORKDIR/data/stats.json` (subjects, slices and lesion slices per split,
image shape, intensity range, how much of the frame the brain masks cover) and
`WORKDIR/data/preview.png` (training and test slices as the models see them,
lesion outlines in red, brain-mask outlines in cyan).

A brain mask that covers (nearly) the whole frame means the background was
not removed (a noisy background, or the skull): the residual maps will light
up the background. The report warns when a split's mean coverage exceeds
MAX_MEAN_BRAIN_COVERAGE.
"""

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from genjax import files
from genjax import viz
from genjax.data import builders
from genjax.data import pipeline

PREVIEW_PER_SPLIT = 16
BRAIN_RGB = (0, 230, 230)  # Cyan, beside the red lesion outlines.
# A slice whose brain mask covers more than this share of its frame counts
# as "whole frame" in the stats.
FULL_FRAME_COVERAGE = 0.8
# A split whose brain masks cover more than this share of the frame on
# average has not had its background removed (the brain of a head MRI slice
# is ~20-50 % of a tight frame).
MAX_MEAN_BRAIN_COVERAGE = 0.7


def brain_coverage(examples):
  """How much of the frame the brain masks cover.

  Args:
    examples: tf.data.Dataset of examples with the `slice_features()` schema
      (only `brain` [H, W, 1] is read), e.g. `builders.load_split(...)`.

  Returns:
    {'mean': mean over slices of the fraction of the slice's pixels inside
    `brain`, f'slices_over_{FULL_FRAME_COVERAGE}': fraction of slices whose
    coverage exceeds FULL_FRAME_COVERAGE}; both None for no slices.
  """
  fractions = examples.map(
      lambda ex: tf.reduce_mean(tf.cast(ex["brain"] > 0, tf.float64)))
  fractions = np.concatenate(
      [np.zeros(0)] + list(fractions.batch(1024).as_numpy_iterator()))
  over = f"slices_over_{FULL_FRAME_COVERAGE:g}"
  if not fractions.size:
    return {"mean": None, over: None}
  return {"mean": float(fractions.mean()),
          over: float((fractions > FULL_FRAME_COVERAGE).mean())}


def coverage_warning(split, coverage):
  """The warning for a split whose brain masks cover the frame, or None."""
  mean = coverage["mean"]
  if mean is None or mean <= MAX_MEAN_BRAIN_COVERAGE:
    return None
  return (
      f"{split}: the brain masks cover {mean:.0%} of the frame on average "
      f"(more than {MAX_MEAN_BRAIN_COVERAGE:.0%}): the background was not "
      "removed (a noisy background, or the skull, is inside the brain mask), "
      "so the residual maps will light up the background. Give <stem>_brain "
      "masks with the images, or skull-strip them first with `python -m "
      'experiments.preprocess` (README, "Real data").')


def _spread(n_total, n_pick):
  """n_pick indices spread evenly over range(n_total)."""
  if n_total <= n_pick:
    return np.arange(n_total)
  return np.linspace(0, n_total - 1, n_pick).round().astype(int)


def _preview_slices(data_config, split, prefer_lesions):
  """Slices of `split` for the preview: spread over subjects and positions.

  For a split with lesions, half the tiles are lesion slices so that the
  outlines can be judged; the rest are spread over the whole split.
  """
  images, masks, brains, labels = [], [], [], []
  for batch in pipeline.eval_batches(data_config, split, 64):
    valid = batch["valid"]
    images.append(batch["image"][valid])
    masks.append(batch["mask"][valid])
    brains.append(batch["brain"][valid])
    labels.append(batch["label"][valid])
  images, masks = np.concatenate(images), np.concatenate(masks)
  brains, labels = np.concatenate(brains), np.concatenate(labels)
  lesion = np.flatnonzero(labels == 1)
  if prefer_lesions and lesion.size:
    n_lesion = min(lesion.size, PREVIEW_PER_SPLIT // 2)
    pick = list(lesion[_spread(lesion.size, n_lesion)])
    rest = np.setdiff1d(np.arange(len(labels)), pick)
    pick += list(rest[_spread(rest.size, PREVIEW_PER_SPLIT - n_lesion)])
    pick = np.sort(pick)
  else:
    pick = _spread(len(labels), PREVIEW_PER_SPLIT)
  return images[pick], masks[pick], brains[pick], labels[pick]


def write_preview(data_config, splits, path):
  """One panel per split: slices at native resolution x upscale, outlined."""
  upscale = max(1, 128 // data_config.image_size)
  panels = []
  for split in splits:
    images, masks, brains, labels = _preview_slices(
        data_config, split, prefer_lesions=True)
    big = lambda a: a[..., 0].repeat(upscale, axis=1).repeat(upscale, axis=2)
    # Brain first, lesions on top: where the outlines meet, red wins.
    rgb = viz.overlay_outlines(viz.to_uint8(big(images)), big(brains),
                               color=BRAIN_RGB)
    tile = viz.grid(viz.overlay_outlines(rgb, big(masks)), ncols=8)
    title = (f"{split}: {len(labels)} slices, {int(labels.sum())} with "
             "lesions (red); brain mask in cyan")
    panels.append(viz.titled(tile, title))
  return viz.save_png(path, viz.stack_vertically(panels))


def write_data_report(config, workdir):
  """Builds the dataset if needed; writes stats.json and preview.png."""
  data_config = config.data
  out_dir = files.join(workdir, "data")
  builders.prepare(data_config)
  builder = builders.get_builder(data_config)
  splits = [s for s in ("train", "train_mixed", "validation", "test")
            if s in builder.info.splits] or sorted(builder.info.splits)
  stats = {
      "dataset": data_config.dataset,
      "builder_config": data_config.builder_config,
      "data_dir": builder.data_dir,
      "image_size": data_config.image_size,
      "filters": {
          "slice_range": data_config.slice_range,
          "min_brain_fraction": data_config.min_brain_fraction,
          "clip_percentiles": list(data_config.clip_percentiles),
      },
      "splits": {s: pipeline.dataset_stats(data_config, s) for s in splits},
      "warnings": [],
  }
  # Coverage of the stored slices (at their own size, before the filters
  # and the pipeline's padding), i.e. of the brain masks themselves.
  for split in splits:
    coverage = brain_coverage(builders.load_split(
        data_config, split,
        read_config=tfds.ReadConfig(try_autocache=False)))
    stats["splits"][split]["brain_coverage"] = coverage
    warning = coverage_warning(split, coverage)
    if warning:
      logging.warning("%s", warning)
      stats["warnings"].append(warning)
  stats_path = files.write_json(files.join(out_dir, "stats.json"), stats,
                                indent=2, default=_json_default)
  preview_path = write_preview(
      data_config, [s for s in (data_config.train_split, data_config.eval_split)
                    if s in splits], files.join(out_dir, "preview.png"))
  logging.info("Wrote %s and %s", stats_path, preview_path)
  for split, s in stats["splits"].items():
    logging.info("%s: %s", split, s)
  return stats


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, tuple):
    return list(value)
  raise TypeError(f"not JSON serialisable: {type(value)}")
