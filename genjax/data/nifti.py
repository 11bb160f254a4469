"""NIfTI volumes in and out: read, validate, reorient to RAS, write maps.

Everything genjax reads from disk goes through `load_volume` / `load_mask`, so
one place decides what a valid volume is:

* reoriented to the closest canonical RAS+ orientation (first axis towards the
  patient's Right, second Anterior, third Superior), whatever the file's
  storage order, so that an axial slice is always `volume[:, :, k]`;
* 3D, or 4D with a single volume (squeezed); real 4D series are rejected;
* finite (no NaN/inf voxels);
* masks binarised (> 0 is foreground) and on the image's voxel grid.

Every problem raises `NiftiError`, whose message names the file, says what is
wrong and what to do about it.
"""

import gzip
import os
import zlib

import nibabel as nib
import numpy as np

from genjax import files

# Voxel-to-world affines of an image and its masks must agree to this many
# millimetres; NIfTI stores qform quaternions in float32, so files written by
# different tools differ by ~1e-5 mm even when they share a grid.
AFFINE_ATOL_MM = 1e-3

# What nibabel, gzip and the OS raise for a missing, unreadable, truncated or
# corrupt file (header or data).
_READ_ERRORS = (
    nib.filebasedimages.ImageFileError,
    OSError,  # Also FileNotFoundError, gzip.BadGzipFile, short reads.
    EOFError,  # A .nii.gz cut short.
    zlib.error,
    ValueError,  # Malformed headers (bad dims, dtypes, ...).
)


class NiftiError(ValueError):
  """A NIfTI file or folder is missing, malformed or inconsistent."""


def _open(path):
  """Returns the lazily loaded NIfTI image at `path` (header read only)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise NiftiError(
        f"{path}: no such file. Check the path (and that the volume was "
        "downloaded/unpacked there).")
  try:
    img = nib.load(path)
  except _READ_ERRORS as e:
    raise NiftiError(
        f"{path}: cannot read it as NIfTI ({type(e).__name__}: {e}). "
        "Check that it is a .nii or .nii.gz file and re-download or "
        "re-export it.") from e
  if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
    raise NiftiError(
        f"{path}: is a {type(img).__name__}, not NIfTI. Convert it to "
        ".nii.gz first (e.g. with nibabel or dcm2niix).")
  return img


def _read_data(img, path):
  """Returns the image's voxels as float32 [X, Y, Z], validated.

  Args:
    img: a nibabel NIfTI image loaded from `path`.
    path: the file, for error messages.

  Returns:
    float32 array [X, Y, Z] (a singleton 4th+ dimension is squeezed).
  """
  shape = img.shape
  # Singleton trailing dimensions (a "4D" file holding one volume) are common
  # outputs of registration tools; a real series has no single volume to use.
  if len(shape) > 3 and all(n == 1 for n in shape[3:]):
    pass
  elif len(shape) > 3:
    raise NiftiError(
        f"{path}: is a {len(shape)}D series of shape {shape} "
        f"({int(np.prod(shape[3:]))} volumes); genjax needs one 3D volume. "
        "Extract the volume you want (e.g. `fslroi` or nibabel "
        "`img.slicer[..., i]`) and save it on its own.")
  elif len(shape) != 3:
    raise NiftiError(
        f"{path}: has shape {shape} ({len(shape)}D); genjax needs a 3D "
        "volume [X, Y, Z].")
  try:
    # Reading the data (not only the header) is where truncated gzip streams
    # and short files fail.
    data = np.asarray(img.get_fdata(dtype=np.float32))
  except (_READ_ERRORS + (MemoryError,)) as e:
    raise NiftiError(
        f"{path}: the header is fine but the voxel data cannot be read "
        f"({type(e).__name__}: {e}). The file is probably truncated or "
        "corrupt; re-download or re-export it.") from e
  data = data.reshape(shape[:3])
  n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
  if n_bad:
    raise NiftiError(
        f"{path}: {n_bad} of {data.size} voxels are NaN or infinite. Fix the "
        "preprocessing that wrote it (or replace them, e.g. with 0) and "
        "re-save.")
  return data


def _load_canonical(path):
  """Reads `path` and reorients it to closest canonical RAS+.

  Returns:
    (data float32 [X, Y, Z], affine float64 [4, 4]) in RAS+ voxel order.
  """
  img = _open(path)
  data = _read_data(img, os.fspath(path))
  # Reorient the validated in-memory array: as_closest_canonical only flips
  # and permutes axes (no resampling) and adjusts the affine to match.
  canonical = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
  data = np.asarray(canonical.dataobj, dtype=np.float32)
  return data, np.asarray(canonical.affine, dtype=np.float64)


def load_volume(path):
  """Loads a 3D NIfTI volume, reoriented to canonical RAS+.

  Args:
    path: a .nii or .nii.gz file.

  Returns:
    (data, affine): data float32 [X, Y, Z] (intensities with the header's
    scaling applied), affine float64 [4, 4] mapping voxel indices of `data`
    to RAS millimetres.

  Raises:
    NiftiError: missing, non-NIfTI, truncated or corrupt file; 2D or 4D series;
      NaN/inf voxels.
  """
  return _load_canonical(path)


def load_mask(path, image_shape, image_affine, image_path=None):
  """Loads a binary mask that must lie on a given image's voxel grid.

  Args:
    path: the mask file (.nii / .nii.gz); voxels > 0 are foreground.
    image_shape: shape [X, Y, Z] of the image returned by `load_volume`.
    image_affine: float [4, 4] affine returned by `load_volume` for it.
    image_path: the image's file, named in error messages.

  Returns:
    uint8 [X, Y, Z] in {0, 1}, reoriented like the image.

  Raises:
    NiftiError: everything `load_volume` rejects, or a mask whose (canonical)
      shape or affine differs from the image's.
  """
  data, affine = _load_canonical(path)
  image_name = os.fspath(image_path) if image_path else "the image"
  if data.shape != tuple(image_shape):
    raise NiftiError(
        f"{os.fspath(path)}: mask shape {data.shape} does not match the shape "
        f"{tuple(image_shape)} of {image_name} (both after reorientation to "
        "RAS). Resample the mask onto the image's grid (nearest neighbour).")
  if not np.allclose(affine, image_affine, rtol=0, atol=AFFINE_ATOL_MM):
    raise NiftiError(
        f"{os.fspath(path)}: mask affine\n{np.round(affine, 4)}\ndoes not "
        f"match the affine of {image_name}\n{np.round(image_affine, 4)}\n"
        f"(tolerance {AFFINE_ATOL_MM} mm). The mask must be on the image's "
        "voxel grid: resample it with the image as reference.")
  return (data > 0).astype(np.uint8)


def save_volume(path, data, affine, xform_code="scanner"):
  """Writes a 3D volume (e.g. an anomaly map) as NIfTI.

  The affine is written to both the qform and the sform with the same code,
  so ITK-SNAP, 3D Slicer, FSL and nibabel all place it identically over the
  image it was computed from.

  Args:
    path: output file (local or any epath URL); `.nii.gz` compresses.
      Parent folders are created.
    data: [X, Y, Z] array; bool is stored as uint8, float64 as float32, other
      dtypes as given.
    affine: [4, 4] voxel-to-RAS-mm affine (e.g. from `load_volume`).
    xform_code: NIfTI xform code for qform and sform ('scanner', 'aligned',
      'mni', ...).
  """
  data = np.asarray(data)
  affine = np.asarray(affine, dtype=np.float64)
  if data.ndim != 3:
    raise ValueError(f"save_volume({path!r}): data must be 3D, got shape "
                     f"{data.shape}.")
  if affine.shape != (4, 4):
    raise ValueError(f"save_volume({path!r}): affine must be [4, 4], got "
                     f"{affine.shape}.")
  if data.dtype == bool:
    data = data.astype(np.uint8)
  elif data.dtype == np.float64:
    data = data.astype(np.float32)
  img = nib.Nifti1Image(data, affine)
  img.set_qform(affine, code=xform_code)
  img.set_sform(affine, code=xform_code)
  img.header.set_xyzt_units(xyz="mm")
  # Encoded in memory and written through epath, so `path` may be a local
  # file or a URL (gs://...) like every other output under a workdir.
  raw = img.to_bytes()
  if os.fspath(path).endswith(".gz"):
    raw = gzip.compress(raw, compresslevel=6)
  files.write_bytes(path, raw)
