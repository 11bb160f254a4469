"""The default brain mask, for images that come without one.

`image > 0` is a brain mask only for skull-stripped images with a zero
background. Real scans often are not: FLAIR backgrounds are noise (values
1-20 in 8-bit slice sets), z-scored volumes have a constant *negative*
background, and unstripped slices carry a bright skull. `default_brain_mask`
decides which case an image is from its border (the frame's outer ring of
pixels, or the six faces of a volume) and applies one of two rules:

* Constant background (`background_kind` -> 'constant'): at least
  CONSTANT_BORDER_FRACTION of the border voxels hold one value b (0, the
  constant negative of a z-scored volume, the minimum, ...). The image is
  skull-stripped or masked, and the stripping is taken as it is:
  brain = image != b; for volumes, holes enclosed in 3D are filled (voxels of
  value b inside the brain, e.g. CSF at 0 in an 8-bit export); specks (small
  components far from the brain, e.g. hot voxels) are removed. 2D holes are
  NOT filled: a hole in one slice is usually sulcal CSF that the stripping
  left outside the brain and that is open to the outside in 3D.
* Noisy background ('noisy'): a HEAD mask, not a brain mask. Otsu's
  threshold on the image clipped to its OTSU_PERCENTILES (so a few hot voxels
  do not move it), taken on log intensities (so a bright skull does not pull
  it between brain and skull); holes filled (in 3D, then in every axial
  slice, so the ventricles, dark CSF and a brain inside a skull ring are
  inside); the largest connected component (and any other at least
  HEAD_COMPONENT_FRACTION of it); holes filled again. An image whose
  foreground does not stand out from the border noise (MIN_HEAD_CONTRAST)
  has no head: empty mask. On unstripped data the skull and scalp are inside
  the mask: a real brain mask needs skull stripping (`genjax.data.preprocess`,
  see the README, "Real data") or `_brain` mask files.

An image that is all background gives an empty mask; the callers raise an
error naming the file.

Axes: 2D slices are [H, W]; volumes are [X, Y, Z] with Z axial (canonical
RAS, as `genjax.data.nifti` loads them).
"""

from typing import NamedTuple

import numpy as np
from scipy import ndimage

# Share of the border voxels that must hold one value for the background to
# count as constant. A brain touching the frame on one side of a 2D slice
# leaves ~75 % of the border free; 8-bit noise rarely puts more than ~30 % of
# the border on one value.
CONSTANT_BORDER_FRACTION = 0.9
# Intensity range on which Otsu's threshold is computed (percentiles).
OTSU_PERCENTILES = (0.5, 99.5)
OTSU_BINS = 256
# A speck is a component of the constant-background mask smaller than this
# share of the largest component AND farther than SPECK_DISTANCE voxels from
# it. Near islands are kept: cortex cut by the slice plane looks like that.
SPECK_FRACTION = 0.01
SPECK_DISTANCE = 3.0

# A noisy image is a head only if Otsu's foreground stands out from the
# border (the background noise): (median foreground - median border) / robust
# border std must reach this. Pure Rician noise gives 0.4-0.7, a head with an
# 8-bit noise background ~25; below it the mask is empty (the slice is noise,
# e.g. above the head).
MIN_HEAD_CONTRAST = 3.0

# Components of the thresholded head kept besides the largest: those at
# least this share of it (a low slice cuts the head into pieces; noise and
# hot voxels make small ones).
HEAD_COMPONENT_FRACTION = 0.2

RULES = {
    "constant": "brain = image != constant background value",
    "noisy": ("noisy background: head mask (Otsu, largest components, "
              "holes filled; includes the skull if the image is not "
              "skull-stripped)"),
}


class Background(NamedTuple):
  """How the background of an image was classified.

  Attributes:
    kind: 'constant' or 'noisy'.
    value: the most common border value (the background value when
      'constant').
    border_fraction: share of the border voxels equal to `value`.
  """
  kind: str
  value: float
  border_fraction: float

  def describe(self):
    """One line for logs and reports."""
    return (f"{self.kind} background: {self.border_fraction:.0%} of the border "
            f"voxels equal {self.value:.6g} (constant needs >= "
            f"{CONSTANT_BORDER_FRACTION:.0%}); {RULES[self.kind]}")


def _check(image):
  image = np.asarray(image)
  if image.ndim not in (2, 3):
    raise ValueError(f"need a 2D slice [H, W] or a 3D volume [X, Y, Z], got "
                     f"shape {image.shape}.")
  if image.dtype.kind not in "biuf":
    raise ValueError(f"need a numeric image, got dtype {image.dtype}.")
  return image


def _border(image):
  """The values on the frame's outer ring (2D) or six faces (3D), flat."""
  faces = []
  for axis in range(image.ndim):
    faces.append(np.take(image, 0, axis=axis).ravel())
    faces.append(np.take(image, -1, axis=axis).ravel())
  return np.concatenate(faces)


def _tolerance(image):
  # Float exports of one constant can differ in the last bits.
  span = float(np.max(image)) - float(np.min(image))
  return 1e-6 * span


def background(image):
  """Classifies the background of `image` from its border.

  Args:
    image: [H, W] or [X, Y, Z], numeric.

  Returns:
    A `Background` (kind 'constant' or 'noisy', the most common border value
    and its share of the border).
  """
  image = _check(image)
  border = _border(image).astype(np.float64)
  values, counts = np.unique(border, return_counts=True)
  value = values[np.argmax(counts)]
  fraction = np.mean(np.abs(border - value) <= _tolerance(image))
  kind = "constant" if fraction >= CONSTANT_BORDER_FRACTION else "noisy"
  return Background(kind, float(value), float(fraction))


def background_kind(image):
  """'constant' or 'noisy'; `background(image).describe()` says why."""
  return background(image).kind


def otsu_threshold(values, nbins=OTSU_BINS):
  """Otsu's threshold over a `nbins` histogram of `values` (min..max).

  The same computation as skimage.filters.threshold_otsu for float input
  (scikit-image is only a test dependency of genjax).

  Args:
    values: array of any shape.
    nbins: histogram bins.

  Returns:
    The bin centre that maximises the between-class variance (float);
    pixels > it are foreground. A constant input returns its value.
  """
  values = np.asarray(values, np.float64).ravel()
  lo, hi = values.min(), values.max()
  if lo == hi:
    return float(lo)
  counts, edges = np.histogram(values, nbins, range=(lo, hi))
  centres = (edges[:-1] + edges[1:]) / 2
  # Class weights and means for every split point between bins i and i+1;
  # the first bin holds the minimum and the last the maximum, so no weight
  # is zero.
  w0 = np.cumsum(counts)
  w1 = np.cumsum(counts[::-1])[::-1]
  m0 = np.cumsum(counts * centres) / w0
  m1 = (np.cumsum((counts * centres)[::-1]) / w1[::-1])[::-1]
  between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
  return float(centres[np.argmax(between)])


def _large_components(mask):
  """The largest component and those >= HEAD_COMPONENT_FRACTION of it."""
  labels, n = ndimage.label(mask)
  if n <= 1:
    return mask
  sizes = np.bincount(labels.ravel())[1:]
  keep = 1 + np.flatnonzero(sizes >= HEAD_COMPONENT_FRACTION * sizes.max())
  return np.isin(labels, keep)


def _fill_holes(mask, per_slice):
  """Fills holes in the mask's own dimension, then per axial slice."""
  mask = ndimage.binary_fill_holes(mask)
  if per_slice and mask.ndim == 3:
    for z in range(mask.shape[2]):
      mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
  return mask


def _remove_specks(mask):
  """Drops small components far from the largest one (see SPECK_*)."""
  labels, n = ndimage.label(mask, np.ones((3,) * mask.ndim, bool))
  if n <= 1:
    return mask
  sizes = np.bincount(labels.ravel())[1:]
  largest = 1 + np.argmax(sizes)
  distance = ndimage.distance_transform_edt(labels != largest)
  nearest = ndimage.minimum(distance, labels, np.arange(1, n + 1))
  speck = (sizes < SPECK_FRACTION * sizes.max()) & (
      np.asarray(nearest) > SPECK_DISTANCE)
  return mask & ~np.isin(labels, 1 + np.flatnonzero(speck))


def head_contrast(image, foreground):
  """How far `foreground` stands out from the border, in border noise stds.

  Args:
    image: [H, W] or [X, Y, Z] float.
    foreground: bool mask of the image's shape (Otsu's foreground).

  Returns:
    (median foreground - median border) / (border IQR / 1.349); the IQR is
    robust to the tissue that crosses the border (a neck through the bottom
    face) and is floored at 1e-3 of the image range.
  """
  if not foreground.any():
    return 0.0
  median = np.median(_border(image))
  return float((np.median(image[foreground]) - median) / _noise_scale(image))


def _noise_scale(image):
  """Robust std of the border (IQR / 1.349), >= 1e-3 of the range."""
  q25, q75 = np.percentile(_border(image), (25, 75))
  return max((q75 - q25) / 1.349, 1e-3 * (image.max() - image.min()))


def head_mask(image):
  """Head (or brain) mask of an image with a noisy background.

  Otsu's threshold on the log of the image clipped to its OTSU_PERCENTILES
XX

  Args:
    image: [H, W] or [X, Y, Z], numeric.

  Returns:
    uint8 mask of the image's shape, {0, 1}; it includes the skull on
    unstripped images. Empty when the foreground does not stand out from
    the border noise (MIN_HEAD_CONTRAST): an image of noise has no head.
  """
  image = _check(image).astype(np.float64)
  lo, hi = np.percentile(image, OTSU_PERCENTILES)
  if lo == hi:
    return np.zeros(image.shape, np.uint8)
  clipped = np.clip(image, lo, hi)
  # Otsu on log intensities above the floor, offset by the noise scale: a
  # bright skull is then close to the brain and far from the noise, so the
  # threshold falls between background and head, not between brain and
  # skull (where plain Otsu puts it when the skull is a large share of the
  # frame, leaving the head open at the top of the skull).
  logs = np.log(clipped - lo + _noise_scale(clipped))
  mask = logs > otsu_threshold(logs)
  if head_contrast(clipped, mask) < MIN_HEAD_CONTRAST:
    return np.zeros(image.shape, np.uint8)
  # Fill before choosing components: a skull ring separated from the brain
  # by dark CSF encloses it only once its inside is filled.
  mask = _large_components(_fill_holes(mask, per_slice=True))
  mask = _fill_holes(mask, per_slice=True)
  return mask.astype(np.uint8)


def default_brain_mask(image, bg=None):
  """The brain mask of an image that has no mask file (rule: module doc).

  Args:
    image: a 2D slice [H, W] or a volume [X, Y, Z], numeric.
    bg: `background(image)`, if the caller already has it (e.g. to log the
      rule that was used).

  Returns:
    uint8 mask of the image's shape, {0, 1}: the brain for skull-stripped
    images (constant background), the head for noisy backgrounds. Empty for
    an all-background image.
  """
  image = _check(image)
  bg = background(image) if bg is None else bg
  if bg.kind == "noisy":
    return head_mask(image)
  mask = np.abs(image.astype(np.float64) - bg.value) > _tolerance(image)
  if not mask.any():
    return mask.astype(np.uint8)
  if mask.ndim == 3:  # 3D holes only: 2D ones are often stripped sulci.
    mask = ndimage.binary_fill_holes(mask)
  return _remove_specks(mask).astype(np.uint8)
