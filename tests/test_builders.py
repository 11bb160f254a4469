"""Tests of the TFDS builders: real NIfTI files and the tiny phantom, built
into temporary data dirs and read back through tfds."""

import collections

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base
from genjax.data import builders
from genjax.data import nifti
from genjax.data import phantom

AFFINE = np.array([[2., 0., 0., -6.],
                   [0., 2., 0., -7.],
                   [0., 0., 3., -4.],
                   [0., 0., 0., 1.]])
SHAPE = (6, 7, 4)  # Not square: catches height/width mix-ups.


def _data_config(dataset, builder_config, data_dir, manual_dir=None):
  data = base.get_base_config("smoke").data
  data.dataset = dataset
  data.builder_config = builder_config
  data.data_dir = str(data_dir)
  data.manual_dir = None if manual_dir is None else str(manual_dir)
  return data


def _examples(data_config, split):
  return list(tfds.as_numpy(builders.load_split(data_config, split)))


def _save(path, data, affine=AFFINE):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(data, affine), str(path))


def _subject(seed, lesion=False):
  """A RAS volume (brain = a box, background 0) and its lesion mask."""
  rng = np.random.default_rng(seed)
  image = np.zeros(SHAPE, np.float32)
  image[1:5, 1:6, :] = rng.uniform(10., 100., (4, 5, SHAPE[2]))
  mask = np.zeros(SHAPE, np.uint8)
  if lesion:
    mask[2:4, 2:4, 1] = 1  # Only slice k=1 has a lesion.
  return image, mask


# --- Schema and the volume -> slices conversion ------------------------------


def test_slice_features_schema():
  features = builders.slice_features(5, 7)
  assert set(features.keys()) == {"image", "mask", "brain", "label",
                                   "subject", "slice", "percentiles", "affine"}
  assert features["image"].shape == (5, 7, 1)
  assert features["image"].np_dtype == np.float32
  assert features["mask"].np_dtype == np.uint8
  assert features["slice"].np_dtype == np.int32
  assert features["label"].names == ["healthy", "lesion"]
  assert features["percentiles"].shape == (len(builders.PERCENTILES),)


def test_volume_examples_orientation_keys_and_percentiles():
  image, mask = _subject(0, lesion=True)
  brain = image > 0
  examples = list(builders.volume_examples("s0", image, mask, brain, AFFINE))
  keys = [k for k, _ in examples]
  assert len(set(keys)) == SHAPE[2] == len(keys)
  for k, (_, ex) in enumerate(examples):
    assert ex["image"].shape == (SHAPE[1], SHAPE[0], 1)
    np.testing.assert_array_equal(ex["image"][..., 0],
                                  np.rot90(image[:, :, k]))
    assert ex["label"] == int(k == 1) and ex["slice"] == k
  # Anterior (high y) at the top, patient's right (high x) on the right.
  ramp = np.zeros((3, 3, 1), np.float32)
  ramp[2, 2, 0] = 1  # Right-anterior corner.
  (_, ex), = builders.volume_examples("r", ramp, None, np.ones_like(ramp),
                                      AFFINE)
  assert ex["image"][0, -1, 0] == 1
  np.testing.assert_allclose(
      examples[0][1]["percentiles"],
      np.percentile(image[brain], builders.PERCENTILES), rtol=1e-6)


def test_volume_examples_rejects_empty_brain():
  image = np.zeros(SHAPE, np.float32)
  with pytest.raises(nifti.NiftiError, match="s9.*empty"):
    list(builders.volume_examples("s9", image, None, image > 0, AFFINE))


# --- nifti_folder 'custom' ----------------------------------------------------


@pytest.fixture(scope="module")
def custom_dataset(tmp_path_factory):
  """A custom-layout folder, built once: {split: {subject: (image, mask)}}."""
  root = tmp_path_factory.mktemp("custom")
  manual = root / "manual"
  volumes = {
      "train": {"h1": _subject(1), "h2": _subject(2)},
      "test": {"p1": _subject(3, lesion=True), "h3": _subject(4)},
  }
  for split, subjects in volumes.items():
    for name, (image, mask) in subjects.items():
      _save(manual / split / f"{name}.nii.gz", image)
      if mask.any():
        _save(manual / split / f"{name}_mask.nii.gz", mask)
  # h2 stored in LPS order (x and y reversed): must read back as RAS.
  flip = np.diag([-1., -1., 1., 1.])
  flip[:2, 3] = np.array(SHAPE[:2]) - 1
  _save(manual / "train" / "h2.nii.gz", volumes["train"]["h2"][0][::-1, ::-1],
        AFFINE @ flip)
  # h3 has an explicit brain mask smaller than image > 0.
  brain_h3 = np.zeros(SHAPE, np.uint8)
  brain_h3[2:4, 2:5, :] = 1
  _save(manual / "test" / "h3_brain.nii.gz", brain_h3)
  config = _data_config("nifti_folder", "custom", root / "tfds", manual)
  builders.prepare(config)
  return config, volumes, {"h3": brain_h3}


def test_custom_reads_back_exact_slices(custom_dataset):
  config, volumes, brains = custom_dataset
  for split, subjects in volumes.items():
    examples = _examples(config, split)
    by_subject = collections.defaultdict(list)
    for ex in examples:
      by_subject[ex["subject"].decode()].append(ex)
    assert set(by_subject) == set(subjects)
    for name, (image, mask) in subjects.items():
      slices = by_subject[name]
      # Stored in order: subject's slices contiguous, k ascending.
      assert [int(ex["slice"]) for ex in slices] == list(range(SHAPE[2]))
      brain = brains.get(name, image > 0)
      for k, ex in enumerate(slices):
        assert ex["image"].dtype == np.float32
        np.testing.assert_array_equal(ex["image"][..., 0],
                                      np.rot90(image[:, :, k]))
        np.testing.assert_array_equal(ex["mask"][..., 0],
                                      np.rot90(mask[:, :, k]))
        np.testing.assert_array_equal(ex["brain"][..., 0],
                                      np.rot90(brain[:, :, k]))
        assert ex["label"] == int(mask[:, :, k].any())
        np.testing.assert_allclose(ex["affine"], AFFINE, atol=1e-5)
        np.testing.assert_allclose(
            ex["percentiles"],
            np.percentile(image[brain > 0], builders.PERCENTILES), rtol=1e-6)


def test_custom_splits_and_labels(custom_dataset):
  config, _, _ = custom_dataset
  builder = builders.get_builder(config)
  assert set(builder.info.splits.keys()) == {"train", "test"}
  train = _examples(config, "train")
  test = _examples(config, "test")
  assert not {ex["subject"] for ex in train} & {ex["subject"] for ex in test}
  assert not any(ex["label"] for ex in train)
  assert sum(ex["label"] for ex in test) == 1
  with pytest.raises(ValueError, match="no split 'validation'.*'test'"):
    builders.load_split(config, "validation")
  assert len(_examples(config, "train[:50%]")) == SHAPE[2]


def test_changed_manual_dir_is_detected(custom_dataset, tmp_path):
  config, _, _ = custom_dataset
  manual = tmp_path / "other"
  _save(manual / "train" / "h1.nii.gz", _subject(1)[0])
  config = _data_config(config.dataset, config.builder_config,
                        config.data_dir, manual)
  with pytest.raises(ValueError, match="changed.*Delete"):
    builders.load_split(config, "train")


# --- nifti_folder errors ------------------------------------------------------


# --- nifti_folder 'ixi' and 'atlas' layouts -----------------------------------


def test_ixi_layout_split_by_subject_hash(tmp_path):
  names = [f"IXI{i:03d}-Guys-{1000 + i}" for i in range(40)]
  for name in names:
    (tmp_path / "IXI-T1").mkdir(exist_ok=True)
    (tmp_path / "IXI-T1" / f"{name}-T1.nii.gz").touch()  # Not read here.
  found = builders.find_subjects("ixi", tmp_path)
  assert set(found) == {"train", "validation"}
  ids = {split: [s.subject_id for s in subjects]
         for split, subjects in found.items()}
  assert sorted(ids["train"] + ids["validation"]) == names
  assert all(builders.ixi_split(i) == "validation" for i in ids["validation"])
  assert 1 <= len(ids["validation"]) <= 10
  with pytest.raises(nifti.NiftiError, match="IXI-T1: folder not found"):
    builders.find_subjects("ixi", tmp_path / "IXI-T1")


def test_atlas_layout_requires_masks(tmp_path):
  anat = tmp_path / "Training" / "R001" / "sub-r001s001" / "ses-1" / "anat"
  anat.mkdir(parents=True)
  stem = "sub-r001s001_ses-1_space-MNI152NLin2009aSym"
  (anat / f"{stem}_T1w.nii.gz").touch()
  (anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz").touch()
  found = builders.find_subjects("atlas", tmp_path)
  (subject,) = found["test"]
  assert subject.subject_id == "sub-r001s001_ses-1"
  assert subject.mask.name.endswith("T1lesion_mask.nii.gz")
  (anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz").unlink()
  with pytest.raises(nifti.NiftiError, match="_T1w.nii.gz: no lesion mask"):
    builders.find_subjects("atlas", tmp_path)


# --- brain_phantom 'tiny' -----------------------------------------------------


@pytest.fixture(scope="module")
def phantom_tiny(tmp_path_factory):
  """brain_phantom/tiny built once: (data config, {split: [examples]})."""
  config = _data_config("brain_phantom", "tiny",
                        tmp_path_factory.mktemp("phantom"))
  return config, {split: _examples(config, split)
                  for split in builders.SPLITS}


def test_phantom_splits_and_subjects(phantom_tiny):
  _, splits = phantom_tiny
  spec = phantom.SPECS["tiny"]
  subjects = {split: {ex["subject"].decode() for ex in examples}
              for split, examples in splits.items()}
  expected = collections.Counter(p.split for p in phantom.subject_plan(spec))
  for split in builders.SPLITS:
    assert len(subjects[split]) == expected[split]
  for a in builders.SPLITS:
    for b in builders.SPLITS:
      assert a == b or not subjects[a] & subjects[b]
  assert not any(ex["label"] for ex in splits["train"])
  assert not any(ex["mask"].any() for ex in splits["validation"])
  assert any(ex["label"] for ex in splits["test"])
  ex = splits["test"][0]
  assert ex["image"].shape == (spec.image_size, spec.image_size, 1)


def test_phantom_example_is_deterministic(phantom_tiny):
  _, splits = phantom_tiny
  plan = next(p for p in phantom.subject_plan(phantom.SPECS["tiny"])
              if p.split == "test" and p.is_patient)
  volume = phantom.make_subject(phantom.SPECS["tiny"].image_size, plan.seed,
                                plan.is_patient)
  slices = [ex for ex in splits["test"]
            if ex["subject"].decode() == plan.subject_id]
  assert [int(ex["slice"]) for ex in slices] == list(
      range(volume.image.shape[2]))
  k = int(np.argmax(volume.lesion.sum(axis=(0, 1))))
  np.testing.assert_array_equal(slices[k]["image"][..., 0],
                                np.rot90(volume.image[:, :, k]))
  np.testing.assert_array_equal(slices[k]["mask"][..., 0],
                                np.rot90(volume.lesion[:, :, k]))
  assert slices[k]["label"] == 1
  np.testing.assert_allclose(slices[k]["affine"], volume.affine, rtol=1e-6)


def test_phantom_shuffled_files_read_all(phantom_tiny):
  config, splits = phantom_tiny
  ds = builders.load_split(config, "train", shuffle_files=True)
  keys = sorted((ex["subject"], int(ex["slice"])) for ex in tfds.as_numpy(ds))
  assert keys == sorted((ex["subject"], int(ex["slice"]))
                        for ex in splits["train"])
