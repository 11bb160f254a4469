"""Rough head mask and N4 bias-field correction."""

import numpy as np
from scipy import ndimage

from genjax.data.preprocess import sitk
from genjax.data.preprocess import sitkio

HEAD_OTSU_FRACTION = 0.5
HEAD_CLOSING = 2  # Voxels.
# N4 runs on the image shrunk to about this voxel size (mm): the bias field
# is smooth over ~10 cm, so fitting it at 1 mm only costs time.
N4_VOXEL_MM = 8.0
N4_ITERATIONS = (30, 20, 10)  # Per fitting level (B-spline mesh doubling).
N4_CONTROL_POINTS = 4  # Initial B-spline mesh, per axis.


def otsu_threshold(values, bins=256):
  """Otsu's threshold of a 1D array (maximises between-class variance)."""
  values = np.asarray(values, np.float64)
  hist, edges = np.histogram(values, bins=bins)
  centres = (edges[:-1] + edges[1:]) / 2
  weight = np.cumsum(hist).astype(np.float64)
  total = weight[-1]
  mean = np.cumsum(hist * centres)
  w0, w1 = weight[:-1], total - weight[:-1]
  ok = (w0 > 0) & (w1 > 0)
  m0 = np.where(ok, mean[:-1] / np.maximum(w0, 1), 0)
  m1 = np.where(ok, (mean[-1] - mean[:-1]) / np.maximum(w1, 1), 0)
  between = np.where(ok, w0 * w1 * (m0 - m1)**2, -1)
  return float(edges[1:][:-1][np.argmax(between)])


def largest_component(mask):
  """The largest 6-connected component of a boolean mask (empty stays)."""
  labels, n = ndimage.label(mask)
  if n <= 1:
    return mask.astype(bool)
  sizes = np.bincount(labels.ravel())
  sizes[0] = 0
  return labels == np.argmax(sizes)


def head_mask(image):
  """Rough head mask: low Otsu foreground, largest component, holes filled.

  Most of a raw frame is air, so Otsu's threshold lands between air and the
  brain (~0.4 WM) and loses CSF and the thin scalp; half of it still sits
  well above the Rician air floor and keeps the whole head. A closing seals
  gaps in the scalp so that filling holes recovers the dark skull and CSF
  (per 3D volume, then per axial slice for holes open at the field of view).

  Args:
    image: float [X, Y, Z].

  Returns:
    bool [X, Y, Z].
  """
  # Clip the bright tail (fat, vessels) so it does not pull the threshold up.
  hi = np.percentile(image, 99.5)
  threshold = HEAD_OTSU_FRACTION * otsu_threshold(np.minimum(image, hi).ravel())
  foreground = ndimage.binary_opening(image > threshold)
  mask = largest_component(foreground)
  pad = HEAD_CLOSING + 1  # Closing near the border must not erode the edge.
  mask = ndimage.binary_closing(np.pad(mask, pad), iterations=HEAD_CLOSING)
  mask = ndimage.binary_fill_holes(mask[(slice(pad, -pad),) * 3])
  for k in range(mask.shape[2]):
    mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
  return mask


def n4(image, affine, mask):
  """N4 bias-field correction inside `mask`.

  The field is fitted on a shrunk copy (N4_VOXEL_MM voxels) and then
  evaluated at full resolution from N4's B-spline fit, so the full-resolution
  image is divided by a smooth field.

  Args:
    image: float [X, Y, Z], non-negative intensities.
    affine: [4, 4] voxel -> RAS mm.
    mask: bool [X, Y, Z], where to fit (the head).

  Returns:
    (corrected float32 [X, Y, Z], field float32 [X, Y, Z]) with
    corrected = image / field; the field's log has zero mean in the mask.
  """
  sitk_ = sitk()
  spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
  shrink = [max(1, int(round(N4_VOXEL_MM / s))) for s in spacing]
  # N4 works on log intensities: keep them positive.
  floor = max(float(np.percentile(image[mask], 1)) * 1e-3, 1e-6)
  full = sitkio.to_sitk(np.maximum(image, floor), affine)
  full_mask = sitkio.to_sitk(mask, affine, np.uint8)
  small = sitk_.Shrink(full, shrink)
  small_mask = sitk_.Shrink(full_mask, shrink)
  corrector = sitk_.N4BiasFieldCorrectionImageFilter()
  corrector.SetMaximumNumberOfIterations(list(N4_ITERATIONS))
  corrector.SetNumberOfControlPoints([N4_CONTROL_POINTS] * 3)
  corrector.Execute(small, small_mask)
  log_field = sitkio.from_sitk(corrector.GetLogBiasFieldAsImage(full))
  log_field = log_field - log_field[mask].mean()
  field = np.exp(log_field).astype(np.float32)
  return (image / field).astype(np.float32), field
