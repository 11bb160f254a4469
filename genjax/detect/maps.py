"""Anomaly maps on the stored grid: NIfTI with the subject's affine, or PNGs.

Per-subject anomaly maps are reassembled from the slices, mapped back from
the model's image_size grid to the stored slice grid (undoing the pipeline's
resize-and-pad and the builders' display rotation) and written as NIfTI with
the subject's own affine: DIR/detect/maps/<subject>_anomaly.nii.gz (residual)
and <subject>_prediction.nii.gz (thresholded), which overlay the input in
ITK-SNAP or 3D Slicer. Datasets without an affine (all zeros) get a .npy stack
and a PNG per slice instead.
"""

from absl import logging
import matplotlib
import numpy as np
import tensorflow as tf

from genjax import files
from genjax import viz
from genjax.data import builders
from genjax.data import nifti


# --- From the model grid back to the stored volume ----------------------------


def fit_geometry(height, width, size):
  """Where the pipeline put an [height, width] slice in its [size, size] image.

  Mirrors `genjax.data.pipeline._fit` (resize the longer side to `size`,
  keep the aspect ratio, pad centred).

  Returns:
    (top, left, new_h, new_w).
  """
  scale = size / max(height, width)
  new_h = max(1, int(np.round(height * scale)))
  new_w = max(1, int(np.round(width * scale)))
  return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def to_stored_grid(image, height, width, method="bilinear"):
  """Undoes the pipeline's resize-and-pad of one slice.

  Args:
    image: [S, S] map on the model grid.
    height, width: the stored slice's [H, W].
    method: 'bilinear' for scores, 'nearest' for binary maps.

  Returns:
    float32 [height, width].
  """
  size = image.shape[0]
  top, left, new_h, new_w = fit_geometry(height, width, size)
  crop = np.asarray(image, np.float32)[top:top + new_h, left:left + new_w]
  if (new_h, new_w) == (height, width):
    return crop
  out = tf.image.resize(crop[..., None], [height, width], method=method,
                        antialias=method != "nearest")
  return out.numpy()[..., 0]


def slice_to_volume_plane(image):
  """Displayed slice [Y, X] -> RAS volume plane [X, Y].

  Inverse of `genjax.data.builders.display_slice` (image = rot90(plane)).
  """
  return np.rot90(np.asarray(image), k=-1)


def volume_geometry(data_config, split):
  """Where each stored slice of `split` sits: shapes, depth and affine.

  Reads `affine` and the slice shapes straight from the dataset, since eval
  batches carry neither.

  Returns:
    {subject: {"shapes": {k: (H, W)}, "depth": Z, "affine": [4, 4]}}; Z is
    1 + the largest stored slice index (filtered-out slices included).
  """
  ds = builders.load_split(data_config, split).map(
      lambda ex: {"subject": ex["subject"], "slice": ex["slice"],
                  "shape": tf.shape(ex["image"])[:2],
                  "affine": ex["affine"]})
  out = {}
  for ex in ds.as_numpy_iterator():
    k = int(ex["slice"])
    geometry = out.setdefault(ex["subject"].decode("utf-8"), {
        "shapes": {}, "depth": 0,
        "affine": np.asarray(ex["affine"], np.float64)})
    geometry["shapes"][k] = tuple(int(v) for v in ex["shape"])
    geometry["depth"] = max(geometry["depth"], k + 1)
  return out


def write_subject_maps(out_dir, subject, geometry, slices, write_png=True):
  """Writes one subject's anomaly (and prediction) maps.

  With an affine: <subject>_anomaly.nii.gz (residuals) and
  <subject>_prediction.nii.gz (thresholded), on the stored voxel grid with
  the subject's affine. Without one (all zeros: 2D slice folders):
  <subject>_anomaly.npy [N, H, W] (the scored slices in index order),
  <subject>_slices.npy [N] (their indices) and <subject>_slice<k>_anomaly.png
  per slice (colour, on the subject's common scale); slices of
  different stored shapes are kept on the model grid [N, S, S] instead.

  Args:
    out_dir: folder of the maps (local or an epath URL).
    subject: subject id (used in the file names).
    geometry: this subject's entry of `volume_geometry`.
    slices: {k: (residual [S, S], prediction [S, S] bool)} on the model grid.
    write_png: with a zero affine, also write a PNG per slice.

  Returns:
    The paths written.
  """
  affine, shapes = geometry["affine"], geometry["shapes"]
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in subject)
  if not np.any(affine):
    ks = sorted(slices)
    if len({shapes[k] for k in ks}) == 1:
      stack = [to_stored_grid(slices[k][0], *shapes[k]) for k in ks]
    else:
      logging.warning("Slices of %s differ in shape; its .npy anomaly maps "
                      "stay on the model grid.", subject)
      stack = [slices[k][0] for k in ks]
    stack = np.stack(stack).astype(np.float32)
    paths = [files.save_npy(files.join(out_dir, f"{safe}_anomaly.npy"),
                            stack),
             files.save_npy(files.join(out_dir, f"{safe}_slices.npy"),
                            np.asarray(ks))]
    if write_png:
      # One PNG per slice, named by its index, on the subject's common scale.
      top = max(float(stack.max()), 1e-6)
      for k, residual in zip(ks, stack):
        paths.append(viz.save_png(
            files.join(out_dir, f"{safe}_slice{k:04d}_anomaly.png"),
            colorize(residual[None] / top)[0]))
    return paths
  # A volume's slices share one in-plane shape.
  height, width = next(iter(shapes.values()))
  depth = geometry["depth"]
  anomaly = np.zeros((width, height, depth), np.float32)
  prediction = np.zeros((width, height, depth), np.uint8)
  for k, (residual, predicted) in slices.items():
    anomaly[:, :, k] = slice_to_volume_plane(
        to_stored_grid(residual, height, width))
    prediction[:, :, k] = slice_to_volume_plane(
        to_stored_grid(predicted.astype(np.float32), height, width,
                       "nearest") > 0.5)
  paths = [files.join(out_dir, f"{safe}_anomaly.nii.gz"),
           files.join(out_dir, f"{safe}_prediction.nii.gz")]
  nifti.save_volume(paths[0], anomaly, affine)
  nifti.save_volume(paths[1], prediction, affine)
  return paths


def colorize(maps, cmap="inferno"):
  """[N, H, W] values in [0, 1] -> uint8 [N, H, W, 3] through a colormap."""
  rgba = matplotlib.colormaps[cmap](np.clip(np.asarray(maps), 0.0, 1.0))
  return np.round(rgba[..., :3] * 255).astype(np.uint8)


class MapWriter:
  """Collects one subject's slices at a time and writes its maps.

  Slices of a subject are contiguous in the eval batches (the builders store
  them in subject order), so only one subject is held in memory.
  """

  def __init__(self, out_dir, geometry, split):
    self.out_dir, self.geometry, self.split = out_dir, geometry, split
    self.subject, self.slices, self.done, self.paths = None, {}, set(), []

  def add(self, subject, k, residual, predicted):
    if subject != self.subject:
      self.flush()
      if subject in self.done:
        raise ValueError(
            f"Subject {subject!r} of split {self.split!r} comes back after "
            "other subjects: the dataset is not stored in subject order, so "
            "its volume cannot be reassembled. Rebuild it with genjax's "
            "builders.")
      if subject not in self.geometry:
        raise KeyError(f"Subject {subject!r} is in the eval batches but not "
                       f"in split {self.split!r} of the dataset.")
      self.subject = subject
    self.slices[k] = (residual, predicted)

  def flush(self):
    if self.subject is not None:
      self.paths += write_subject_maps(self.out_dir, self.subject,
                                       self.geometry[self.subject],
                                       self.slices)
      self.done.add(self.subject)
    self.subject, self.slices = None, {}
    return self.paths


def voxel_ml_fn(geometry, size):
  """subject -> ml of one model-grid voxel (None without an affine)."""
  def voxel_ml(subject):
    g = geometry[subject]
    if not np.any(g["affine"]):
      return None
    height, width = next(iter(g["shapes"].values()))
    _, _, new_h, new_w = fit_geometry(height, width, size)
    return (abs(np.linalg.det(g["affine"][:3, :3])) / 1000.0 * height * width
            / (new_h * new_w))
  return voxel_ml
