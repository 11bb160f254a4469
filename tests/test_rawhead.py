"""Tests of genjax.data.rawhead: raw scanner heads with known truth."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from genjax.data import nifti
from genjax.data import phantom
from genjax.data import rawhead


@pytest.fixture(scope="module")
def volume():
  return phantom.make_subject(32, 11, True)


def _centroid_mm(mask, affine):
  return (affine @ np.r_[np.argwhere(mask).mean(axis=0), 1.0])[:3]


@pytest.mark.parametrize("orientation", ["LPS", "PIR", "RAS"])
def test_affine_maps_brain_to_its_mni_position(volume, orientation):
  head = rawhead.make_raw_head(volume, np.random.default_rng(3),
                               orientation=orientation)
  assert nib.aff2axcodes(head.affine) == tuple(orientation)
  scanner = _centroid_mm(head.brain, head.affine)
  mni = (head.to_mni @ np.r_[scanner, 1.0])[:3]
  truth = _centroid_mm(volume.brain, volume.affine)
  voxel = np.abs(np.diag(volume.affine)[:3])
  np.testing.assert_array_less(np.abs(mni - truth), voxel)
  # The pose is not the identity: a reader that ignored to_mni would be off.
  assert np.linalg.norm(scanner - truth) > 2.0 or not np.allclose(
      head.to_mni[:3, :3], np.eye(3), atol=0.05)
  # Brain volume is preserved (ml) up to the pose's small scale and voxels.
  raw_ml = head.brain.sum() * abs(np.linalg.det(head.affine[:3, :3])) / 1e3
  mni_ml = volume.brain.sum() * abs(np.linalg.det(volume.affine[:3, :3])) / 1e3
  scale = abs(np.linalg.det(head.to_mni[:3, :3]))
  assert raw_ml * scale == pytest.approx(mni_ml, rel=0.05)


def test_voxel_size_and_shape(volume):
  head = rawhead.make_raw_head(volume, 0, voxel_size=(9.0, 7.0, 8.0),
                               orientation="PIR", shape=(20, 30, 25))
  assert head.image.shape == (20, 30, 25) == head.brain.shape
  np.testing.assert_allclose(np.linalg.norm(head.affine[:3, :3], axis=0),
                             (9.0, 7.0, 8.0))
  default = rawhead.make_raw_head(volume, 0)
  sizes = np.linalg.norm(default.affine[:3, :3], axis=0)
  assert sizes[0] > sizes[1] == sizes[2]  # Anisotropic by default.


def test_background_is_noise_and_skull_surrounds_brain(volume):
  # 64 px (3.4 mm voxels): at 32 px a 4-8 mm scalp is mostly partial volume.
  volume = phantom.make_subject(64, 11, False)
  head = rawhead.make_raw_head(volume, np.random.default_rng(5))
  voxel = np.linalg.norm(head.affine[:3, :3], axis=0)
  distance = ndimage.distance_transform_edt(head.brain == 0, sampling=voxel)
  wm = np.percentile(head.image[head.brain > 0], 90)
  air = head.image[distance > 30.0]
  assert air.size > 1000
  assert np.mean(air > 0) > 0.95  # A Rician floor, not zeros.
  assert air.std() > 0 and np.median(air) < 0.15 * wm
  shell = head.image[(distance > 0) & (distance < 16.0)]
  assert np.mean(shell > 0.7 * wm) > 0.1  # Scalp fat: bright.
  # Skull: dark voxels outside the brain but enclosed by the bright scalp.
  enclosed = ndimage.binary_fill_holes(head.image > 0.35 * wm)
  skull = enclosed & (head.brain == 0) & (head.image < 0.25 * wm)
  assert skull.sum() > 0.05 * head.brain.sum()
  bare = rawhead.make_raw_head(volume, np.random.default_rng(5), skull=False,
                               background="zero")
  distance = ndimage.distance_transform_edt(bare.brain == 0, sampling=voxel)
  assert np.all(bare.image[distance > 8.0] == 0)


def test_bias_is_smooth_and_multiplicative(volume):
  head = rawhead.make_raw_head(volume, 7, noise=False)
  flat = rawhead.make_raw_head(volume, 7, noise=False, bias=False)
  inside = head.brain > 0
  # Same seed, same pose: the images differ by the bias field exactly.
  np.testing.assert_allclose(head.image[inside],
                             flat.image[inside] * head.bias[inside],
                             rtol=1e-4)
  assert 1.1 < head.bias[inside].max() / head.bias[inside].min() < 3.0


def test_lesion_follows_the_transform(volume):
  assert volume.lesion.any()
  head = rawhead.make_raw_head(volume, 1, voxel_size=(4.0, 4.0, 4.0))
  assert set(np.unique(head.lesion)) <= {0, 1} and head.lesion.any()
  assert np.all(head.brain[head.lesion > 0])
  mni = (head.to_mni @ np.r_[_centroid_mm(head.lesion, head.affine), 1])[:3]
  truth = _centroid_mm(volume.lesion, volume.affine)
  assert np.linalg.norm(mni - truth) < 2 * np.abs(volume.affine[0, 0])


def test_deterministic_and_bad_arguments(volume):
  a = rawhead.make_raw_head(volume, 9)
  b = rawhead.make_raw_head(volume, 9)
  np.testing.assert_array_equal(a.image, b.image)
  with pytest.raises(ValueError, match="axis code"):
    rawhead.make_raw_head(volume, 0, orientation="LLS")
  with pytest.raises(ValueError, match="background"):
    rawhead.make_raw_head(volume, 0, background="black")


def test_save_raw_head_round_trip(volume, tmp_path):
  head = rawhead.make_raw_head(volume, 2, orientation="PIR")
  paths = rawhead.save_raw_head(tmp_path / "train" / "sub-1", head)
  img = nib.load(paths["image"])
  assert img.get_data_dtype() == np.int16
  assert nib.aff2axcodes(img.affine) == ("P", "I", "R")
  assert int(img.header["qform_code"]) > 0 and int(img.header["sform_code"]) > 0
  data, affine = nifti.load_volume(paths["image"])  # Reoriented to RAS.
  assert nib.aff2axcodes(affine) == ("R", "A", "S")
  canonical = nib.as_closest_canonical(nib.Nifti1Image(head.image, head.affine))
  np.testing.assert_allclose(data, np.round(canonical.get_fdata()), atol=0.5)
  mask = nifti.load_mask(paths["mask"], data.shape, affine)
  assert mask.sum() == head.lesion.sum()
