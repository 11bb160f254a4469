"""Brain extraction: the template's brain mask, refined by intensity.

On the output (MNI) grid the registered template brain mask is already a
brain mask up to the registration's error and the subject's non-affine
anatomy. It is refined where that error lives, near its surface: deep inside
it (eroded) everything is brain; in a shell around it (dilated) a voxel is
brain when it is bright enough to be tissue: the CSF rim and the skull just
outside a T1 brain are dark, and the bright scalp lies beyond the shell.
"""

import numpy as np
from scipy import ndimage

from genjax.data.preprocess import bias

CORE_EROSION_MM = 4.0  # Surely brain: the template mask eroded by this.
SHELL_DILATION_MM = 4.0  # Maybe brain: the template mask dilated by this.
# Tissue threshold in the shell, relative to the median inside the core
# (mostly WM/GM ~ 0.85 of WM): between CSF/skull (< 0.35) and GM (~0.75).
TISSUE_FRACTION = 0.45


def _ball(radius_vox):
  r = max(int(np.ceil(radius_vox)), 1)
  x = np.arange(-r, r + 1)
  return (x[:, None, None]**2 + x[None, :, None]**2
          + x[None, None, :]**2) <= max(radius_vox, 1.0)**2 + 1e-6


def brain_mask(image, template_brain, voxel_mm):
  """Brain mask on the output grid.

  Args:
    image: float [X, Y, Z], registered (bias-corrected) head on the grid.
    template_brain: bool [X, Y, Z], the template's brain mask on the grid.
    voxel_mm: the grid's voxel size.

  Returns:
    uint8 [X, Y, Z] in {0, 1}.
  """
  core = ndimage.binary_erosion(template_brain,
                                _ball(CORE_EROSION_MM / voxel_mm))
  shell = ndimage.binary_dilation(template_brain,
                                  _ball(SHELL_DILATION_MM / voxel_mm))
  level = float(np.median(image[core])) if core.any() else 0.0
  mask = core | (shell & (image > TISSUE_FRACTION * level))
  mask = ndimage.binary_opening(mask) | core  # Drop specks, keep the core.
  mask = ndimage.binary_fill_holes(bias.largest_component(mask))
  return mask.astype(np.uint8)
