"""What the NIfTI layouts share: the Subject record, file listing and pairing,
stable hash splits and label maps.

A layout module (`custom`, `ixi`, `atlas`, `brats`, `mslub`, `wmh`) defines one
`LAYOUT = Layout(...)` whose `find(manual_dir, modality)` lists the subjects
of a folder laid out as that dataset ships. Everything here is pure file
listing: no voxel is read except by `load_labels`.
"""

import dataclasses
import hashlib
import pathlib
import re
from typing import Callable, NamedTuple, Optional

from absl import logging
import numpy as np

from genjax import config as config_lib
from genjax.data import nifti

# Every split a genjax dataset may have; a builder emits those it has data for.
SPLITS = ("train", "train_mixed", "validation", "test")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
BRAIN_SUFFIX = "_brain"  # Every layout: optional <image stem>_brain.nii[.gz].


class Labels(NamedTuple):
  """How to read a layout's label map (a lesion mask with several values).

  Attributes:
    values: every value the map may hold; any other is an error.
    lesion: the values that are lesion (the rest of `values` is not).
    ignore: values that are neither lesion nor healthy: taken out of the brain
      mask, so they are scored neither way (WMH's 'other pathology').
  """
  values: tuple
  lesion: tuple
  ignore: tuple = ()


class Subject(NamedTuple):
  """One volume to convert: its files (None: no such file).

  Attributes:
    subject_id: unique id (str) within the dataset.
    image: the chosen modality's volume.
    mask: lesion mask or label map (None: a healthy subject).
    brain: user brain mask (None: none given; the builder computes one).
    modalities: every modality of the subject, name -> path (includes the
      chosen one).
    labels: how to binarise `mask` (a `Labels`); None: > 0 is lesion.
  """
  subject_id: str
  image: pathlib.Path
  mask: Optional[pathlib.Path]
  brain: Optional[pathlib.Path]
  modalities: dict = {}
  labels: Optional[Labels] = None


@dataclasses.dataclass(frozen=True)
class Layout:
  """A dataset's on-disk layout (one `nifti_folder` builder config).

  Attributes:
    name: the builder config name, e.g. 'brats'.
    find: (manual_dir: pathlib.Path, modality: str or None) ->
      {split: [Subject]}; may return empty splits (dropped by the caller).
    modalities: the modality names `config.data.modality` may take (empty:
      the layout has one unnamed image per subject).
    default_modality: the modality used when `config.data.modality` is None.
    splits: the splits the layout can produce.
    description: one line.
    tree: the folder tree under manual_dir, as text (README and errors).
    download: where the data comes from.
    contents: one phrase, what manual_dir must hold (for error messages).
  """
  name: str
  find: Callable
  modalities: tuple
  default_modality: Optional[str]
  splits: tuple
  description: str
  tree: str
  download: str
  contents: str


def stem(path):
  """'a/b/sub-1_T1w.nii.gz' -> 'sub-1_T1w'; None if not a NIfTI file name."""
  for suffix in NIFTI_SUFFIXES:
    if path.name.endswith(suffix):
      return path.name[:-len(suffix)]
  return None


def _is_hidden(path, root):
  return any(part.startswith(".") for part in path.relative_to(root).parts)


def nifti_files(folder, recursive=False):
  """{parent/stem: path} of the NIfTI files in `folder`.

  Hidden files and folders (OS debris such as macOS '._x.nii.gz') are skipped;
  two files of one volume (x.nii and x.nii.gz) are an error.
  """
  paths = folder.rglob("*") if recursive else folder.iterdir()
  files = {}
  for path in sorted(paths):
    name = stem(path)
    if name is None or _is_hidden(path, folder) or not path.is_file():
      continue
    key = str(path.parent / name)
    if key in files:
      raise nifti.NiftiError(
          f"{files[key]} and {path}: two files for the same volume. Keep "
          "one of them.")
    files[key] = path
  return files


def pair_files(files, image_pattern, mask_key, mask_required,
               mask_suffix=None):
  """Matches images with their lesion and brain masks.

  Args:
    files: {parent/stem: path} from `nifti_files`.
    image_pattern: regex an image stem must fully match.
    mask_key: image key -> the key of its lesion mask, or None if the layout
      has no lesion masks.
    mask_required: a missing lesion mask is an error (else: healthy).
    mask_suffix: stem ending of lesion masks, to report orphans.

  Returns:
    [(image, mask or None, brain or None)] sorted by image path.
  """
  images = {k: p for k, p in files.items()
            if re.fullmatch(image_pattern, pathlib.Path(k).name)}
  used = set(images)
  triples = []
  for key, image in sorted(images.items()):
    mkey = mask_key(key) if mask_key else None
    mask = files.get(mkey) if mkey else None
    brain = files.get(key + BRAIN_SUFFIX)
    if mkey and mask is None and mask_required:
      raise nifti.NiftiError(
          f"{image}: no lesion mask {pathlib.Path(mkey).name}.nii.gz next to "
          "it. This layout needs one per image: add it, or remove the image.")
    used.update(p for p in (mkey, key + BRAIN_SUFFIX) if p in files)
    triples.append((image, mask, brain))
  for key, path in sorted(files.items()):
    name = pathlib.Path(key).name
    is_mask = bool(mask_suffix) and name.endswith(mask_suffix)
    if key not in used and (is_mask or name.endswith(BRAIN_SUFFIX)):
      raise nifti.NiftiError(
          f"{path}: a mask with no matching image (expected the image "
          "next to it, named like the mask without its suffix). Add the "
          "image or remove the mask.")
  ignored = sorted(str(p) for k, p in files.items() if k not in used)
  if ignored:
    logging.warning("Ignoring %d NIfTI files that are neither images nor "
                    "masks of this layout: %s", len(ignored),
                    ", ".join(ignored[:10]))
  return triples


def find_file(folder, names):
  """The first `<name>.nii.gz` or `<name>.nii` in `folder`, or None."""
  for name in names:
    for suffix in NIFTI_SUFFIXES:
      path = folder / f"{name}{suffix}"
      if path.is_file():
        return path
  return None


def hash_percent(subject_id):
  """A stable bucket in [0, 100) from a subject id (sha256, not hash())."""
  digest = hashlib.sha256(subject_id.encode("utf-8")).hexdigest()
  return int(digest[:8], 16) % 100


def patient_split(subject_id, validation_percent):
  """'validation' or 'test' for a patient of a patients-only dataset."""
  return ("validation" if hash_percent(subject_id) < validation_percent
          else "test")


def load_labels(path, labels, image_shape, image_affine, image_path=None):
  """Reads a label map on an image's grid and splits it by `labels`.

  Args:
    path: the label map (.nii / .nii.gz).
    labels: a `Labels`.
    image_shape: [X, Y, Z] of the image from `nifti.load_volume`.
    image_affine: its [4, 4] affine.
    image_path: the image, named in errors.

  Returns:
    (lesion, ignore): uint8 [X, Y, Z] in {0, 1} each, RAS like the image.

  Raises:
    NiftiError: what `nifti.load_mask` rejects (shape, affine, bad file), or a
      value outside `labels.values` (the file and the values named).
  """
  # load_mask does the file and grid checks; the values need the raw map.
  nifti.load_mask(path, image_shape, image_affine, image_path=image_path)
  data, _ = nifti.load_volume(path)
  found = np.unique(data)
  bad = sorted(set(found.tolist()) - {float(v) for v in labels.values})
  if bad:
    shown = ", ".join(f"{v:g}" for v in bad[:10])
    raise nifti.NiftiError(
        f"{path}: label values {shown} are outside this dataset's labels "
        f"{sorted(labels.values)} (found {[f'{v:g}' for v in found[:20]]}). "
        "Use the label map as the dataset ships it (a resampled map must use "
        "nearest-neighbour interpolation).")
  lesion = np.isin(data, labels.lesion).astype(np.uint8)
  ignore = np.isin(data, labels.ignore).astype(np.uint8)
  return lesion, ignore


def check_modality(layout, modality):
  """The layout's spelling of `modality` (case-insensitive); None: default.

  Raises:
    ConfigError: a modality the layout does not have (the valid ones listed).
  """
  if modality is None:
    return layout.default_modality
  by_lower = {m.lower(): m for m in layout.modalities}
  if modality.lower() not in by_lower:
    valid = (", ".join(map(repr, layout.modalities)) if layout.modalities
             else "none (leave it None)")
    raise config_lib.ConfigError(
        f"config.data.modality={modality!r}: nifti_folder/{layout.name} has "
        f"no such modality; use one of {valid}.")
  return by_lower[modality.lower()]
