"""The benchmark layouts (BraTS, IXI, ATLAS, MSLUB, WMH) end to end: fixtures
written in each release's on-disk form, found, built through load_split and
checked against the fixture's truth and a hand-written reorientation."""

import hashlib
import shutil

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base
from genjax import config as config_lib
from genjax.data import builders
from genjax.data import fixtures
from genjax.data import layouts
from genjax.data import nifti

N_SUBJECTS = 3  # BraTS: one case of each release; WMH: one of each site.
# In-plane matrix of the fixtures: every check here is exact (discovery,
# labels, slice-by-slice orientation) or in pixels (lesion left of the brain
# by > 1 px: 2.9-5.4 px at 24, 2.8-7.9 at 32), so 24 px checks what 32 did
# and writes and builds the five layouts in half the time.
IMAGE_SIZE = 24
DEFAULT = {"brats": "flair", "ixi": "T1", "atlas": "T1w", "mslub": "FLAIR",
           "wmh": "FLAIR"}
LESION_VALUES = {"brats": None, "ixi": (), "atlas": (1,), "mslub": (1,),
                 "wmh": (1,)}  # brats: by release, see _lesion_values.


def _split(subject_id, layout):
  """The documented split rule, written out again (sha256 of the id)."""
  bucket = int(hashlib.sha256(subject_id.encode()).hexdigest()[:8], 16) % 100
  if layout == "ixi":
    return "validation" if bucket < 10 else "train"
  if layout == "atlas":
    return "test"
  return "validation" if bucket < 25 else "test"


def _lesion_values(layout, subject_id):
  if layout == "brats":
    return (1, 2, 3) if subject_id.startswith("BraTS-") else (1, 2, 4)
  return LESION_VALUES[layout]


def _to_ras(data, affine):
  """Hand-written reorientation to RAS: permute and flip by the axis codes."""
  codes = nib.aff2axcodes(affine)
  axis_of = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
  order = [codes.index(c) if c in codes else codes.index(o)
           for c, o in (("R", "L"), ("A", "P"), ("S", "I"))]
  data = np.transpose(data, order)
  for ras_axis, source in enumerate(order):
    assert axis_of[codes[source]] == ras_axis
    if codes[source] in "LPI":
      data = np.flip(data, ras_axis)
  return data


def _data_config(layout, manual_dir, data_dir, modality=None):
  data = base.get_base_config("smoke").data
  data.dataset = "nifti_folder"
  data.builder_config = layout
  data.manual_dir = str(manual_dir)
  data.data_dir = str(data_dir)
  data.modality = modality
  return data


def _examples(data_config):
  builder = builders.prepare(data_config)
  out = {}
  for split in builder.info.splits.keys():
    for ex in tfds.as_numpy(builders.load_split(data_config, split)):
      out.setdefault(split, []).append(ex)
  return out


@pytest.fixture(scope="session")
def written(tmp_path_factory):
  """{layout: (manual_dir, write_layout result, examples by split)}."""
  root = tmp_path_factory.mktemp("layouts")
  out = {}
  for layout in fixtures.LAYOUTS:
    manual = root / layout
    result = fixtures.write_layout(layout, manual, n_subjects=N_SUBJECTS,
                                   image_size=IMAGE_SIZE, seed=3)
    config = _data_config(layout, manual, root / "tfds")
    out[layout] = (manual, result, _examples(config), config)
  return out


@pytest.mark.parametrize("layout", fixtures.LAYOUTS)
def test_discovery_finds_every_subject(written, layout):
  manual, result, _, _ = written[layout]
  found = layouts.find_subjects(layout, manual)
  subjects = {s.subject_id: (split, s) for split, ss in found.items()
              for s in ss}
  assert sorted(subjects) == sorted(result["subjects"])
  for subject_id, (split, s) in subjects.items():
    files = result["files"][subject_id]
    assert split == _split(subject_id, layout)
    assert s.image == files[DEFAULT[layout]]
    assert s.modalities == {m: p for m, p in files.items()
                            if m not in ("seg", "mask")}
    assert s.mask == files.get("seg", files.get("mask"))
    assert s.brain is None
  if layout == "brats":  # One case of each release, each its own labels.
    assert sorted(s.labels.values for _, s in subjects.values()) == [
        (0, 1, 2, 3), (0, 1, 2, 4), (0, 1, 2, 4)]


@pytest.mark.parametrize("layout", fixtures.LAYOUTS)
def test_build_matches_fixture_truth(written, layout):
  manual, result, examples, _ = written[layout]
  by_subject = {}
  for split, exs in examples.items():
    for ex in exs:
      by_subject.setdefault(ex["subject"].decode(), []).append((split, ex))
  assert sorted(by_subject) == sorted(result["subjects"])
  for subject_id, items in by_subject.items():
    truth = result["truth"][subject_id]
    files = result["files"][subject_id]
    assert {split for split, _ in items} == {_split(subject_id, layout)}
    assert len(items) == truth["n_slices"]
    exs = [ex for _, ex in items]
    assert sum(int(ex["mask"].sum()) for ex in exs) == truth["lesion_voxels"]
    # Slice by slice against a hand-written reorientation of the files.
    img = nib.load(str(files[DEFAULT[layout]]))
    image = _to_ras(np.asarray(img.get_fdata(), np.float32), img.affine)
    label = np.zeros(image.shape)
    if "seg" in files or "mask" in files:
      seg = nib.load(str(files.get("seg", files.get("mask"))))
      label = _to_ras(np.asarray(seg.dataobj), seg.affine)
    for k, ex in enumerate(exs):
      assert ex["slice"] == k
      np.testing.assert_array_equal(ex["image"][..., 0],
                                    np.rot90(image[:, :, k]))
      lesion = np.isin(label[:, :, k], _lesion_values(layout, subject_id))
      np.testing.assert_array_equal(ex["mask"][..., 0], np.rot90(lesion))
      assert ex["label"] == int(lesion.any())
      # WMH label 2 is neither lesion nor healthy: outside the brain mask.
      other = np.rot90(label[:, :, k] == 2) if layout == "wmh" else None
      if other is not None:
        assert not (ex["brain"][..., 0] & other).any()
    if layout == "wmh":
      assert truth["ignore_voxels"] > 0 or subject_id.startswith("GE3T")


@pytest.mark.parametrize("layout", ["brats", "atlas", "mslub", "wmh"])
def test_lesion_on_patients_left_is_on_image_left(written, layout):
  _, result, examples, _ = written[layout]
  for subject_id in result["subjects"]:
    assert result["truth"][subject_id]["lesion_left"]  # In world (RAS) mm.
    exs = [ex for split in examples.values() for ex in split
           if ex["subject"].decode() == subject_id and ex["label"]]
    assert exs
    lesion_cols = np.concatenate([np.nonzero(ex["mask"][..., 0])[1]
                                  for ex in exs])
    brain_cols = np.concatenate([np.nonzero(ex["brain"][..., 0])[1]
                                 for ex in exs])
    # Neurological convention: the patient's left on the image's left.
    assert lesion_cols.mean() < brain_cols.mean() - 1


def test_brats_has_no_train_split_and_modalities_build_apart(written,
                                                             tmp_path):
  manual, result, examples, config = written["brats"]
  assert "train" not in examples and set(examples) <= {"validation", "test"}
  t2 = _data_config("brats", manual, config.data_dir, modality="T2")
  t2_examples = _examples(t2)
  flair_dir = builders.get_builder(config).data_dir
  t2_dir = builders.get_builder(t2).data_dir
  assert "brats_t2" in t2_dir and flair_dir != t2_dir
  first = {s: [ex for ex in exs if ex["subject"].decode() == s][0]
           for s in result["subjects"] for exs in t2_examples.values()
           if any(ex["subject"].decode() == s for ex in exs)}
  for subject_id, ex in first.items():
    t2_file = nib.load(str(result["files"][subject_id]["t2"]))
    t2_image = _to_ras(np.asarray(t2_file.get_fdata(), np.float32),
                       t2_file.affine)
    np.testing.assert_array_equal(ex["image"][..., 0],
                                  np.rot90(t2_image[:, :, 0]))
  # The flair dataset is untouched by the t2 build.
  assert builders.get_builder(config).is_prepared()
  assert (builders.get_builder(config).info.metadata["modality"]
          == "flair")


# --- Errors, each naming the file or folder -----------------------------------


@pytest.fixture
def one_brats(tmp_path):
  result = fixtures.write_layout("brats", tmp_path / "manual", n_subjects=2,
                                 image_size=24, seed=5)
  return tmp_path / "manual", result


def test_brats_case_without_seg(one_brats):
  manual, result = one_brats
  case = result["subjects"][1]  # BraTS2021 naming.
  result["files"][case]["seg"].unlink()
  with pytest.raises(nifti.NiftiError, match=f"{case}: BraTS case {case} has "
                     "no segmentation"):
    layouts.find_subjects("brats", manual)


def test_brats_missing_requested_modality(one_brats):
  manual, result = one_brats
  case = result["subjects"][0]
  result["files"][case]["t1ce"].unlink()
  layouts.find_subjects("brats", manual, "flair")  # Others are fine.
  with pytest.raises(nifti.NiftiError,
                     match=f"{case}: BraTS case {case} has no 't1ce'"):
    layouts.find_subjects("brats", manual, "t1ce")


def test_label_value_outside_the_set(one_brats, tmp_path):
  manual, result = one_brats
  case = result["subjects"][1]
  seg_path = result["files"][case]["seg"]
  seg = nib.load(str(seg_path))
  data = np.asarray(seg.dataobj).copy()
  data[data == 4] = 3  # 2021 labels are 1, 2, 4: 3 is 2023's.
  nib.save(nib.Nifti1Image(data, seg.affine), str(seg_path))
  with pytest.raises(nifti.NiftiError,
                     match=r"_seg.nii.gz: label values 3 are outside"):
    builders.prepare(_data_config("brats", manual, tmp_path / "tfds"))


def test_4d_series_rejected(one_brats, tmp_path):
  manual, result = one_brats
  case = result["subjects"][0]
  flair = result["files"][case]["flair"]
  img = nib.load(str(flair))
  series = np.stack([img.get_fdata()] * 2, axis=-1).astype(np.int16)
  nib.save(nib.Nifti1Image(series, img.affine), str(flair))
  with pytest.raises(nifti.NiftiError, match=f"{flair.name}: is a 4D series"):
    builders.prepare(_data_config("brats", manual, tmp_path / "tfds"))


@pytest.mark.parametrize("layout", fixtures.LAYOUTS)
def test_empty_manual_dir(layout, tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(nifti.NiftiError, match=str(tmp_path / "empty")):
    layouts.find_subjects(layout, tmp_path / "empty")


def test_unknown_modality_is_a_config_error(tmp_path):
  config = base.get_base_config("smoke")
  config.data.dataset = "nifti_folder"
  config.data.builder_config = "brats"
  config.data.modality = "dwi"
  with pytest.raises(config_lib.ConfigError,
                     match="'flair', 't1', 't1ce', 't2'"):
    config_lib.validate_data(config.data)
  config.data.modality = "T2"  # Case-insensitive.
  config_lib.validate_data(config.data)
  config.data.builder_config = "ixi"
  config.data.modality = "flair"
  with pytest.raises(config_lib.ConfigError, match="'T1', 'T2', 'PD'"):
    config_lib.validate_data(config.data)
  with pytest.raises(config_lib.ConfigError, match="'FLAIR', 'T1'"):
    layouts.find_subjects("wmh", tmp_path, "PD")


# --- Other accepted forms of the layouts -------------------------------------


def test_wmh_amsterdam_and_mslub_flat_forms(tmp_path):
  for folder in ("Amsterdam/GE3T/101/pre", "Utrecht/0/pre"):
    (tmp_path / "wmh" / folder).mkdir(parents=True)
    (tmp_path / "wmh" / folder / "FLAIR.nii.gz").touch()
    (tmp_path / "wmh" / folder / ".." / "wmh.nii.gz").touch()
  found = layouts.find_subjects("wmh", tmp_path / "wmh")
  assert sorted(s.subject_id for ss in found.values() for s in ss) == [
      "GE3T_101", "Utrecht_0"]
  flat = tmp_path / "mslub" / "patient07"
  flat.mkdir(parents=True)
  for name in ("patient07_FLAIR", "patient07_T2W", "consensus_gt"):
    (flat / f"{name}.nii.gz").touch()
  (subject,) = [s for ss in layouts.find_subjects(
      "mslub", tmp_path / "mslub").values() for s in ss]
  assert subject.image == flat / "patient07_FLAIR.nii.gz"
  assert sorted(subject.modalities) == ["FLAIR", "T2W"]
  with pytest.raises(nifti.NiftiError, match="patient07 has no T1W"):
    layouts.find_subjects("mslub", tmp_path / "mslub", "t1w")
  shutil.rmtree(flat)


def test_registry_describes_every_layout():
  assert list(layouts.LAYOUTS) == ["custom", "ixi", "atlas", "brats",
                                   "mslub", "wmh"]
  for name, spec in layouts.LAYOUTS.items():
    assert spec.name == name and spec.tree and spec.download
    assert spec.default_modality in spec.modalities or not spec.modalities
  assert layouts.config_name("brats") == "brats"
  assert layouts.config_name("brats", "FLAIR") == "brats"
  assert layouts.config_name("ixi", "pd") == "ixi_pd"
