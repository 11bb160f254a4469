"""Dataset layouts: where each benchmark dataset keeps its files.

One small module per layout, behind one registry:

  LAYOUTS        nifti_folder configs: custom, ixi, atlas, brats, mslub, wmh
                 (name -> `common.Layout`: modalities, default modality,
                 splits, folder tree, download page).
  SLICE_LAYOUTS  slice_folder configs: custom, kaggle_lgg.

`find_subjects(layout, manual_dir, modality)` lists a folder's subjects by
split; the TFDS builders (`genjax.data.builders`) and the preprocessing read
volumes through it, so every layout is found, checked and named one way.
"""

import hashlib
import os
import pathlib
import textwrap

from genjax.data import nifti
from genjax.data import slices
from genjax.data.layouts import atlas
from genjax.data.layouts import brats
from genjax.data.layouts import common
from genjax.data.layouts import custom
from genjax.data.layouts import ixi
from genjax.data.layouts import kaggle_lgg
from genjax.data.layouts import mslub
from genjax.data.layouts import slices_custom
from genjax.data.layouts import wmh

Labels = common.Labels
Layout = common.Layout
Subject = common.Subject
SliceSubject = slices_custom.SliceSubject
SPLITS = common.SPLITS
check_modality = common.check_modality
ixi_split = ixi.ixi_split
kaggle_split = kaggle_lgg.kaggle_split
load_labels = common.load_labels
SLICE_INSTRUCTIONS = slices_custom.SLICE_INSTRUCTIONS

LAYOUTS = {m.LAYOUT.name: m.LAYOUT
           for m in (custom, ixi, atlas, brats, mslub, wmh)}
SLICE_LAYOUTS = {m.LAYOUT.name: m.LAYOUT for m in (slices_custom, kaggle_lgg)}

_HEADER = """\
genjax reads NIfTI volumes (.nii or .nii.gz) that you put under `manual_dir`
(config.data.manual_dir, e.g. --config.data.manual_dir=~/data/ixi), laid out
as the dataset ships. Volumes are reoriented to RAS and sliced axially, not
resampled; for models trained on MNI-registered data, preprocess raw scans
first (genjax.data.preprocess). A brain mask is optional everywhere: put
`<stem>_brain.nii[.gz]` next to the image `<stem>.nii[.gz]`; without it the
brain is genjax.data.brainmask.default_brain_mask(image) (image > background
for a constant background, else an Otsu head mask). Masks must be on the
image's voxel grid. config.data.modality picks the sequence of multi-modal
layouts (None: the layout's default); each modality is its own prepared
dataset.
"""


def _instructions():
  parts = [_HEADER]
  for layout in LAYOUTS.values():
    modalities = (f" Modalities: {', '.join(layout.modalities)} (default "
                  f"{layout.default_modality})." if layout.modalities else "")
    parts.append(textwrap.fill(
        f"config '{layout.name}': {layout.description}{modalities} Splits: "
        f"{', '.join(layout.splits)}. From {layout.download}.", 78)
                 + f"\n{layout.tree}\n")
  parts.append(textwrap.fill(
      "The prepared dataset is cached in data_dir/nifti_folder/<config>/ "
      "(<layout>_<modality>/ for a modality other than the default); genjax "
      "refuses to use it if the files under manual_dir change; delete that "
      "folder to rebuild.", 78) + "\n")
  return "\n".join(parts)


MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions()


def config_name(layout, modality=None):
  """The builder config (and cache folder) name of a layout and modality.

  The default modality keeps the layout's name ('brats'), so datasets built
  before modalities existed stay valid; any other is '<layout>_<modality>'
  ('brats_t2'), so two modalities never share a prepared dataset.

  Raises:
    ConfigError: a modality the layout does not have.
  """
  spec = LAYOUTS[layout]
  modality = common.check_modality(spec, modality)
  if modality == spec.default_modality:
    return layout
  return f"{layout}_{modality.lower()}"


def find_subjects(layout, manual_dir, modality=None):
  """Lists the volumes of a nifti_folder layout, checking it.

  Args:
    layout: a name in LAYOUTS ('custom', 'ixi', 'atlas', 'brats', 'mslub',
      'wmh').
    manual_dir: the folder the user put the volumes in.
    modality: the sequence to read (case-insensitive, e.g. 't2'); None: the
      layout's default.

  Returns:
    {split: [Subject]}, non-empty splits only, subjects sorted (by file, or
    by case folder).

  Raises:
    NiftiError: missing folder, no volumes, orphan masks, missing required
      masks or modalities, a subject id used twice.
    ConfigError: a modality the layout does not have (the valid ones listed).
  """
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown NIfTI layout {layout!r}; use one of "
                     f"{', '.join(map(repr, LAYOUTS))}.")
  spec = LAYOUTS[layout]
  modality = common.check_modality(spec, modality)
  manual_dir = pathlib.Path(os.path.expanduser(os.fspath(manual_dir)))
  if not manual_dir.is_dir():
    raise nifti.NiftiError(
        f"manual_dir {manual_dir} does not exist. Create it and put the "
        f"volumes there:\n{spec.tree}")
  # Layouts list subjects sorted; that order is the examples' order and the
  # fingerprint's, so it is kept as is.
  found = {split: subjects
           for split, subjects in spec.find(manual_dir, modality).items()
           if subjects}
  first_file = {}
  for subjects in found.values():
    for s in subjects:
      if s.subject_id in first_file:
        raise nifti.NiftiError(
            f"{first_file[s.subject_id]} and {s.image}: both are subject "
            f"{s.subject_id!r}. Subject ids must be unique (and splits "
            "subject-disjoint); rename or remove one.")
      first_file[s.subject_id] = s.image
  return found


def files_fingerprint(found, manual_dir):
  """A hash of the listed files (relative paths, sizes): detects changes."""
  manual_dir = pathlib.Path(os.path.expanduser(os.fspath(manual_dir)))
  lines = []
  for split in sorted(found):
    for s in found[split]:
      for path in (s.image, s.mask, s.brain):
        if path is not None:
          lines.append(f"{split}\t{s.subject_id}\t"
                       f"{path.relative_to(manual_dir)}\t{path.stat().st_size}")
  return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def find_slice_subjects(layout, manual_dir, pattern=None):
  """Lists the slices of a slice_folder layout, checking it.

  Args:
    layout: a name in SLICE_LAYOUTS ('custom', 'kaggle_lgg'), or a builder
      config with that `name` and a `mask_required` attribute.
    manual_dir: the folder the user put the slices in.
    pattern: slice-name pattern (None: `slices.DEFAULT_PATTERN`).

  Returns:
    {split: [SliceSubject]}, non-empty splits only, subjects sorted by id.

  Raises:
    SliceError: missing folder, no slices, orphan masks, missing required
      masks, unparseable names, a subject in two split folders.
  """
  name = layout if isinstance(layout, str) else layout.name
  spec = SLICE_LAYOUTS[name]
  mask_required = getattr(layout, "mask_required", spec.mask_required)
  compiled = slices.compile_pattern(pattern)
  manual_dir = pathlib.Path(os.path.expanduser(os.fspath(manual_dir)))
  if not manual_dir.is_dir():
    raise slices.SliceError(
        f"manual_dir {manual_dir} does not exist. Create it and put the "
        f"slices there:\n{SLICE_INSTRUCTIONS}")
  found = spec.find(manual_dir, compiled, mask_required)
  # train and train_mixed of kaggle_lgg are alternatives made of the same
  # subjects; every other pair of splits must be subject-disjoint.
  first_file, first_split = {}, {}
  for split, subjects in found.items():
    for s in subjects:
      other = first_split.get(s.subject_id)
      if other is not None and {other, split} != {"train", "train_mixed"}:
        raise slices.SliceError(
            f"{first_file[s.subject_id]} (split {other!r}) and "
            f"{s.slices[0].image} (split {split!r}): both are subject "
            f"{s.subject_id!r}. A subject's slices must all be in one split "
            "folder; move them, or check config.data.slice_pattern.")
      first_file.setdefault(s.subject_id, s.slices[0].image)
      first_split.setdefault(s.subject_id, split)
  return found


def slice_files_fingerprint(found, manual_dir, pattern, channel):
  """A hash of the listed files (relative paths, sizes) and read settings."""
  manual_dir = pathlib.Path(os.path.expanduser(os.fspath(manual_dir)))
  lines = [f"pattern\t{pattern}", f"channel\t{channel}"]
  for split in sorted(found):
    for subject in found[split]:
      for s in subject.slices:
        for path in (s.image, s.mask, s.brain):
          if path is not None:
            lines.append(f"{split}\t{subject.subject_id}\t{s.index}\t"
                         f"{path.relative_to(manual_dir)}\t"
                         f"{path.stat().st_size}")
  return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
