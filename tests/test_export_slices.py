"""`experiments/export_slices.py`: the phantom as PNG slices, read back by
the slice_folder builder (README, "Your own 2D slices", worked example)."""

import collections
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from configs import base
from genjax.data import builders
from genjax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("test", "train", "train_mixed", "validation")


def _phantom(data_dir):
  data = base.get_base_config("smoke").data
  data.data_dir = data_dir
  return data


def _slice_folder(data_dir, manual_dir):
  data = base.get_base_config("smoke").data
  data.dataset = "slice_folder"
  data.builder_config = "custom"
  data.data_dir = str(data_dir)
  data.manual_dir = str(manual_dir)
  return data


def _examples(data_config, split):
  return list(tfds.as_numpy(builders.load_split(data_config, split)))


@pytest.fixture(scope="module")
def exported(phantom_data_dir, tmp_path_factory):
  """The tiny phantom exported by the command line, every split."""
  out = tmp_path_factory.mktemp("slices")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.export_slices",
       "--config=configs/ddpm.py:smoke", f"--out={out}",
       f"--config.data.data_dir={phantom_data_dir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return out, result.stdout


def test_every_split_is_written_as_pngs(exported, phantom_data_dir):
  out, stdout = exported
  assert sorted(os.listdir(out)) == list(SPLITS)
  for split in SPLITS:
    source = _examples(_phantom(phantom_data_dir), split)
    assert f"{split}: {len(source)} slices" in stdout
    names = os.listdir(out / split)
    images = [n for n in names if not n.endswith(("_mask.png", "_brain.png"))]
    masks = [n for n in names if n.endswith("_mask.png")]
    assert len(images) == len(source)
    assert len(masks) == sum(int(ex["label"]) for ex in source)
    first = source[0]
    stem = f"{first['subject'].decode()}_slice_{int(first['slice']):03d}"
    with Image.open(out / split / f"{stem}.png") as png:
      assert png.mode == "I;16"  # 16-bit grayscale.


def test_slice_folder_reads_back_the_phantom(exported, phantom_data_dir,
                                             tmp_path):
  out, _ = exported
  source_config = _phantom(phantom_data_dir)
  back_config = _slice_folder(tmp_path / "tfds", out)
  builder = builders.prepare(back_config)
  assert sorted(builder.info.splits.keys()) == sorted(SPLITS)
  for split in SPLITS:
    source = _examples(source_config, split)
    back = _examples(back_config, split)
    by_subject = lambda exs: collections.Counter(
        ex["subject"] for ex in exs)
    assert by_subject(back) == by_subject(source), split
    assert [(ex["subject"], int(ex["slice"])) for ex in back] == [
        (ex["subject"], int(ex["slice"])) for ex in source], split
    for old, new in zip(source, back):
      for key in ("mask", "brain", "label"):
        np.testing.assert_array_equal(new[key], old[key])
      # 16-bit PNG: the subject's brain maximum maps to 65535, rounded.
      scale = 65535.0 / old["percentiles"][-1]
      np.testing.assert_array_equal(
          new["image"], np.clip(np.round(old["image"] * scale), 0, 65535))

  # What the models see (per-subject percentile normalisation to [-1, 1])
  # differs by the rounding only.
  def normalised(config, split):
    ds = pipeline.preprocess(builders.load_split(config, split), config)
    return [ex["image"] for ex in tfds.as_numpy(ds)]
  for old, new in zip(normalised(source_config, "test"),
                      normalised(back_config, "test")):
    np.testing.assert_allclose(new, old, atol=2e-3)
