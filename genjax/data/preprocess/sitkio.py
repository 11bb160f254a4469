"""numpy (nibabel RAS) arrays <-> SimpleITK images.

Convention: SimpleITK's physical space is used as *RAS* millimetres here (the
nibabel affine as is), not ITK's usual LPS. Registration does not care which
handedness the world has as long as every image agrees, and it keeps every
transform a plain RAS -> RAS map that composes with nibabel affines.
"""

import numpy as np

from genjax.data.preprocess import sitk


def to_sitk(data, affine, dtype=np.float32):
  """Array [X, Y, Z] with voxel -> RAS mm `affine` [4, 4] -> sitk.Image."""
  affine = np.asarray(affine, np.float64)
  spacing = np.linalg.norm(affine[:3, :3], axis=0)
  # sitk arrays are [Z, Y, X].
  image = sitk().GetImageFromArray(
      np.ascontiguousarray(np.asarray(data, dtype).transpose(2, 1, 0)))
  image.SetSpacing(tuple(float(s) for s in spacing))
  image.SetOrigin(tuple(float(o) for o in affine[:3, 3]))
  image.SetDirection(tuple(float(d) for d in (affine[:3, :3] / spacing).ravel()))
  return image


def from_sitk(image):
  """sitk.Image -> array [X, Y, Z]."""
  return sitk().GetArrayFromImage(image).transpose(2, 1, 0)


def affine_of(image):
  """The voxel -> RAS mm [4, 4] affine of a sitk.Image (see module doc)."""
  affine = np.eye(4)
  direction = np.reshape(image.GetDirection(), (3, 3))
  affine[:3, :3] = direction * np.asarray(image.GetSpacing())
  affine[:3, 3] = image.GetOrigin()
  return affine


def reference(shape, affine):
  """An empty sitk.Image defining an output grid (for resampling)."""
  return to_sitk(np.zeros(shape, np.uint8), affine, np.uint8)
