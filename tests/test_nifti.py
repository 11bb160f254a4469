"""Tests of genjax.data.nifti on small NIfTI files written with nibabel."""

import nibabel as nib
import numpy as np

from genjax.data import nifti

# 2 mm voxels, origin somewhere off-centre: a non-trivial RAS affine.
RAS_AFFINE = np.array([[2., 0., 0., -10.],
                       [0., 2., 0., -20.],
                       [0., 0., 2., -5.],
                       [0., 0., 0., 1.]])


def _volume(shape=(5, 6, 7), seed=0):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def _save(path, data, affine=RAS_AFFINE):
  nib.save(nib.Nifti1Image(data, affine), str(path))
  return path


def test_load_volume_ras_roundtrip(tmp_path):
  data = _volume()
  data_out, affine = nifti.load_volume(_save(tmp_path / "a.nii.gz", data))
  assert data_out.dtype == np.float32 and affine.dtype == np.float64
  np.testing.assert_array_equal(data_out, data)
  np.testing.assert_allclose(affine, RAS_AFFINE)


def test_lps_volume_is_reoriented_to_ras(tmp_path):
  ras = _volume()
  # The same voxels stored in LPS order: first two axes reversed, with the
  # affine that maps them to the same world positions.
  flip = np.diag([-1., -1., 1., 1.])
  flip[0, 3] = ras.shape[0] - 1
  flip[1, 3] = ras.shape[1] - 1
  lps_affine = RAS_AFFINE @ flip
  path = _save(tmp_path / "lps.nii", ras[::-1, ::-1, :], lps_affine)
  assert nib.aff2axcodes(nib.load(str(path)).affine) == ("L", "P", "S")
  data, affine = nifti.load_volume(path)
  np.testing.assert_array_equal(data, ras)
  np.testing.assert_allclose(affine, RAS_AFFINE)


def test_4d_singleton_is_squeezed(tmp_path):
  data = _volume()
  out, _ = nifti.load_volume(_save(tmp_path / "s.nii.gz", data[..., None]))
  assert out.shape == data.shape
  np.testing.assert_array_equal(out, data)


def test_load_mask_binarises_and_reorients(tmp_path):
  mask = np.zeros((5, 6, 7), np.float32)
  mask[1, 2, 3] = 1
  mask[4, 5, 6] = 0.5
  image_path = _save(tmp_path / "im.nii.gz", _volume())
  image, affine = nifti.load_volume(image_path)
  # Stored flipped along x: must come back on the image's RAS grid.
  flip = np.diag([-1., 1., 1., 1.])
  flip[0, 3] = mask.shape[0] - 1
  mask_path = _save(tmp_path / "m.nii.gz", mask[::-1], RAS_AFFINE @ flip)
  out = nifti.load_mask(mask_path, image.shape, affine)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, (mask > 0).astype(np.uint8))


def test_save_volume_roundtrip_with_qform_and_sform(tmp_path):
  data = _volume()
  path = tmp_path / "out" / "map.nii.gz"
  nifti.save_volume(path, data.astype(np.float64), RAS_AFFINE)
  img = nib.load(str(path))
  assert img.get_data_dtype() == np.float32
  assert int(img.header["qform_code"]) > 0 and int(img.header["sform_code"]) > 0
  np.testing.assert_allclose(img.get_qform(), RAS_AFFINE, atol=1e-5)
  np.testing.assert_allclose(img.get_sform(), RAS_AFFINE, atol=1e-5)
  out, affine = nifti.load_volume(path)
  np.testing.assert_array_equal(out, data)
  np.testing.assert_allclose(affine, RAS_AFFINE, atol=1e-5)
  nifti.save_volume(tmp_path / "mask.nii", data > 0.5, RAS_AFFINE)
  assert nib.load(str(tmp_path / "mask.nii")).get_data_dtype() == np.uint8
