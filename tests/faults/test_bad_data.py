"""Fault class: bad data. Corrupt, truncated, 4D, wrong-shape and NaN
NIfTI files; bad slice files and mismatched masks; empty or unknown folders;
a reused phantom seed; a dataset that is not built and cannot be (no or a
missing manual_dir, a data_dir that cannot be written). Each is an error
naming the file or folder and what to do."""

import dataclasses
import gzip
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image
import pytest
import tifffile

from configs import base
from genjax.data import builders
from genjax.data import nifti
from genjax.data import phantom
from genjax.data import slices
from tests.test_builders import _data_config as _volume_data_config
from tests.test_builders import _save as _volume_save
from tests.test_builders import _subject
from tests.test_nifti import _save as _nifti_save
from tests.test_nifti import _volume
from tests.test_nifti import RAS_AFFINE
from tests.test_slices import _brain_slice
from tests.test_slices import _data_config as _slice_data_config
from tests.test_slices import _save as _slice_save
from tests.test_slices import _touch_slices
from tests.test_slices import SliceError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


# --- NIfTI files (genjax.data.nifti) ------------------------------------------


@pytest.mark.parametrize("shape,match", [
    ((4, 5, 6, 3), "3 volumes"),
    ((4, 5), "2D"),
])
def test_wrong_ndim_rejected(tmp_path, shape, match):
  path = _nifti_save(tmp_path / "bad.nii.gz", _volume(shape))
  with pytest.raises(nifti.NiftiError, match=match) as e:
    nifti.load_volume(path)
  assert "bad.nii.gz" in str(e.value)


def test_truncated_gz_rejected_naming_file(tmp_path):
  path = _nifti_save(tmp_path / "cut.nii.gz", _volume((20, 20, 20)))
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])  # Header intact, data cut short.
  with pytest.raises(nifti.NiftiError, match="truncated") as e:
    nifti.load_volume(path)
  assert str(path) in str(e.value)


def test_truncated_nii_rejected(tmp_path):
  path = _nifti_save(tmp_path / "cut.nii", _volume((20, 20, 20)))
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(nifti.NiftiError, match="cut.nii"):
    nifti.load_volume(path)


def test_missing_and_non_nifti_rejected(tmp_path):
  with pytest.raises(nifti.NiftiError, match="no such file"):
    nifti.load_volume(tmp_path / "missing.nii.gz")
  junk = tmp_path / "junk.nii.gz"
  junk.write_bytes(gzip.compress(b"not a nifti file" * 40))
  with pytest.raises(nifti.NiftiError, match="junk.nii.gz"):
    nifti.load_volume(junk)
  text = tmp_path / "text.nii"
  text.write_text("hello")
  with pytest.raises(nifti.NiftiError, match="text.nii"):
    nifti.load_volume(text)


def test_nan_rejected_with_count(tmp_path):
  data = _volume()
  data[0, 0, :3] = np.nan
  data[1, 1, 1] = np.inf
  with pytest.raises(nifti.NiftiError, match="4 of 210 voxels"):
    nifti.load_volume(_nifti_save(tmp_path / "nan.nii.gz", data))


def test_mask_shape_and_affine_mismatch_rejected(tmp_path):
  image_path = _nifti_save(tmp_path / "im.nii.gz", _volume())
  image, affine = nifti.load_volume(image_path)
  small = _nifti_save(tmp_path / "small_mask.nii.gz", np.zeros((5, 6, 6), np.uint8))
  with pytest.raises(nifti.NiftiError, match=r"\(5, 6, 6\)") as e:
    nifti.load_mask(small, image.shape, affine, image_path=image_path)
  assert "small_mask.nii.gz" in str(e.value) and "im.nii.gz" in str(e.value)
  shifted = RAS_AFFINE.copy()
  shifted[0, 3] += 1.0
  moved = _nifti_save(tmp_path / "moved_mask.nii.gz", np.zeros((5, 6, 7), np.uint8),
                shifted)
  with pytest.raises(nifti.NiftiError, match="affine") as e:
    nifti.load_mask(moved, image.shape, affine, image_path=image_path)
  assert "moved_mask.nii.gz" in str(e.value)


# --- NIfTI folders (nifti_folder) --------------------------------------------


def _prepare_custom(tmp_path, manual):
  builders.prepare(_volume_data_config("nifti_folder", "custom", tmp_path / "tfds",
                                manual))


def test_empty_split_folder_rejected(tmp_path):
  (tmp_path / "manual" / "train").mkdir(parents=True)
  with pytest.raises(nifti.NiftiError, match="train: no images"):
    _prepare_custom(tmp_path, tmp_path / "manual")


def test_missing_or_unset_manual_dir_rejected(tmp_path):
  with pytest.raises(nifti.NiftiError, match="does not exist"):
    _prepare_custom(tmp_path, tmp_path / "nowhere")
  with pytest.raises(ValueError, match="manual_dir is not set"):
    _prepare_custom(tmp_path, None)


def test_layout_errors(tmp_path):
  manual = tmp_path / "manual"
  _volume_save(manual / "test" / "a.nii.gz", _subject(0)[0])
  _volume_save(manual / "test" / "b_mask.nii.gz", _subject(0)[1])
  with pytest.raises(nifti.NiftiError, match="b_mask.nii.gz: a mask with no"):
    builders.find_subjects("custom", manual)
  (manual / "test" / "b_mask.nii.gz").unlink()
  _volume_save(manual / "train" / "a.nii", _subject(0)[0])
  with pytest.raises(nifti.NiftiError, match="subject 'a'"):
    builders.find_subjects("custom", manual)
  (manual / "train" / "a.nii").unlink()
  (manual / "val").mkdir()
  with pytest.raises(nifti.NiftiError, match="val: unknown split folder"):
    builders.find_subjects("custom", manual)


def test_bad_volume_fails_build_naming_file(tmp_path):
  manual = tmp_path / "manual"
  image = _subject(0)[0]
  image[1, 1, 1] = np.nan
  _volume_save(manual / "train" / "bad.nii.gz", image)
  with pytest.raises(nifti.NiftiError, match="bad.nii.gz: 1 of"):
    _prepare_custom(tmp_path, manual)


def test_unknown_dataset_config_rejected(tmp_path):
  with pytest.raises(ValueError, match="'brain_phantom', 'nifti_folder'"):
    builders.get_builder(_volume_data_config("mnist", "custom", tmp_path))
  with pytest.raises(ValueError, match="'custom', 'ixi', 'atlas'"):
    builders.get_builder(_volume_data_config("nifti_folder", "tiny", tmp_path))


# --- Slice files and folders (slice_folder) ---------------------------------


def _raw_png(path, array, colour_type, depth):
  """Writes a PNG byte by byte (Pillow cannot write 16-bit colour PNGs)."""
  dtype = ">u2" if depth == 16 else "u1"
  rows = b"".join(b"\x00" + row.astype(dtype).tobytes() for row in array)

  def chunk(kind, data):
    crc = zlib.crc32(kind + data) & 0xffffffff
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

  header = struct.pack(">IIBBBBB", array.shape[1], array.shape[0], depth,
                       colour_type, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                   + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
  return path


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return path


def test_bad_files_are_errors_naming_the_file(tmp_path):
  rng = np.random.default_rng(2)
  u16 = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
  for name in ("t.png", "t.tif", "t.npy"):
    path = _truncate(_slice_save(tmp_path / name, u16))
    with pytest.raises(SliceError, match=re.escape(str(path)) +
                       ": cannot read it"):
      slices.read_image(path)
  garbage = tmp_path / "garbage.png"
  garbage.write_bytes(b"not an image at all")
  with pytest.raises(SliceError, match="garbage.png: cannot read it"):
    slices.read_image(garbage)
  _raw_png(tmp_path / "rgb16.png",
           rng.integers(0, 65536, (4, 5, 3)), colour_type=2, depth=16)
  with pytest.raises(SliceError, match="rgb16.png: a 16-bit colour PNG"):
    slices.read_image(tmp_path / "rgb16.png")
  Image.fromarray(u16.astype(np.uint8)).save(tmp_path / "jpeg.png",
                                             format="JPEG")
  with pytest.raises(SliceError, match="jpeg.png: is a JPEG file"):
    slices.read_image(tmp_path / "jpeg.png")
  tifffile.imwrite(tmp_path / "pages.tif",
                   rng.integers(0, 255, (4, 8, 8), dtype=np.uint8),
                   photometric="minisblack")
  with pytest.raises(SliceError, match="pages.tif: a TIFF with 4 pages"):
    slices.read_image(tmp_path / "pages.tif")
  np.save(tmp_path / "vol.npy", np.zeros((4, 8, 8)))
  with pytest.raises(SliceError, match=r"vol.npy: holds an array of shape "
                     r"\(4, 8, 8\)"):
    slices.read_image(tmp_path / "vol.npy")
  np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
  with pytest.raises(SliceError, match="obj.npy: cannot read it"):
    slices.read_image(tmp_path / "obj.npy")
  nan = np.ones((4, 4), np.float32)
  nan[1, 1] = np.nan
  with pytest.raises(SliceError, match="nan.npy: 1 of 16 values are NaN"):
    slices.read_image(_slice_save(tmp_path / "nan.npy", nan))
  with pytest.raises(SliceError, match="missing.png: no such file"):
    slices.read_image(tmp_path / "missing.png")


def test_list_folder_layout_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  _touch_slices(tmp_path / "empty", [])
  (tmp_path / "empty" / "x.jpg").write_bytes(b"")
  with pytest.raises(SliceError, match=r"empty: no slice images .*1 \.jpg"):
    slices.list_folder(tmp_path / "empty")
  cases = {
      "orphan_mask": (["a_1.png", "b_1_mask.png"],
                      r"b_1_mask.png: a mask with no matching image"),
      "orphan_brain": (["a_1.png", "b_1_brain.png"],
                       r"b_1_brain.png: a brain mask with no matching"),
      "two_ext": (["a_1.png", "a_1.npy"], r"a_1.npy and .*a_1.png|a_1.png "
                  r"and .*a_1.npy"),
      "duplicate": (["a_1.png", "a_slice_01.png"],
                    r"both are slice 1 of subject 'a'"),
      "unparseable": (["a_1.png", "IXI002.png"],
                      r"IXI002.png: the file name 'IXI002' does not match"),
  }
  for name, (files, message) in cases.items():
    _touch_slices(tmp_path / name, files)
    with pytest.raises(SliceError, match=message):
      slices.list_folder(tmp_path / name)
  _touch_slices(tmp_path / "required", ["a_1.png"])
  with pytest.raises(SliceError, match=r"a_1.png: no lesion mask .*a_1_mask"):
    slices.list_folder(tmp_path / "required", mask_required=True)
  _touch_slices(tmp_path / "mixed",
                ["a_1.png", "a_2_mask.png", "masks/a_1.png"])
  with pytest.raises(SliceError, match="a_2_mask.png: a '_mask' file, but"):
    slices.list_folder(tmp_path / "mixed")
  _touch_slices(tmp_path / "stray", ["images/a_1.png", "masks/a_1.png",
                                     "a_2.png"])
  with pytest.raises(SliceError, match="a_2.png: a slice file outside"):
    slices.list_folder(tmp_path / "stray")


def test_read_subject_checks_sizes_and_brain(tmp_path):
  _slice_save(tmp_path / "s_1.png", np.ones((4, 5), np.uint8))
  _slice_save(tmp_path / "s_2.png", np.ones((5, 4), np.uint8))
  found = slices.list_folder(tmp_path)
  with pytest.raises(SliceError, match=r"s_2.png: size 5x4 .*differs from "
                     r"4x5 of .*s_1.png.*subject 's'"):
    slices.read_subject(found)
  _slice_save(tmp_path / "s_2.png", np.zeros((4, 5), np.uint8))
  _slice_save(tmp_path / "s_1.png", np.zeros((4, 5), np.uint8))
  with pytest.raises(SliceError, match="s_1.png: subject 's' has no brain"):
    slices.read_subject(slices.list_folder(tmp_path))
  _slice_save(tmp_path / "s_1_mask.png", np.zeros((3, 5), np.uint8))
  with pytest.raises(SliceError, match="s_1_mask.png: mask size 3x5"):
    slices.read_subject(slices.list_folder(tmp_path))


def test_custom_slice_layout_errors(tmp_path):
  manual = tmp_path / "manual"
  _slice_save(manual / "train" / "s1_1.png", np.ones((4, 4), np.uint8))
  _slice_save(manual / "test" / "s1_2.png", np.ones((4, 4), np.uint8))
  with pytest.raises(SliceError, match=r"s1_1.png \(split 'train'\) and "
                     r".*s1_2.png \(split 'test'\): both are subject 's1'"):
    builders.find_slice_subjects("custom", manual)
  (manual / "test" / "s1_2.png").unlink()
  with pytest.raises(SliceError, match="test: no slice images"):
    builders.find_slice_subjects("custom", manual)
  (manual / "test").rmdir()
  (manual / "val").mkdir()
  with pytest.raises(SliceError, match="val: unknown split folder"):
    builders.find_slice_subjects("custom", manual)
  (manual / "val").rmdir()
  _slice_save(manual / "loose_1.png", np.ones((4, 4), np.uint8))
  with pytest.raises(SliceError, match="loose_1.png: slices must be in split"):
    builders.find_slice_subjects("custom", manual)
  (tmp_path / "bare").mkdir()
  with pytest.raises(SliceError, match="bare: no split folders"):
    builders.find_slice_subjects("custom", tmp_path / "bare")
  with pytest.raises(SliceError, match="nowhere does not exist"):
    builders.find_slice_subjects("custom", tmp_path / "nowhere")


def test_bad_slice_fails_the_build_naming_the_file(tmp_path):
  manual = tmp_path / "manual"
  rng = np.random.default_rng(4)
  _slice_save(manual / "train" / "s1_1.png", _brain_slice(rng, (8, 8)))
  bad = _truncate(_slice_save(manual / "train" / "s1_2.png",
                        _brain_slice(rng, (8, 8))))
  config = _slice_data_config("custom", tmp_path / "tfds", manual)
  with pytest.raises(SliceError, match=re.escape(str(bad))):
    builders.prepare(config)
  _slice_save(bad, _brain_slice(rng, (8, 8)))
  _slice_save(manual / "train" / "s1_2_mask.png", np.zeros((8, 9), np.uint8))
  with pytest.raises(SliceError, match="s1_2_mask.png: mask size 8x9"):
    builders.prepare(config)
  config.slice_pattern = r"(?P<slice>\d+)"
  with pytest.raises(SliceError, match="no named group 'subject'"):
    builders.prepare(config)
  config = _slice_data_config("custom", tmp_path / "tfds2", manual)
  config.manual_dir = None
  with pytest.raises(ValueError, match="manual_dir is not set"):
    builders.prepare(config)


def test_kaggle_layout_errors(tmp_path):
  kaggle = tmp_path / "kaggle_3m"
  image = np.ones((4, 4, 3), np.uint8)
  _slice_save(kaggle / "TCGA_A" / "TCGA_A_1.tif", image)
  with pytest.raises(SliceError, match=r"TCGA_A_1.tif: no lesion mask"):
    builders.find_slice_subjects("kaggle_lgg", tmp_path)
  _slice_save(kaggle / "TCGA_A" / "TCGA_A_1_mask.tif", image[..., 0])
  _slice_save(kaggle / "TCGA_A" / "TCGA_B_2.tif", image)
  _slice_save(kaggle / "TCGA_A" / "TCGA_B_2_mask.tif", image[..., 0])
  with pytest.raises(SliceError, match=r"TCGA_B_2.tif: .*subject 'TCGA_B', "
                     r"but the file is in patient folder 'TCGA_A'"):
    builders.find_slice_subjects("kaggle_lgg", tmp_path)
  with pytest.raises(SliceError, match="no patient folders"):
    builders.find_slice_subjects("kaggle_lgg", kaggle / "TCGA_A")


# --- The phantom ------------------------------------------------------------


def test_duplicate_seed_is_rejected():
  plans = phantom.subject_plan(phantom.SPECS["tiny"])
  first = plans[0]
  clash = dataclasses.replace(plans[-1], seed=first.seed)
  with pytest.raises(ValueError) as error:
    phantom.check_unique_seeds(plans[:-1] + [clash])
  message = str(error.value)
  assert str(first.seed) in message
  assert first.subject_id in message and clash.subject_id in message


# --- A dataset that is not built and cannot be --------------------------------


@pytest.mark.parametrize("dataset,builder_config,layout,section", [
    ("nifti_folder", "custom", "<split>/<name>.nii.gz", "Your own NIfTI"),
    ("nifti_folder", "ixi", "brain-development.org/ixi-dataset",
     "Your own NIfTI"),
    ("nifti_folder", "atlas", "fcon_1000.projects.nitrc.org", "Your own NIfTI"),
    ("slice_folder", "custom", "<split>/<subject>_slice_<n>.png",
     "Your own 2D slices"),
    ("slice_folder", "kaggle_lgg", "kaggle.com/datasets/mateuszbuda",
     "Your own 2D slices"),
])
def test_missing_manual_dir_says_how_to_build(tmp_path, dataset,
                                              builder_config, layout, section):
  data = _volume_data_config(dataset, builder_config, tmp_path / "tfds")
  with pytest.raises(builders.DatasetError) as error:
    builders.prepare(data)  # manual_dir not set.
  message = str(error.value)
  assert "config.data.manual_dir is not set" in message
  assert str(tmp_path / "tfds" / dataset / builder_config) in message
  for part in (layout, "--config.data.manual_dir=", section, "README.md"):
    assert part in message, (part, message)

  data.manual_dir = str(tmp_path / "nowhere")
  with pytest.raises((nifti.NiftiError, slices.SliceError)) as error:
    builders.prepare(data)
  message = str(error.value)
  assert f"manual_dir {tmp_path / 'nowhere'}" in message
  assert "does not exist" in message
  for part in (layout, "--config.data.manual_dir=", section):
    assert part in message, (part, message)
  assert not (tmp_path / "tfds" / dataset).exists()


def test_phantom_in_a_data_dir_that_cannot_be_written(tmp_path):
  """The phantom builds itself on first use; where it cannot, it says so."""
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  data = base.get_base_config("smoke").data
  data.data_dir = str(blocker / "tfds")
  with pytest.raises(builders.DatasetError) as error:
    builders.prepare(data)
  message = str(error.value)
  assert f"brain_phantom/tiny is not built in {blocker / 'tfds'}" in message
  assert "cannot be built there" in message and "Not a directory" in message
  assert "--config.data.data_dir=" in message and "GENJAX_DATA_DIR" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_phantom_in_a_read_only_data_dir(tmp_path):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  read_only.chmod(0o555)
  data = base.get_base_config("smoke").data
  data.data_dir = str(read_only)
  try:
    with pytest.raises(builders.DatasetError, match="Permission denied"):
      builders.prepare(data)
  finally:
    read_only.chmod(0o755)


def test_unknown_split_lists_the_splits(phantom_data_dir):
  data = base.get_base_config("smoke").data
  data.data_dir = phantom_data_dir
  with pytest.raises(builders.DatasetError,
                     match="has no split 'tset'; it has 'test', 'train'"):
    builders.load_split(data, "tset")


def test_command_line_missing_dataset_is_one_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.main",
       "--config=configs/ddpm.py:smoke", f"--workdir={tmp_path / 'run'}",
       "--mode=data", f"--config.data.data_dir={tmp_path / 'tfds'}",
       "--config.data.dataset=slice_folder",
       "--config.data.builder_config=custom",
       f"--config.data.manual_dir={tmp_path / 'my_slices'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert (f"Data error: manual_dir {tmp_path / 'my_slices'} "
          "(config.data.manual_dir) does not exist") in result.stderr
  assert "Your own 2D slices" in result.stderr
  assert "Traceback" not in result.stderr
