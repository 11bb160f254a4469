r"""Writes a genjax dataset's splits as a folder of 2D slices (slice_folder).

  python -m experiments.export_slices --config=configs/ddpm.py:cpu \
      --out=/tmp/phantom_slices
  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/slices \
      --config.data.dataset=slice_folder --config.data.builder_config=custom \
      --config.data.manual_dir=/tmp/phantom_slices --mode=data

The dataset is the one `config.data` names (by default the config's brain
phantom, built on first use), read through `genjax.data.builders.load_split`
exactly as training reads it. For each split it writes

  OUT/<split>/<subject>_slice_<nnn>.png          the slice
  OUT/<split>/<subject>_slice_<nnn>_mask.png     its lesion mask (lesion slices)
  OUT/<split>/<subject>_slice_<nnn>_brain.png    its brain mask

which is the `custom` layout of the slice_folder builder (README, "Your own
2D slices"). PNG images are 16-bit grayscale: each subject's [0, brain
maximum] is mapped to [0, 65535] and rounded, so the quantisation step is
1/65535 of the brain maximum (8 bits would be 1/255, visible in the
residual maps that detection thresholds). genjax normalises every subject by
its own brain percentiles, and a per-subject linear scale leaves those
normalised images unchanged up to that rounding. Masks are 8-bit 0/255.
`--format=npy` writes exact float32 slices instead.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import tensorflow_datasets as tfds

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/ddpm.py:cpu",
    "Config whose config.data names the dataset to export.", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Folder to write the split folders to.")
_SPLITS = flags.DEFINE_list(
    "splits", None, "Splits to export; default: every split of the dataset.")
_FORMAT = flags.DEFINE_enum(
    "format", "png", ["png", "npy"],
    "png: 16-bit grayscale (per-subject brain maximum -> 65535); npy: exact "
    "float32.")
flags.mark_flags_as_required(["out"])


def export(data_config, out, splits=None, fmt="png"):
  """Writes `data_config`'s splits under `out` in the slice_folder layout.

  Args:
    data_config: `config.data` of the dataset to export.
    out: output folder; `out/<split>/` is created per split.
    splits: split names; None exports every split the dataset has.
    fmt: 'png' or 'npy' (see `genjax.data.slices.export_examples`).

  Returns:
    {split: number of slices written}.
  """
  # pylint: disable=g-import-not-at-top
  from genjax.data import builders
  from genjax.data import slices
  builder = builders.prepare(data_config)
  splits = splits or sorted(builder.info.splits.keys())
  counts = {}
  for split in splits:
    folder = os.path.join(os.path.expanduser(out), split)
    examples = tfds.as_numpy(builders.load_split(data_config, split))
    counts[split] = slices.export_examples(examples, folder, fmt)
    logging.info("%s: %d slices -> %s", split, counts[split], folder)
  return counts


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # pylint: disable=g-import-not-at-top
  from genjax import config as config_lib
  from genjax.data import builders
  from genjax.data import nifti
  from genjax.data import slices
  data_config = _CONFIG.value.data
  try:
    config_lib.validate_data(data_config)
    counts = export(data_config, _OUT.value, _SPLITS.value, _FORMAT.value)
  except (config_lib.ConfigError, builders.DatasetError, nifti.NiftiError,
          slices.SliceError) as e:
    raise SystemExit(f"Error: {e}") from None
  for split, n in counts.items():
    print(f"{split}: {n} slices in {os.path.join(_OUT.value, split)}")


if __name__ == "__main__":
  app.run(main)
