"""The example schema every genjax slice dataset shares, and volumes to examples.

One example per axial slice (or per 2D slice file): the raw image, its lesion
and brain masks, label, subject, slice index, the subject's brain-voxel
intensity percentiles and the volume's affine. The builders
(`genjax.data.builders`) differ only in how they find and read their files;
this is what they all emit.
"""

import numpy as np
import tensorflow_datasets as tfds

from genjax.data import nifti

# Brain-voxel intensity percentiles stored with every slice (of the whole
# volume), the grid `config.data.clip_percentiles` chooses from.
PERCENTILES = (0., 0.1, 0.5, 1., 2., 5., 10., 25., 50., 75., 90., 95., 98.,
               99., 99.5, 99.9, 100.)
LABEL_NAMES = ("healthy", "lesion")


def slice_features(height=None, width=None):
  """The feature schema of every genjax slice dataset.

  Args:
    height: slice height H (the volume's Y size), None if it varies.
    width: slice width W (the volume's X size), None if it varies.

  Returns:
    A `tfds.features.FeaturesDict`; decoded, an example is
      image        float32 [H, W, 1]  raw intensities, displayed orientation
      mask         uint8 [H, W, 1]    lesion {0, 1}
      brain        uint8 [H, W, 1]    brain {0, 1}
      label        int64 []           0 'healthy' / 1 'lesion' (mask.any())
      subject      string []          subject id
      slice        int32 []           axial index k in the RAS volume
      percentiles  float32 [len(PERCENTILES)]  brain-voxel percentiles
      affine       float32 [4, 4]     voxel-to-RAS-mm affine of the volume
  """
  shape = (height, width, 1)
  # zlib: slices are mostly background zeros, so this shrinks the records
  # several-fold; it also allows the unknown H, W of nifti_folder.
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(
          shape=shape, dtype=np.float32, encoding="zlib"),
      "mask": tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                   encoding="zlib"),
      "brain": tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                    encoding="zlib"),
      "label": tfds.features.ClassLabel(names=LABEL_NAMES),
      "subject": tfds.features.Text(),
      "slice": tfds.features.Scalar(dtype=np.int32),
      "percentiles": tfds.features.Tensor(
          shape=(len(PERCENTILES),), dtype=np.float32),
      "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float32),
  })


def display_slice(volume_slice):
  """Axial slice [X, Y] of a RAS volume -> displayed image [Y, X, 1].

  Anterior at the top and the patient's right on the right of the image
  (neurological convention), as ITK-SNAP shows it.
  """
  return np.ascontiguousarray(np.rot90(volume_slice)[..., None])


def volume_examples(subject_id, image, mask, brain, affine):
  """Yields one example per axial slice of a RAS volume.

  Args:
    subject_id: unique subject id (str); keys are `<subject_id>/<k>`.
    image: float [X, Y, Z] raw intensities, RAS orientation.
    mask: lesion mask [X, Y, Z] (> 0 is lesion), or None for a healthy subject.
    brain: brain mask [X, Y, Z] (> 0 is brain); must not be empty.
    affine: [4, 4] voxel-to-RAS-mm affine of `image`.

  Yields:
    (key, example) with the `slice_features()` schema, k = 0 .. Z-1.
  """
  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 3:
    raise ValueError(f"Subject {subject_id}: image must be [X, Y, Z], got "
                     f"shape {image.shape}.")
  if mask is None:
    mask = np.zeros(image.shape, np.uint8)
  mask = (np.asarray(mask) > 0).astype(np.uint8)
  brain = (np.asarray(brain) > 0).astype(np.uint8)
  for name, array in (("mask", mask), ("brain", brain)):
    if array.shape != image.shape:
      raise ValueError(f"Subject {subject_id}: {name} shape {array.shape} "
                       f"differs from the image shape {image.shape}.")
  if not brain.any():
    raise nifti.NiftiError(
        f"Subject {subject_id}: the brain mask is empty (with no brain mask "
        "file, the default brain mask of genjax.data.brainmask found only "
        "background). Check the volume, or give a <stem>_brain.nii.gz mask.")
  # [X, Y, Z] -> [Z, Y, X]: slice k displayed (what display_slice does).
  displayed = lambda v: np.moveaxis(np.rot90(v, axes=(0, 1)), 2, 0)
  yield from stack_examples(subject_id, displayed(image), displayed(mask),
                            displayed(brain), affine,
                            np.arange(image.shape[2]))


def stack_examples(subject_id, images, masks, brains, affine, indices):
  """Yields the examples of one subject's displayed slices.

  What every builder shares: the intensity percentiles over the subject's
  brain pixels (all its slices together, so one subject is normalised one
  way; a subject with one slice is normalised per slice), labels from the
  masks, keys `<subject_id>/<k:04d>`.

  Args:
    subject_id: unique subject id (str).
    images: float [N, H, W] raw intensities, as displayed (row 0 at top).
    masks: lesion masks [N, H, W] (> 0 is lesion).
    brains: brain masks [N, H, W] (> 0 is brain); not empty.
    affine: [4, 4] voxel-to-RAS-mm affine, all zeros for "no affine" (2D
      slices).
    indices: int [N] slice index of each slice, distinct.

  Yields:
    (key, example) with the `slice_features()` schema, in the given order.
  """
  images = np.asarray(images, dtype=np.float32)
  masks = (np.asarray(masks) > 0).astype(np.uint8)
  brains = (np.asarray(brains) > 0).astype(np.uint8)
  affine = np.asarray(affine, dtype=np.float32)
  if affine.shape != (4, 4):
    raise ValueError(f"Subject {subject_id}: affine must be [4, 4], got "
                     f"{affine.shape}.")
  percentiles = np.percentile(images[brains > 0], PERCENTILES).astype(
      np.float32)
  for i, k in enumerate(indices):
    lesion = np.ascontiguousarray(masks[i][..., None])
    yield f"{subject_id}/{int(k):04d}", {
        "image": np.ascontiguousarray(images[i][..., None]),
        "mask": lesion,
        "brain": np.ascontiguousarray(brains[i][..., None]),
        "label": int(lesion.any()),
        "subject": subject_id,
        "slice": np.int32(k),
        "percentiles": percentiles,
        "affine": affine,
    }
