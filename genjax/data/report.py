"""`--mode=data`: what the pipeline feeds the models, as figures and counts.

Writes `WORKDIR/data/stats.json` (subjects, slices and lesion slices per split,
image shape, intensity range) and `WORKDIR/data/preview.png` (training and test
slices as the models see them, lesion outlines in red).
"""

import json
import os

from absl import logging
import numpy as np

from genjax import viz
from genjax.data import builders
from genjax.data import pipeline

PREVIEW_PER_SPLIT = 16


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
  images, masks, labels = [], [], []
  for batch in pipeline.eval_batches(data_config, split, 64):
    valid = batch["valid"]
    images.append(batch["image"][valid])
    masks.append(batch["mask"][valid])
    labels.append(batch["label"][valid])
  images, masks = np.concatenate(images), np.concatenate(masks)
  labels = np.concatenate(labels)
  lesion = np.flatnonzero(labels == 1)
  if prefer_lesions and lesion.size:
    n_lesion = min(lesion.size, PREVIEW_PER_SPLIT // 2)
    pick = list(lesion[_spread(lesion.size, n_lesion)])
    rest = np.setdiff1d(np.arange(len(labels)), pick)
    pick += list(rest[_spread(rest.size, PREVIEW_PER_SPLIT - n_lesion)])
    pick = np.sort(pick)
  else:
    pick = _spread(len(labels), PREVIEW_PER_SPLIT)
  return images[pick], masks[pick], labels[pick]


def write_preview(data_config, splits, path):
  """One panel per split: slices at native resolution x upscale, outlined."""
  upscale = max(1, 128 // data_config.image_size)
  panels = []
  for split in splits:
    images, masks, labels = _preview_slices(
        data_config, split, prefer_lesions=True)
    tile = viz.image_grid(images, masks, ncols=8, upscale=upscale)
    title = (f"{split}: {len(labels)} slices, {int(labels.sum())} with "
             "lesions (outlined in red)")
    panels.append(viz.titled(tile, title))
  return viz.save_png(path, viz.stack_vertically(panels))


def write_data_report(config, workdir):
  """Builds the dataset if needed; writes stats.json and preview.png."""
  data_config = config.data
  out_dir = os.path.join(workdir, "data")
  os.makedirs(out_dir, exist_ok=True)
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
  }
  stats_path = os.path.join(out_dir, "stats.json")
  with open(stats_path, "w") as f:
    json.dump(stats, f, indent=2, default=_json_default)
  preview_path = write_preview(
      data_config, [s for s in (data_config.train_split, data_config.eval_split)
                    if s in splits], os.path.join(out_dir, "preview.png"))
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
