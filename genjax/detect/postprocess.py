"""Post-processing of anomaly maps, generic over methods.

  erode        the brain mask shrunk by `anomaly.erode_brain` pixels before
               scoring: reconstructions are worst at the brain's edge (partial
               volume, skull-stripping leftovers), so many papers score only
               the eroded brain. Pixels outside it get score 0; they still
               count in every metric (a lesion there is missed, not dropped).
  remove_small_components
               connected components of a THRESHOLDED map with fewer than
               `anomaly.min_component` pixels removed (isolated false
               positives); applied where the detector binarises its maps
               (Dice at a threshold, prediction maps, lesion counts).
The median filter (`scores.median_filter`) is the third, applied to scores.
"""

import jax.numpy as jnp
import numpy as np
import scipy.ndimage

# 8-connectivity in a slice, as genjax.metrics.lesions counts lesions.
_CONNECTIVITY_8 = np.ones((3, 3), bool)


def erode(mask, pixels):
  """Binary erosion of each [H, W] plane, `pixels` times.

  Matches `scipy.ndimage.binary_erosion(plane, iterations=pixels)`: the
  4-neighbour cross structure (so the result is the mask minus every pixel
  within L1 distance `pixels` of the background) and pixels beyond the image
  border counted as background.

  Args:
    mask: [B, H, W, 1] in {0, 1} (anything > 0.5 is inside).
    pixels: static int >= 0; 0 returns the mask binarised.

  Returns:
    [B, H, W, 1] float32 in {0, 1}.
  """
  m = mask > 0.5
  for _ in range(int(pixels)):
    p = jnp.pad(m, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=False)
    m = (m & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2]
         & p[:, 1:-1, 2:])
  return m.astype(jnp.float32)


def remove_small_components(mask, min_size):
  """Drops the 8-connected components of a 2D mask smaller than min_size.

  Args:
    mask: [H, W] bool (a thresholded anomaly map).
    min_size: components with fewer pixels are removed; 0 or 1 keep all.

  Returns:
    [H, W] bool.
  """
  mask = np.asarray(mask, bool)
  if min_size <= 1 or not mask.any():
    return mask
  labels, _ = scipy.ndimage.label(mask, structure=_CONNECTIVITY_8)
  sizes = np.bincount(labels.ravel())
  keep = sizes >= min_size
  keep[0] = False  # Background.
  return keep[labels]
