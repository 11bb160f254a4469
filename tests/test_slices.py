"""Tests of 2D slice folders: real PNG/TIFF/NPY files written to tmp_path,
read by genjax.data.slices, built by the slice_folder TFDS builder and read
back through builders.load_split and pipeline.eval_batches."""

import collections
import hashlib
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds
import tifffile

from configs import base
from genjax.data import builders
from genjax.data import pipeline
from genjax.data import slices

SliceError = slices.SliceError


# --- Helpers ------------------------------------------------------------------


def _data_config(builder_config, data_dir, manual_dir, pattern=None):
  data = base.get_base_config("smoke").data
  data.dataset = "slice_folder"
  data.builder_config = builder_config
  data.data_dir = str(data_dir)
  data.manual_dir = str(manual_dir)
  if pattern is not None:
    data.slice_pattern = pattern
  return data


def _examples(data_config, split):
  return list(tfds.as_numpy(builders.load_split(data_config, split)))


def _brain_slice(rng, shape, high=255, dtype=np.uint8):
  """A slice with a zero background border and a positive 'brain' inside."""
  image = np.zeros(shape, dtype)
  image[2:-2, 3:-2] = rng.integers(1, high, (shape[0] - 4, shape[1] - 5))
  return image


def _save(path, array):
  """Writes `array` as PNG (Pillow), TIFF (tifffile) or NPY by extension."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".png":
    Image.fromarray(array).save(path)
  elif path.suffix in (".tif", ".tiff"):
    rgb = array.ndim == 3 and array.shape[-1] in (3, 4)
    tifffile.imwrite(path, array, photometric="rgb" if rgb else "minisblack")
  else:
    np.save(path, array)
  return path


# --- Names --------------------------------------------------------------------


@pytest.mark.parametrize("stem, subject, index", [
    ("IXI002_slice_045", "IXI002", 45),
    ("IXI002-Guys-0828_slice_045", "IXI002-Guys-0828", 45),
    ("TCGA_CS_4941_19960909_12", "TCGA_CS_4941_19960909", 12),
    ("sub-01_slice7", "sub-01", 7),
    ("sub-01-slice-7", "sub-01", 7),
    ("phantom-tiny-train-0003_slice_012", "phantom-tiny-train-0003", 12),
    ("a_b_3", "a_b", 3),
])
def test_default_pattern_parses_names(stem, subject, index):
  assert slices.parse_name(stem, None) == (subject, index)


def test_custom_patterns_and_bad_names():
  pattern = r"(?P<slice>\d+)_(?P<subject>\w+)"
  assert slices.parse_name("017_case4", pattern) == ("case4", 17)
  # No slice group: one slice per subject, index 0.
  assert slices.parse_name("IXI002-Guys-0828-T1",
                           slices.ONE_SLICE_PATTERN) == (
                               "IXI002-Guys-0828-T1", 0)
  with pytest.raises(SliceError, match=r"IXI002\.png: the file name 'IXI002' "
                     "does not match"):
    slices.parse_name("IXI002", None, "data/IXI002.png")
  with pytest.raises(SliceError, match="no named group 'subject'"):
    slices.compile_pattern(r"(?P<slice>\d+)")
  with pytest.raises(SliceError, match="not a valid regular expression"):
    slices.compile_pattern(r"(?P<subject>")
  with pytest.raises(SliceError, match="non-negative integer"):
    slices.parse_name("a_x", r"(?P<subject>a)_(?P<slice>.)")
  assert slices.split_extension("x/IXI.PNG") == ("IXI", ".png")
  assert slices.split_extension("a.nii.gz") is None


# --- Reading images and masks -------------------------------------------------


def test_read_grayscale_png_tiff_npy_exactly(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
      "u8.png": rng.integers(0, 256, (5, 7), dtype=np.uint8),
      "u16.png": rng.integers(0, 65536, (5, 7), dtype=np.uint16),
      "u8.tif": rng.integers(0, 256, (5, 7), dtype=np.uint8),
      "u16.tiff": rng.integers(0, 65536, (5, 7), dtype=np.uint16),
      "f32.tif": rng.normal(size=(5, 7)).astype(np.float32),
      "f64.npy": rng.normal(size=(5, 7)),
      "i16.npy": rng.integers(-300, 300, (5, 7), dtype=np.int16),
      "hw1.npy": rng.normal(size=(5, 7, 1)).astype(np.float32),
  }
  for name, array in arrays.items():
    image, note = slices.read_image(_save(tmp_path / name, array))
    assert note is None and image.dtype == np.float32, name
    np.testing.assert_array_equal(
        image, array.reshape(5, 7).astype(np.float32), err_msg=name)
  bilevel = tmp_path / "bits.png"
  Image.fromarray(arrays["u8.png"] > 128).save(bilevel)  # Mode '1'.
  np.testing.assert_array_equal(slices.read_image(bilevel)[0],
                                arrays["u8.png"] > 128)


def test_read_colour_images_collapse_to_one_channel(tmp_path):
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
  luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  image, note = slices.read_image(_save(tmp_path / "rgb.png", rgb))
  np.testing.assert_allclose(image, luma, rtol=1e-6)
  assert "luminance" in note
  # Pillow's own conversion (integer-rounded luma) agrees to rounding.
  pil_gray = np.asarray(Image.open(tmp_path / "rgb.png").convert("L"))
  assert np.abs(image - pil_gray).max() <= 1.0
  # Grayscale saved as RGB(A): the channel itself, exactly; alpha ignored.
  gray = rng.integers(0, 256, (6, 4), dtype=np.uint8)
  rgba = np.stack([gray, gray, gray, rng.integers(0, 256, (6, 4),
                                                  dtype=np.uint8)], -1)
  for name in ("rgba.png", "rgba.tif"):
    image, note = slices.read_image(_save(tmp_path / name, rgba))
    np.testing.assert_array_equal(image, gray)
    assert "equal channels, one kept" in note and "alpha ignored" in note
  # A named channel (Kaggle LGG reads FLAIR, channel 1).
  image, note = slices.read_image(_save(tmp_path / "rgb.tif", rgb), channel=1)
  np.testing.assert_array_equal(image, rgb[..., 1])
  assert note == "RGB: channel 1 used"
  # Palette PNG: its colours, collapsed.
  palette = Image.fromarray(gray).convert("P")
  palette.save(tmp_path / "palette.png")
  expected = np.asarray(palette.convert("L"))
  np.testing.assert_array_equal(
      slices.read_image(tmp_path / "palette.png")[0], expected)


def test_read_mask_binarises_and_checks_size(tmp_path):
  mask = np.zeros((5, 7), np.uint8)
  mask[1:3, 2:5] = 255
  expected = (mask > 0).astype(np.uint8)
  for name, array in (("m.png", mask), ("m.tif", mask),
                      ("m.npy", mask.astype(np.float32) / 255 * 0.3),
                      ("m_bool.npy", mask > 0)):
    got = slices.read_mask(_save(tmp_path / name, array), (5, 7))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected, err_msg=name)
  # Colour mask: lesion where any channel > 0 (here only blue).
  colour = np.zeros((5, 7, 3), np.uint8)
  colour[..., 2] = mask
  np.testing.assert_array_equal(
      slices.read_mask(_save(tmp_path / "c.png", colour), (5, 7)), expected)
  # Palette mask: the index is the class, whatever its colour.
  indices = Image.new("P", (7, 5))
  indices.putdata(expected.ravel().tolist())
  indices.putpalette([0, 0, 0] * 256)  # Every index black.
  indices.save(tmp_path / "p.png")
  np.testing.assert_array_equal(slices.read_mask(tmp_path / "p.png", (5, 7)),
                                expected)
  with pytest.raises(SliceError, match=r"m\.png: mask size 5x7 .*differs "
                     r"from the size 6x7 of img\.png"):
    slices.read_mask(tmp_path / "m.png", (6, 7), "img.png")


# --- Listing folders and pairing masks ----------------------------------------


def _touch_slices(folder, names, array=None):
  array = np.ones((4, 4), np.uint8) if array is None else array
  for name in names:
    _save(folder / name, array)


def test_list_folder_suffix_convention(tmp_path):
  _touch_slices(tmp_path, ["b_slice_2.png", "b_slice_1.tif",
                           "b_slice_1_mask.png", "b_slice_2_brain.npy",
                           "p1/a_7.npy", "p1/a_7_mask.npy"])
  (tmp_path / "notes.txt").write_text("ignored with a warning")
  (tmp_path / ".DS_Store").write_text("hidden: ignored")
  warnings = []
  found = slices.list_folder(tmp_path, logger=warnings.append)
  got = [(s.subject, s.index, s.image.name, s.mask and s.mask.name,
          s.brain and s.brain.name) for s in found]
  assert got == [
      ("a", 7, "a_7.npy", "a_7_mask.npy", None),
      ("b", 1, "b_slice_1.tif", "b_slice_1_mask.png", None),
      ("b", 2, "b_slice_2.png", None, "b_slice_2_brain.npy"),
  ]
  assert len(warnings) == 1 and "notes.txt" in warnings[0]
  assert list(slices.group_subjects(found)) == ["a", "b"]


@pytest.mark.parametrize("with_images_folder", [False, True])
def test_list_folder_parallel_masks_folder(tmp_path, with_images_folder):
  images = tmp_path / "images" if with_images_folder else tmp_path
  _touch_slices(images, ["s1_3.png", "s1_4.png"])
  _touch_slices(tmp_path / "masks", ["s1_3.png", "s1_4.npy"])
  found = slices.list_folder(tmp_path)
  assert [(s.index, s.mask.relative_to(tmp_path).as_posix())
          for s in found] == [(3, "masks/s1_3.png"), (4, "masks/s1_4.npy")]
  (tmp_path / "masks" / "s1_4.npy").unlink()
  with pytest.raises(SliceError, match=r"s1_4.png: no lesion mask .*masks/"
                     r"s1_4\.\*"):
    slices.list_folder(tmp_path)
  _touch_slices(tmp_path / "masks", ["s1_4.png", "s1_5.png"])
  with pytest.raises(SliceError, match="s1_5.png: a mask with no matching"):
    slices.list_folder(tmp_path)


# --- The slice_folder builder: 'custom' ---------------------------------------


@pytest.fixture(scope="module")
def custom_slices(tmp_path_factory):
  """A custom slice folder of every file type, built once.

  Returns:
    (data config, {split: {subject: {k: (image, mask, brain)}}}) with the
    arrays as genjax must read them back.
  """
  root = tmp_path_factory.mktemp("slices")
  manual = root / "manual"
  rng = np.random.default_rng(3)
  expected = collections.defaultdict(dict)

  def add(split, subject, k, image, mask=None, brain=None):
    expected[split].setdefault(subject, {})[k] = (
        image, np.zeros(image.shape, np.uint8) if mask is None else mask,
        (image > 0).astype(np.uint8) if brain is None else brain)

  # train: healthy only (no masks at all); 8-bit PNG, 16-bit PNG, RGB PNG.
  train = manual / "train"
  for k in (10, 11, 12):
    image = _brain_slice(rng, (32, 32))
    _save(train / f"IXI001_slice_{k:03d}.png", image)
    add("train", "IXI001", k, image.astype(np.float32))
  for k in (5, 6):
    image = _brain_slice(rng, (20, 26), 65535, np.uint16)
    _save(train / "IXI002" / f"IXI002_slice_{k:03d}.png", image)
    add("train", "IXI002", k, image.astype(np.float32))
  rgb = np.repeat(_brain_slice(rng, (18, 18))[..., None], 3, -1)
  rgb[..., 0] = np.where(rgb[..., 0] > 0, 255 - rgb[..., 0], 0)
  _save(train / "IXI003_slice_1.png", rgb)
  luma = (rgb.astype(np.float64) @ np.array([.299, .587, .114])).astype(
      np.float32)
  add("train", "IXI003", 1, luma)
  # test: TIFF 16-bit with _mask.tif (one lesion slice), and one subject of
  # a single 8-bit TIFF slice with a brain mask.
  test = manual / "test"
  for k in (1, 2):
    image = _brain_slice(rng, (24, 28), 4095, np.uint16)
    mask = np.zeros(image.shape, np.uint8)
    if k == 2:
      mask[5:9, 6:12] = 255
    _save(test / f"TCGA_AB_0001_{k}.tif", image)
    _save(test / f"TCGA_AB_0001_{k}_mask.tif", mask)
    add("test", "TCGA_AB_0001", k, image.astype(np.float32),
        (mask > 0).astype(np.uint8))
  image = _brain_slice(rng, (32, 32))
  brain = np.zeros(image.shape, np.uint8)
  brain[4:20, 5:25] = 1
  _save(test / "ATLAS7_slice_50.tif", image)
  _save(test / "ATLAS7_slice_50_brain.png", brain * 255)
  add("test", "ATLAS7", 50, image.astype(np.float32), None, brain)
  # validation: float NPY with an images/ + masks/ folder.
  for k in (0, 1):
    image = np.where(_brain_slice(rng, (12, 16)) > 0,
                     rng.uniform(0.5, 2.0, (12, 16)), 0.0).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[3:5, 4:6] = k
    _save(manual / "validation" / "images" / f"npy01_{k}.npy", image)
    _save(manual / "validation" / "masks" / f"npy01_{k}.png", mask * 255)
    add("validation", "npy01", k, image, mask)
  config = _data_config("custom", root / "tfds", manual)
  builders.prepare(config)
  return config, dict(expected)


def test_custom_slices_read_back_exactly(custom_slices):
  config, expected = custom_slices
  builder = builders.get_builder(config)
  assert set(builder.info.splits.keys()) == set(expected)
  for split, subjects in expected.items():
    examples = _examples(config, split)
    # Stored subject by subject (sorted), slices in index order.
    keys = [(ex["subject"].decode(), int(ex["slice"])) for ex in examples]
    assert keys == sorted((s, k) for s in subjects for k in subjects[s])
    for ex in examples:
      subject = ex["subject"].decode()
      image, mask, brain = subjects[subject][int(ex["slice"])]
      assert ex["image"].dtype == np.float32
      np.testing.assert_array_equal(ex["image"][..., 0], image)
      np.testing.assert_array_equal(ex["mask"][..., 0], mask)
      np.testing.assert_array_equal(ex["brain"][..., 0], brain)
      assert ex["label"] == int(mask.any())
      np.testing.assert_array_equal(ex["affine"], np.zeros((4, 4)))
      # Percentiles over the brain pixels of all the subject's slices.
      pooled = np.concatenate([im[br > 0] for im, _, br in
                               subjects[subject].values()])
      np.testing.assert_allclose(
          ex["percentiles"], np.percentile(pooled, builders.PERCENTILES),
          rtol=1e-6)
  assert sum(ex["label"] for ex in _examples(config, "test")) == 1
  assert builder.info.metadata["subjects"]["train"] == [
      "IXI001", "IXI002", "IXI003"]


def test_custom_slices_through_eval_batches(custom_slices):
  config, expected = custom_slices
  config = _data_config(config.builder_config, config.data_dir,
                        config.manual_dir)
  config.min_brain_fraction = 0.0
  i_low, i_high = pipeline.percentile_indices(config.clip_percentiles)
  seen = []
  for batch in pipeline.eval_batches(config, "train", batch_size=4):
    for i in np.flatnonzero(batch["valid"]):
      subject, k = str(batch["subject"][i]), int(batch["slice"][i])
      seen.append((subject, k))
      image, mask, _ = expected["train"][subject][k]
      assert batch["label"][i] == int(mask.any())
      if subject != "IXI001":
        continue  # Resized to 32 px: compared on the 32x32 subject only.
      pooled = np.concatenate([im[im > 0] for im, _, _ in
                               expected["train"][subject].values()])
      lo, hi = np.percentile(pooled, np.array(builders.PERCENTILES)[
          [i_low, i_high]])
      reference = np.where(image > 0,
                           2 * np.clip((image - lo) / (hi - lo), 0, 1) - 1, -1)
      np.testing.assert_allclose(batch["image"][i, ..., 0], reference,
                                 atol=1e-5)
      np.testing.assert_array_equal(batch["brain"][i, ..., 0], image > 0)
  assert seen == [("IXI001", 10), ("IXI001", 11), ("IXI001", 12),
                  ("IXI002", 5), ("IXI002", 6), ("IXI003", 1)]
  test = list(pipeline.eval_batches(config, "test", batch_size=4))
  masks = {(str(s), int(k)): m for b in test for s, k, m, v in zip(
      b["subject"], b["slice"], b["mask"], b["valid"]) if v}
  # TCGA's 24x28 slices are resized to 32 px: its lesion survives (nearest).
  assert masks[("TCGA_AB_0001", 2)].any()
  assert not masks[("TCGA_AB_0001", 1)].any()


def test_custom_slices_changed_pattern_or_files_detected(custom_slices,
                                                         tmp_path):
  config, _ = custom_slices
  other = _data_config(config.builder_config, config.data_dir,
                       config.manual_dir, pattern=r"(?P<subject>.+)")
  with pytest.raises(ValueError, match="slice_pattern.*changed.*Delete"):
    builders.load_split(other, "train")
  manual = tmp_path / "manual"
  _save(manual / "train" / "x_1.png", np.ones((4, 4), np.uint8))
  other = _data_config(config.builder_config, config.data_dir, manual)
  with pytest.raises(ValueError, match="changed.*Delete"):
    builders.load_split(other, "train")


# --- The slice_folder builder: 'kaggle_lgg' -----------------------------------


def _expected_kaggle_split(patient):
  """The documented split rule, written out: sha256 bucket of the id."""
  bucket = int(hashlib.sha256(patient.encode()).hexdigest()[:8], 16) % 100
  return ("validation" if bucket < 10 else "test" if bucket < 30
          else "train")


@pytest.fixture(scope="module")
def kaggle_slices(tmp_path_factory):
  """A Kaggle LGG-like kaggle_3m folder with a patient in every split."""
  root = tmp_path_factory.mktemp("kaggle")
  kaggle = root / "manual" / "kaggle_3m"
  rng = np.random.default_rng(5)
  patients, wanted = {}, {"train": 2, "validation": 1, "test": 1}
  for i in range(200):
    patient = f"TCGA_XY_{i:04d}_20000101"
    split = _expected_kaggle_split(patient)
    if wanted[split]:
      wanted[split] -= 1
      patients[patient] = split
    if not any(wanted.values()):
      break
  expected = {}
  for patient in patients:
    for n in (1, 2, 3):
      rgb = np.stack([_brain_slice(rng, (16, 16)) for _ in range(3)], -1)
      mask = np.zeros((16, 16), np.uint8)
      if n == 2:
        mask[4:8, 4:8] = 255
      _save(kaggle / patient / f"{patient}_{n}.tif", rgb)
      _save(kaggle / patient / f"{patient}_{n}_mask.tif", mask)
      expected[patient, n] = (rgb[..., 1].astype(np.float32), mask > 0)
  (kaggle / "data.csv").write_text("Patient,death01\n")
  config = _data_config("kaggle_lgg", root / "tfds", root / "manual")
  builders.prepare(config)
  return config, patients, expected


def test_kaggle_splits_by_patient_hash(kaggle_slices):
  config, patients, expected = kaggle_slices
  by_split = {split: _examples(config, split) for split in builders.SPLITS}
  subjects = {split: {ex["subject"].decode() for ex in examples}
              for split, examples in by_split.items()}
  train = {p for p, s in patients.items() if s == "train"}
  assert subjects["train"] == subjects["train_mixed"] == train
  for split in ("validation", "test"):
    assert subjects[split] == {p for p, s in patients.items() if s == split}
  for a in ("train", "validation", "test"):
    for b in ("train", "validation", "test"):
      assert a == b or not subjects[a] & subjects[b]
  # train and validation keep the lesion-free slices only.
  assert [int(ex["slice"]) for ex in by_split["train"]] == [1, 3, 1, 3]
  assert [int(ex["slice"]) for ex in by_split["validation"]] == [1, 3]
  assert [int(ex["slice"]) for ex in by_split["test"]] == [1, 2, 3]
  assert [int(ex["label"]) for ex in by_split["train_mixed"]] == [0, 1, 0] * 2
  for split, examples in by_split.items():
    for ex in examples:
      image, mask = expected[ex["subject"].decode(), int(ex["slice"])]
      np.testing.assert_array_equal(ex["image"][..., 0], image)  # FLAIR.
      np.testing.assert_array_equal(ex["mask"][..., 0], mask)
  for patient in train:
    pooled = np.concatenate([expected[patient, n][0][expected[patient, n][0]
                                                     > 0] for n in (1, 2, 3)])
    ex = next(ex for ex in by_split["train"]
              if ex["subject"].decode() == patient)
    np.testing.assert_allclose(  # All 3 slices, not only the kept ones.
        ex["percentiles"], np.percentile(pooled, builders.PERCENTILES),
        rtol=1e-6)


# --- Export and round trip ----------------------------------------------------


@pytest.mark.parametrize("fmt", ["npy", "png"])
def test_phantom_exported_as_slices_round_trips(phantom_data_dir, tmp_path,
                                                fmt):
  phantom_config = base.get_base_config("smoke").data
  phantom_config.data_dir = phantom_data_dir
  manual = tmp_path / "manual"
  originals = {}
  for split in ("train", "test"):
    examples = _examples(phantom_config, split)
    assert slices.export_examples(examples, manual / split, fmt) == len(
        examples)
    originals[split] = examples
  config = _data_config("custom", tmp_path / "tfds", manual)
  for split, examples in originals.items():
    back = _examples(config, split)
    assert len(back) == len(examples)
    for old, new in zip(examples, back):
      assert new["subject"] == old["subject"] and new["slice"] == old["slice"]
      for key in ("mask", "brain", "label"):
        np.testing.assert_array_equal(new[key], old[key])
      if fmt == "npy":
        np.testing.assert_array_equal(new["image"], old["image"])
        np.testing.assert_array_equal(new["percentiles"], old["percentiles"])
      else:  # 16-bit: the subject's brain maximum maps to 65535.
        scale = 65535.0 / old["percentiles"][-1]
        np.testing.assert_array_equal(
            new["image"], np.clip(np.round(old["image"] * scale), 0, 65535))
