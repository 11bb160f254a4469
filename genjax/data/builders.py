"""TFDS builders: brain volumes or 2D slice files in, one example per slice out.

Three datasets share one example schema (`slice_features`) and one
slices-to-examples conversion (`stack_examples`); they differ only in how
they find and read their files:

  brain_phantom  the embedded phantom (`genjax.data.phantom`); configs 'tiny'
                 (32 px), 'res64', 'res128'; generated on first use, no
                 download.
  nifti_folder   your own NIfTI volumes under `manual_dir`; configs 'custom',
                 'ixi', 'atlas' (layouts in MANUAL_DOWNLOAD_INSTRUCTIONS).
  slice_folder   your own 2D slices (PNG, TIFF, NPY) under `manual_dir`;
                 configs 'custom', 'kaggle_lgg' (layouts in
                 SLICE_INSTRUCTIONS; reading in `genjax.data.slices`).

Examples are written in generation order (subject by subject, slice by slice;
`disable_shuffling=True`), so every build holds the same examples in the same
order and a subject's slices are contiguous when read back, which lets detect
mode reassemble volumes. Shuffle in tf.data (or pass `shuffle_files=True` to
`load_split`).

The pipeline calls `load_split(config.data, split)`; `get_builder` gives the
builder itself (splits, example counts, features).
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
import pathlib
import re
from typing import NamedTuple, Optional

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from genjax.data import nifti
from genjax.data import phantom
from genjax.data import slices

# Brain-voxel intensity percentiles stored with every slice (of the whole
# volume), the grid `config.data.clip_percentiles` chooses from.
PERCENTILES = (0., 0.1, 0.5, 1., 2., 5., 10., 25., 50., 75., 90., 95., 98.,
               99., 99.5, 99.9, 100.)
LABEL_NAMES = ("healthy", "lesion")
# Every split a genjax dataset may have; a builder emits those it has data for.
SPLITS = ("train", "train_mixed", "validation", "test")

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MASK_SUFFIX = "_mask"  # custom layout: <stem>_mask.nii[.gz]
BRAIN_SUFFIX = "_brain"  # every layout: optional <stem>_brain.nii[.gz]
ATLAS_IMAGE_SUFFIX = "_T1w"
ATLAS_MASK_SUFFIX = "_label-L_desc-T1lesion_mask"
IXI_VALIDATION_PERCENT = 10


# --- Example schema -----------------------------------------------------------


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
        "file, the brain is image > 0, so the image is all <= 0). Check the "
        "volume, or give a <stem>_brain.nii.gz mask.")
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


# --- brain_phantom ------------------------------------------------------------


def _num_workers():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


# Splits with fewer voxels than this (~10 res128 subjects) are generated in
# this process.
_PARALLEL_MIN_VOXELS = 10 * 128**3


def _make_subject(args):
  image_size, seed, is_patient = args
  return phantom.make_subject(image_size, seed, is_patient)


def _make_subjects(image_size, plans, num_workers):
  """Yields `phantom.make_subject` volumes for `plans`, in order.

  With several workers, subjects are generated in a process pool a few ahead
  of the consumer (bounded, so memory stays at a few volumes per worker).
  """
  jobs = [(image_size, p.seed, p.is_patient) for p in plans]
  # A worker process pays a few seconds to load the templates, so a pool only
  # pays off for large splits (res128: ~1 s per subject on one core).
  voxels = len(jobs) * image_size**3
  if num_workers <= 1 or voxels < _PARALLEL_MIN_VOXELS:
    yield from map(_make_subject, jobs)
    return
  # 'spawn': forking a process that already runs TensorFlow's threads can
  # deadlock the children.
  context = multiprocessing.get_context("spawn")
  done = 0
  try:
    with concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=context) as pool:
      pending = collections.deque()
      for job in jobs:
        pending.append(pool.submit(_make_subject, job))
        if len(pending) > 2 * num_workers:
          yield pending.popleft().result()
          done += 1
      while pending:
        yield pending.popleft().result()
        done += 1
  except concurrent.futures.process.BrokenProcessPool:
    # Spawned workers re-import the main script; one that starts the build at
    # import time (no `if __name__ == "__main__":` guard) kills them. Every
    # subject is a pure function of its seed, so finishing here gives the
    # same dataset.
    logging.warning(
        "Phantom worker processes died (is the main script missing an "
        "`if __name__ == '__main__':` guard?); generating the remaining %d "
        "subjects in this process.", len(jobs) - done)
    yield from map(_make_subject, jobs[done:])


class BrainPhantom(tfds.core.GeneratorBasedBuilder):
  """Synthetic brain MRI volumes (healthy and with lesions), sliced axially."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: phantom volumes from genjax.data.phantom, "
               "one example per axial slice; splits train (healthy), "
               "train_mixed (healthy + patients), validation (healthy), "
               "test (patients + healthy).",
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name=name,
          description=(
              f"Phantom volumes of {spec.image_size}x{spec.image_size}-pixel "
              "axial slices: "
              f"{spec.n_train} train, {spec.n_mixed_healthy}+"
              f"{spec.n_mixed_patients} train_mixed (healthy+patients), "
              f"{spec.n_validation} validation, {spec.n_test_patients}+"
              f"{spec.n_test_healthy} test (patients+healthy) subjects."))
      for name, spec in phantom.SPECS.items()
  ]
  # Generation processes; None uses every core this process may run on.
  NUM_WORKERS: Optional[int] = None

  def _info(self):
    size = phantom.SPECS[self.builder_config.name].image_size
    return self.dataset_info_from_configs(
        description=(
            "Synthetic T1-like brain MRI phantom generated by genjax (no "
            "download). Healthy subjects and patients with lesions; one "
            "example per axial slice of each RAS volume, raw intensities."),
        features=slice_features(size, size),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    spec = phantom.SPECS[self.builder_config.name]
    plans = phantom.subject_plan(spec)
    unknown = sorted({p.split for p in plans} - set(SPLITS))
    if unknown:
      raise ValueError(f"phantom.subject_plan({spec.name!r}) returned unknown "
                       f"splits {unknown}; expected {SPLITS}.")
    by_split = {s: [p for p in plans if p.split == s] for s in SPLITS}
    return {s: self._generate_examples(spec.image_size, split_plans)
            for s, split_plans in by_split.items() if split_plans}

  def _generate_examples(self, image_size, plans):
    num_workers = self.NUM_WORKERS or _num_workers()
    volumes = _make_subjects(image_size, plans, num_workers)
    for plan, volume in zip(plans, volumes):
      yield from volume_examples(plan.subject_id, volume.image, volume.lesion,
                                 volume.brain, volume.affine)


# --- nifti_folder -------------------------------------------------------------

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
genjax reads NIfTI volumes (.nii or .nii.gz) that you put under `manual_dir`
(config.data.manual_dir, e.g. --config.data.manual_dir=~/data/ixi). genjax
assumes skull-stripped volumes registered to MNI space (e.g. with
HD-BET/SynthStrip and ANTs/FSL FLIRT); volumes are reoriented to RAS and
sliced axially, not resampled. A brain mask is optional everywhere: put
`<stem>_brain.nii[.gz]` next to the image `<stem>.nii[.gz]`; without it the
brain is `image > 0` (right for skull-stripped volumes, wrong otherwise).
Masks must be on the image's voxel grid.

config 'custom':  manual_dir/<split>/ for any of train, train_mixed,
  validation, test; each holds images `<stem>.nii[.gz]`, optional lesion
  masks `<stem>_mask.nii[.gz]` (no mask: a healthy subject) and optional
  brain masks `<stem>_brain.nii[.gz]`. The subject id is <stem>; a subject
  may appear in one split only.

config 'ixi':  IXI T1 (healthy; https://brain-development.org/ixi-dataset/),
  skull-stripped and MNI-registered by you, keeping the file names:
  manual_dir/IXI-T1/IXI*-T1.nii.gz. Split by subject into train / validation
  (about 90/10, from a stable hash of the subject id).

config 'atlas':  ATLAS v2.0 (stroke; https://fcon_1000.projects.nitrc.org/
  indi/retro/atlas.html), the Training part (the test part has no masks),
  unpacked anywhere under manual_dir in its BIDS layout:
  **/sub-*_T1w.nii.gz with the lesion mask
  *_label-L_desc-T1lesion_mask.nii.gz in the same folder
  (space MNI152NLin2009aSym). ATLAS images are NOT skull-stripped: add
  <stem>_brain.nii.gz masks (or skull-strip the images). All subjects go to
  the 'test' split.

The prepared dataset is cached in data_dir/nifti_folder/<config>/; genjax
refuses to use it if the files under manual_dir change; delete that folder to
rebuild.
"""


class Subject(NamedTuple):
  """One volume to convert: its files (None: no such mask)."""
  subject_id: str
  image: pathlib.Path
  mask: Optional[pathlib.Path]
  brain: Optional[pathlib.Path]


def _stem(path):
  """'a/b/sub-1_T1w.nii.gz' -> 'sub-1_T1w'; None if not a NIfTI file name."""
  for suffix in NIFTI_SUFFIXES:
    if path.name.endswith(suffix):
      return path.name[:-len(suffix)]
  return None


def _is_hidden(path, root):
  return any(part.startswith(".") for part in path.relative_to(root).parts)


def _nifti_files(folder, recursive=False):
  """{stem: path} of the NIfTI files in `folder`; duplicate stems rejected."""
  paths = folder.rglob("*") if recursive else folder.iterdir()
  files = {}
  for path in sorted(paths):
    stem = _stem(path)
    # Hidden files are OS debris (e.g. macOS '._x.nii.gz'), not volumes.
    if stem is None or _is_hidden(path, folder) or not path.is_file():
      continue
    key = str(path.parent / stem)
    if key in files:
      raise nifti.NiftiError(
          f"{files[key]} and {path}: two files for the same volume. Keep "
          "one of them.")
    files[key] = path
  return files


def _pair_files(files, image_pattern, mask_suffix, mask_required):
  """Matches images with their lesion and brain masks.

  Args:
    files: {parent/stem: path} from `_nifti_files`.
    image_pattern: regex an image stem must fully match.
    mask_suffix: lesion mask stem = image stem (minus `_T1w` for ATLAS) +
      this, or None if the layout has no lesion masks.
    mask_required: a missing lesion mask is an error (else: healthy).

  Returns:
    [(image, mask or None, brain or None)] sorted by image path.
  """
  def mask_key(image_key):
    if not mask_suffix:
      return None
    base = image_key
    if base.endswith(ATLAS_IMAGE_SUFFIX) and mask_suffix == ATLAS_MASK_SUFFIX:
      base = base[:-len(ATLAS_IMAGE_SUFFIX)]
    return base + mask_suffix

  images = {k: p for k, p in files.items()
            if re.fullmatch(image_pattern, pathlib.Path(k).name)}
  used = set(images)
  triples = []
  for key, image in sorted(images.items()):
    mask = files.get(mask_key(key))
    brain = files.get(key + BRAIN_SUFFIX)
    if mask_suffix and mask is None and mask_required:
      raise nifti.NiftiError(
          f"{image}: no lesion mask {pathlib.Path(mask_key(key)).name}"
          ".nii.gz next to it. This layout needs one per image: add it, or "
          "remove the image.")
    used.update(p for p in (mask_key(key), key + BRAIN_SUFFIX) if p in files)
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


def _custom_subjects(manual_dir):
  """{split: [Subject]} of the 'custom' layout."""
  found = {}
  for entry in sorted(manual_dir.iterdir()):
    if entry.name.startswith("."):
      continue  # Hidden: .DS_Store, .ipynb_checkpoints, ...
    if entry.is_dir() and entry.name not in SPLITS:
      raise nifti.NiftiError(
          f"{entry}: unknown split folder. Split folders in {manual_dir} must "
          f"be among {', '.join(SPLITS)}; rename or move it.")
    if entry.is_file() and _stem(entry) is not None:
      raise nifti.NiftiError(
          f"{entry}: volumes must be in split folders "
          f"({manual_dir}/train/, .../test/, ...), not in manual_dir itself.")
  for split in SPLITS:
    folder = manual_dir / split
    if not folder.is_dir():
      continue
    files = _nifti_files(folder)
    # Anything not a mask or brain mask is an image.
    image_pattern = (rf"(?!.*({MASK_SUFFIX}|{BRAIN_SUFFIX})$).+")
    triples = _pair_files(files, image_pattern, MASK_SUFFIX,
                          mask_required=False)
    if not triples:
      raise nifti.NiftiError(
          f"{folder}: no images (*.nii, *.nii.gz) found. Put the split's "
          "volumes there, or remove the empty folder.")
    found[split] = [Subject(_stem(im), im, m, b) for im, m, b in triples]
  if not found:
    raise nifti.NiftiError(
        f"{manual_dir}: no split folders. The 'custom' layout needs "
        f"{manual_dir}/<split>/ with <split> among {', '.join(SPLITS)}.")
  return found


def ixi_split(subject_id):
  """'train' or 'validation' for an IXI subject (stable hash of its id)."""
  digest = hashlib.sha256(subject_id.encode("utf-8")).hexdigest()
  is_val = int(digest[:8], 16) % 100 < IXI_VALIDATION_PERCENT
  return "validation" if is_val else "train"


def _ixi_subjects(manual_dir):
  """{split: [Subject]} of the 'ixi' layout (manual_dir/IXI-T1/IXI*-T1...)."""
  folder = manual_dir / "IXI-T1"
  if not folder.is_dir():
    raise nifti.NiftiError(
        f"{folder}: folder not found. Put the (skull-stripped, "
        "MNI-registered) IXI T1 volumes IXI*-T1.nii.gz there.")
  triples = _pair_files(_nifti_files(folder), r"IXI.*-T1", None,
                        mask_required=False)
  if not triples:
    raise nifti.NiftiError(
        f"{folder}: no IXI*-T1.nii.gz files found. Put the IXI T1 volumes "
        "there, keeping their original names.")
  found = collections.defaultdict(list)
  for image, _, brain in triples:
    subject_id = _stem(image)[:-len("-T1")]
    found[ixi_split(subject_id)].append(Subject(subject_id, image, None, brain))
  return dict(found)


def _atlas_subject_id(stem):
  """'sub-r001s001_ses-1_space-X_T1w' -> 'sub-r001s001_ses-1'."""
  entities = stem[:-len(ATLAS_IMAGE_SUFFIX)].split("_")
  return "_".join(e for e in entities if not e.startswith("space-"))


def _atlas_subjects(manual_dir):
  """{'test': [Subject]} of the 'atlas' layout (BIDS-like, recursive)."""
  triples = _pair_files(
      _nifti_files(manual_dir, recursive=True), rf"sub-.*{ATLAS_IMAGE_SUFFIX}",
      ATLAS_MASK_SUFFIX, mask_required=True)
  if not triples:
    raise nifti.NiftiError(
        f"{manual_dir}: no ATLAS images (**/sub-*_T1w.nii.gz) found. Unpack "
        "the ATLAS v2.0 Training data there.")
  return {"test": [Subject(_atlas_subject_id(_stem(im)), im, m, b)
                   for im, m, b in triples]}


_LAYOUTS = {
    "custom": _custom_subjects,
    "ixi": _ixi_subjects,
    "atlas": _atlas_subjects,
}


def find_subjects(config_name, manual_dir):
  """Lists the volumes of a nifti_folder config, checking the layout.

  Args:
    config_name: 'custom', 'ixi' or 'atlas'.
    manual_dir: the folder the user put the volumes in.

  Returns:
    {split: [Subject]}, non-empty splits only, subjects sorted by file.

  Raises:
    NiftiError: missing folder, no volumes, orphan masks, missing required
      masks, a subject id used twice.
  """
  manual_dir = pathlib.Path(os.path.expanduser(os.fspath(manual_dir)))
  if not manual_dir.is_dir():
    raise nifti.NiftiError(
        f"manual_dir {manual_dir} does not exist. Create it and put the "
        f"volumes there:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
  found = _LAYOUTS[config_name](manual_dir)
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


def _manual_dir(dl_manager):
  try:
    return dl_manager.manual_dir
  except AssertionError as e:  # What TFDS raises for a missing manual_dir.
    raise nifti.NiftiError(
        f"{e}\nSet config.data.manual_dir to the folder with your volumes.") \
        from e


class NiftiFolder(tfds.core.GeneratorBasedBuilder):
  """Your NIfTI volumes (IXI, ATLAS or any folder), sliced axially."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: layouts custom, ixi and atlas; one example "
               "per axial slice of each RAS volume.",
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name="custom",
          description="manual_dir/<split>/<stem>.nii[.gz] with optional "
                      "<stem>_mask and <stem>_brain masks."),
      tfds.core.BuilderConfig(
          name="ixi",
          description="IXI T1 (healthy), skull-stripped and MNI-registered; "
                      "train/validation by subject hash."),
      tfds.core.BuilderConfig(
          name="atlas",
          description="ATLAS v2.0 stroke T1w with lesion masks (MNI152 "
                      "2009a); all subjects in test."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def manual_fingerprint(self, manual_dir):
    """The fingerprint the prepared dataset must match for `manual_dir`."""
    return files_fingerprint(
        find_subjects(self.builder_config.name, manual_dir), manual_dir)

  def _info(self):
    return self.dataset_info_from_configs(
        description=(
            "Skull-stripped, MNI-registered brain MRI volumes from NIfTI "
            "files in manual_dir, reoriented to RAS; one example per axial "
            "slice, raw intensities. Slice size varies with the volumes."),
        features=slice_features(None, None),
        disable_shuffling=True,
        # Records which files the dataset was built from (see load_split).
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    manual_dir = _manual_dir(dl_manager)
    found = find_subjects(self.builder_config.name, manual_dir)
    self.info.metadata["files_fingerprint"] = files_fingerprint(
        found, manual_dir)
    self.info.metadata["manual_dir"] = os.fspath(manual_dir)
    self.info.metadata["subjects"] = {
        split: [s.subject_id for s in subjects]
        for split, subjects in found.items()}
    for split in SPLITS:
      if split not in found:
        logging.info("nifti_folder/%s: no %s split in %s.",
                     self.builder_config.name, split, manual_dir)
    return {split: self._generate_examples(subjects)
            for split, subjects in found.items()}

  def _generate_examples(self, subjects):
    for s in subjects:
      image, affine = nifti.load_volume(s.image)
      mask = (nifti.load_mask(s.mask, image.shape, affine, image_path=s.image)
              if s.mask else None)
      brain = (nifti.load_mask(s.brain, image.shape, affine,
                               image_path=s.image)
               if s.brain else image > 0)
      yield from volume_examples(s.subject_id, image, mask, brain, affine)


# --- slice_folder -------------------------------------------------------------

SLICE_INSTRUCTIONS = """\
genjax reads folders of 2D slices that you put under `manual_dir`
(config.data.manual_dir): PNG (8/16-bit grayscale; RGB(A) is collapsed to
one channel and the build log says how), TIFF (grayscale or RGB, one page)
and .npy (a 2D numeric array). Slices are used as stored (row 0 at the top),
with their raw values; the pipeline normalises and resizes/pads them to
config.data.image_size. Slices of one subject must have one size; subjects
may differ.

Subject and slice come from each image's file name (without extension),
matched in full by config.data.slice_pattern, a regular expression with
named groups `subject` and `slice`. The default takes the last number after
'_', '-' or '_slice_' as the slice: IXI002_slice_045.png -> subject IXI002,
slice 45; TCGA_CS_4941_19960909_12.tif -> TCGA_CS_4941_19960909, slice 12.
For one slice per subject, use '(?P<subject>.+)'. A name the pattern does
not match is an error.

Lesion masks (binarised: > 0 is lesion), one convention per folder:
  <stem>_mask.<ext> next to the image <stem>.<ext> (a missing mask: the
  slice is lesion-free), or a masks/ folder next to the images (in the split
  folder itself, or next to an images/ folder) holding a mask with each
  image's name (then every image needs one).
Brain masks: optional <stem>_brain.<ext> next to the image; without it the
brain is image > 0 (right for skull-stripped slices with a zero
background). Intensities are normalised per subject (percentiles of the
brain pixels of all its slices), so per slice when a subject has one slice.

config 'custom':  manual_dir/<split>/ for any of train, train_mixed,
  validation, test, each holding slices (sub-folders allowed, e.g. one per
  patient). A subject may appear in one split only. Folders without masks
  are healthy data.

config 'kaggle_lgg':  the Kaggle "Brain MRI segmentation" LGG set
  (https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation),
  unzipped so that manual_dir/kaggle_3m/<patient>/<patient>_<n>.tif and
  <patient>_<n>_mask.tif exist (manual_dir may also be kaggle_3m itself).
  Every image needs its mask. The images are RGB of three sequences
  (pre-contrast, FLAIR, post-contrast; a missing sequence was replaced by
  FLAIR); genjax reads channel 1, FLAIR.
  Patients are split by a stable hash of the patient id (kaggle_split):
  about 70 % training, 10 % validation, 20 % test patients. Splits:
  train (the lesion-free slices of the training patients), train_mixed
  (all their slices), validation (the lesion-free slices of the validation
  patients), test (all slices of the test patients). train and train_mixed
  share patients (they are alternative training sets); validation and test
  share none with them or each other. The slices are not skull-stripped,
  so the brain mask image > 0 covers the head; add <stem>_brain.tif masks
  for a brain-only mask.

The prepared dataset is cached in data_dir/slice_folder/<config>/; genjax
refuses to use it if the files under manual_dir or the slice pattern change;
delete that folder to rebuild.
"""

KAGGLE_VALIDATION_PERCENT = 10
KAGGLE_TEST_PERCENT = 20
KAGGLE_FOLDER = "kaggle_3m"
KAGGLE_CHANNEL = 1  # FLAIR, in the images' (pre-contrast, FLAIR, post) order.


@dataclasses.dataclass(eq=False)
class SliceFolderConfig(tfds.core.BuilderConfig):
  """A slice_folder layout.

  Attributes:
    channel: the channel of colour images to read (None: collapse colour
      to one channel, see `slices.read_image`).
    mask_required: every image needs a lesion mask.
  """
  channel: Optional[int] = None
  mask_required: bool = False


class SliceSubject(NamedTuple):
  """One subject to convert: its slices, and which of them to emit."""
  subject_id: str
  slices: tuple  # [slices.Slice], sorted by slice index.
  lesion_free_only: bool = False  # Emit only slices without lesion.


def kaggle_split(subject_id):
  """'train', 'validation' or 'test' for a Kaggle LGG patient (stable hash)."""
  digest = hashlib.sha256(subject_id.encode("utf-8")).hexdigest()
  bucket = int(digest[:8], 16) % 100
  if bucket < KAGGLE_VALIDATION_PERCENT:
    return "validation"
  if bucket < KAGGLE_VALIDATION_PERCENT + KAGGLE_TEST_PERCENT:
    return "test"
  return "train"


def _subjects_of(found_slices):
  return [SliceSubject(subject, tuple(slice_list))
          for subject, slice_list in slices.group_subjects(
              found_slices).items()]


def _custom_slice_subjects(manual_dir, pattern, mask_required):
  """{split: [SliceSubject]} of the 'custom' slice layout."""
  for entry in sorted(manual_dir.iterdir()):
    if entry.name.startswith("."):
      continue  # Hidden: .DS_Store, .ipynb_checkpoints, ...
    if entry.is_dir() and entry.name not in SPLITS:
      raise slices.SliceError(
          f"{entry}: unknown split folder. Split folders in {manual_dir} must "
          f"be among {', '.join(SPLITS)}; rename or move it.")
    if entry.is_file() and slices.split_extension(entry.name):
      raise slices.SliceError(
          f"{entry}: slices must be in split folders ({manual_dir}/train/, "
          ".../test/, ...), not in manual_dir itself.")
  found = {}
  for split in SPLITS:
    folder = manual_dir / split
    if folder.is_dir():
      found[split] = _subjects_of(slices.list_folder(
          folder, pattern, mask_required=mask_required))
  if not found:
    raise slices.SliceError(
        f"{manual_dir}: no split folders. The 'custom' layout needs "
        f"{manual_dir}/<split>/ with <split> among {', '.join(SPLITS)}.")
  return found


def _kaggle_subjects(manual_dir, pattern, mask_required):
  """{split: [SliceSubject]} of the 'kaggle_lgg' layout."""
  root = manual_dir / KAGGLE_FOLDER
  if not root.is_dir():
    root = manual_dir
  patients = [d for d in sorted(root.iterdir())
              if d.is_dir() and not d.name.startswith(".")]
  if not patients:
    raise slices.SliceError(
        f"{root}: no patient folders. The 'kaggle_lgg' layout needs "
        f"{manual_dir}/{KAGGLE_FOLDER}/<patient>/<patient>_<n>.tif with "
        "<patient>_<n>_mask.tif; unzip the Kaggle archive there.")
  found = collections.defaultdict(list)
  for folder in patients:
    patient_slices = slices.list_folder(folder, pattern,
                                        mask_required=mask_required)
    for s in patient_slices:
      if s.subject != folder.name:
        raise slices.SliceError(
            f"{s.image}: the slice-name pattern gives subject {s.subject!r},"
            f" but the file is in patient folder {folder.name!r}. Kaggle LGG "
            "files are <patient>/<patient>_<n>.tif; move the file, or fix "
            "config.data.slice_pattern.")
    subject = SliceSubject(folder.name, tuple(patient_slices))
    split = kaggle_split(folder.name)
    # Anomaly detection trains on lesion-free slices: 'train' and
    # 'validation' keep only those (decided when the masks are read).
    if split in ("train", "validation"):
      found[split].append(subject._replace(lesion_free_only=True))
    if split == "train":
      found["train_mixed"].append(subject)
    if split == "test":
      found["test"].append(subject)
  return dict(found)


_SLICE_LAYOUTS = {
    "custom": _custom_slice_subjects,
    "kaggle_lgg": _kaggle_subjects,
}


def find_slice_subjects(builder_config, manual_dir, pattern=None):
  """Lists the slices of a slice_folder config, checking the layout.

  Args:
    builder_config: a `SliceFolderConfig` (or its name: 'custom',
      'kaggle_lgg').
    manual_dir: the folder the user put the slices in.
    pattern: slice-name pattern (None: `slices.DEFAULT_PATTERN`).

  Returns:
    {split: [SliceSubject]}, non-empty splits only, subjects sorted by id.

  Raises:
    SliceError: missing folder, no slices, orphan masks, missing required
      masks, unparseable names, a subject in two split folders.
  """
  if isinstance(builder_config, str):
    builder_config = {c.name: c for c in SliceFolder.BUILDER_CONFIGS}[
        builder_config]
  compiled = slices.compile_pattern(pattern)
  manual_dir = pathlib.Path(os.path.expanduser(os.fspath(manual_dir)))
  if not manual_dir.is_dir():
    raise slices.SliceError(
        f"manual_dir {manual_dir} does not exist. Create it and put the "
        f"slices there:\n{SLICE_INSTRUCTIONS}")
  found = _SLICE_LAYOUTS[builder_config.name](
      manual_dir, compiled, builder_config.mask_required)
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


class SliceFolder(tfds.core.GeneratorBasedBuilder):
  """Your 2D slices (PNG, TIFF, NPY) with lesion masks, by subject."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: layouts custom and kaggle_lgg; one example "
               "per 2D slice file, grouped by subject.",
  }
  BUILDER_CONFIGS = [
      SliceFolderConfig(
          name="custom",
          description="manual_dir/<split>/ slices with <stem>_mask files or "
                      "a masks/ folder; subjects from file names."),
      SliceFolderConfig(
          name="kaggle_lgg",
          description="Kaggle LGG kaggle_3m/<patient>/<patient>_<n>.tif "
                      "(FLAIR channel) with _mask.tif; patients split by "
                      "hash.",
          channel=KAGGLE_CHANNEL, mask_required=True),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = SLICE_INSTRUCTIONS

  def __init__(self, *, pattern=None, **kwargs):
    """As any TFDS builder, plus `pattern`: the slice-name regex.

    Args:
      pattern: regular expression with named groups `subject` and `slice`
        (config.data.slice_pattern); None: `slices.DEFAULT_PATTERN`.
      **kwargs: data_dir, config, version.
    """
    self.pattern = slices.compile_pattern(pattern).pattern
    super().__init__(**kwargs)
    # TFDS pickles a builder as its constructor arguments.
    self._original_state["pattern"] = pattern

  def _info(self):
    return self.dataset_info_from_configs(
        description=(
            "2D brain MRI slices from PNG/TIFF/NPY files in manual_dir, "
            "grouped into subjects by file name; one example per slice, raw "
            "intensities, affine all zeros (no affine). Slice size varies "
            "with the files."),
        features=slice_features(None, None),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def manual_fingerprint(self, manual_dir):
    """The fingerprint the prepared dataset must match for `manual_dir`."""
    found = find_slice_subjects(self.builder_config, manual_dir, self.pattern)
    return slice_files_fingerprint(found, manual_dir, self.pattern,
                                   self.builder_config.channel)

  def _split_generators(self, dl_manager):
    manual_dir = _manual_dir(dl_manager)
    found = find_slice_subjects(self.builder_config, manual_dir, self.pattern)
    self.info.metadata["files_fingerprint"] = slice_files_fingerprint(
        found, manual_dir, self.pattern, self.builder_config.channel)
    self.info.metadata["manual_dir"] = os.fspath(manual_dir)
    self.info.metadata["slice_pattern"] = self.pattern
    self.info.metadata["subjects"] = {
        split: [s.subject_id for s in subjects]
        for split, subjects in found.items()}
    for split in SPLITS:
      if split not in found:
        logging.info("slice_folder/%s: no %s split in %s.",
                     self.builder_config.name, split, manual_dir)
    return {split: self._generate_examples(split, subjects)
            for split, subjects in found.items()}

  def _generate_examples(self, split, subjects):
    notes = collections.defaultdict(list)
    for s in subjects:
      images, masks, brains, indices, subject_notes = slices.read_subject(
          s.slices, self.builder_config.channel)
      for note, files in subject_notes.items():
        notes[note].extend(files)
      for key, example in stack_examples(s.subject_id, images, masks, brains,
                                         np.zeros((4, 4)), indices):
        if not (s.lesion_free_only and example["label"]):
          yield key, example
    for note, files in sorted(notes.items()):
      logging.warning("slice_folder/%s, split %s: %d files with %s (e.g. %s).",
                      self.builder_config.name, split, len(files), note,
                      files[0])


# --- Loading (what the pipeline calls) ----------------------------------------

DATASETS = {
    "brain_phantom": BrainPhantom,
    "nifti_folder": NiftiFolder,
    "slice_folder": SliceFolder,
}
# Datasets read from config.data.manual_dir.
_MANUAL_DATASETS = (NiftiFolder, SliceFolder)




class DatasetError(ValueError):
  """A dataset that is not built and cannot be built as configured."""


README_SECTIONS = {
    "brain_phantom": 'README.md, section "Data" > "The embedded brain '
                     'phantom (`brain_phantom`)"',
    "nifti_folder": 'README.md, section "Data" > "Your own NIfTI volumes '
                    '(`nifti_folder`)"',
    "slice_folder": 'README.md, section "Data" > "Your own 2D slices '
                    '(`slice_folder`)"',
}
# What manual_dir must hold, and where the files come from, per layout.
_MANUAL_CONTENTS = {
    ("nifti_folder", "custom"):
        "<split>/<name>.nii.gz for splits among train, train_mixed, "
        "validation, test, with lesion masks <name>_mask.nii.gz",
    ("nifti_folder", "ixi"):
        "IXI-T1/IXI*-T1.nii.gz, the IXI T1 volumes (download them from "
        "https://brain-development.org/ixi-dataset/, then skull-strip and "
        "register them to MNI space)",
    ("nifti_folder", "atlas"):
        "the ATLAS v2.0 BIDS folders, **/sub-*_T1w.nii.gz with "
        "..._label-L_desc-T1lesion_mask.nii.gz beside each (download them "
        "from https://fcon_1000.projects.nitrc.org/indi/retro/atlas.html)",
    ("slice_folder", "custom"):
        "<split>/<subject>_slice_<n>.png (or .tif, .npy) for splits among "
        "train, train_mixed, validation, test, with lesion masks "
        "<stem>_mask.png beside the images",
    ("slice_folder", "kaggle_lgg"):
        "kaggle_3m/<patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif "
        "(download the set from "
        "https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation "
        "and unzip it there)",
}


def how_to_build(builder):
  """One paragraph: what manual_dir must hold and where the README says more."""
  key = (builder.name, builder.builder_config.name)
  return (f"For {builder.name}/{builder.builder_config.name}, manual_dir must "
          f"hold {_MANUAL_CONTENTS[key]}. Pass it as "
          f"--config.data.manual_dir=/path/to/that/folder; see "
          f"{README_SECTIONS[builder.name]}.")


def _check_writable(data_dir, builder):
  """Raises DatasetError unless `builder` can be written under data_dir."""
  try:
    os.makedirs(data_dir, exist_ok=True)
    probe = os.path.join(data_dir, f".genjax_write_test_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("")
    os.remove(probe)
  except OSError as e:
    raise DatasetError(
        f"{builder.name}/{builder.builder_config.name} is not built in "
        f"{data_dir} (config.data.data_dir) and cannot be built there: "
        f"{e.strerror or e} ({e.filename or data_dir}). Pass a writable "
        "folder as --config.data.data_dir=/path/to/tensorflow_datasets (or "
        "set $GENJAX_DATA_DIR); see "
        f"{README_SECTIONS[builder.name]}.") from None

def get_builder(data_config):
  """Returns the TFDS builder `config.data` names (not prepared yet maybe).

  Args:
    data_config: `config.data` (dataset, builder_config, data_dir, ...).

  Raises:
    DatasetError: unknown dataset or builder config (the valid ones listed).
  """
  name = data_config.dataset
  if name not in DATASETS:
    raise DatasetError(f"Unknown dataset {name!r} (config.data.dataset); use "
                     f"one of {', '.join(map(repr, DATASETS))}.")
  cls = DATASETS[name]
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if data_config.builder_config not in configs:
    raise DatasetError(
        f"Unknown builder config {data_config.builder_config!r} of {name} "
        f"(config.data.builder_config); use one of "
        f"{', '.join(map(repr, configs))}.")
  data_dir = os.path.expanduser(os.fspath(data_config.data_dir))
  if cls is SliceFolder:
    # A config without the field (older configs) uses the default pattern.
    pattern = getattr(data_config, "slice_pattern", None)
    return cls(config=data_config.builder_config, data_dir=data_dir,
               pattern=pattern)
  return cls(config=data_config.builder_config, data_dir=data_dir)


def _manual_dir_of(data_config):
  manual_dir = getattr(data_config, "manual_dir", None)
  return os.path.expanduser(os.fspath(manual_dir)) if manual_dir else None


def prepare(data_config):
  """Returns the builder of `config.data`, prepared (generated/read) if needed.

  brain_phantom generates its volumes; nifti_folder and slice_folder read
  `manual_dir`, and refuse a prepared dataset built from other files than
  manual_dir now holds (or, for slice_folder, with another slice pattern).
  Nothing is downloaded and no network is used.
  """
  builder = get_builder(data_config)
  manual_dir = _manual_dir_of(data_config)
  from_manual_dir = isinstance(builder, _MANUAL_DATASETS)
  if builder.is_prepared():
    # Without the raw files (deleted after preparing) there is nothing to
    # compare; the prepared dataset is all that is needed.
    if from_manual_dir and manual_dir and os.path.isdir(manual_dir):
      _check_unchanged(builder, manual_dir)
    return builder
  if from_manual_dir and not manual_dir:
    raise DatasetError(
        f"{builder.name}/{builder.builder_config.name} is not prepared in "
        f"{builder.data_dir} and config.data.manual_dir is not set, so "
        f"genjax cannot build it. {how_to_build(builder)}")
  if manual_dir and not os.path.isdir(manual_dir):
    error = (slices.SliceError if isinstance(builder, SliceFolder)
             else nifti.NiftiError)
    raise error(
        f"manual_dir {manual_dir} (config.data.manual_dir) does not exist, "
        f"and {builder.name}/{builder.builder_config.name} is not prepared "
        f"in {builder.data_dir}. {how_to_build(builder)}")
  _check_writable(os.path.expanduser(os.fspath(data_config.data_dir)),
                  builder)
  logging.info("Preparing %s in %s.", builder.info.full_name, builder.data_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, try_download_gcs=False))
  except OSError:
    # Several processes (test workers, hosts sharing data_dir) may build the
    # same dataset; TFDS builds in a private folder and renames it at the end,
    # so the losers of that race fail here with a complete dataset in place.
    builder = get_builder(data_config)
    if not builder.is_prepared():
      raise
    logging.info("%s was prepared by another process; using it.",
                 builder.info.full_name)
  return builder


def _check_unchanged(builder, manual_dir):
  """Raises if manual_dir's files differ from those the dataset was built on."""
  built = builder.info.metadata.get("files_fingerprint")
  if built is None:
    return
  now = builder.manual_fingerprint(manual_dir)
  if now != built:
    settings = ""
    if isinstance(builder, SliceFolder):
      settings = (f" (or config.data.slice_pattern: "
                  f"{builder.info.metadata.get('slice_pattern')!r} then, "
                  f"{builder.pattern!r} now)")
    raise ValueError(
        f"The files in manual_dir {manual_dir}{settings} changed since "
        f"{builder.data_dir} was prepared from "
        f"{builder.info.metadata.get('manual_dir')}. Delete {builder.data_dir} "
        "to rebuild it, or set config.data.data_dir elsewhere.")


def _split_names(split):
  """'train[:10%]+test' -> ['train', 'test'] (split slicing syntax)."""
  return [re.match(r"\s*([\w-]+)", part).group(1)
          for part in split.split("+") if part.strip()]


def load_split(data_config, split, *, shuffle_files=False, read_config=None):
  """Returns a split of `config.data`'s dataset as decoded examples.

  Prepares the dataset first if needed (see `prepare`).

  Args:
    data_config: `config.data`.
    split: 'train', 'train_mixed', 'validation' or 'test' (those the dataset
      has); TFDS slicing like 'train[:10%]' or per-process shards from
      `tfds.split_for_jax_process` work too.
    shuffle_files: read the record files in random order (examples are stored
      in subject/slice order; this also turns off TFDS's ordering guard).
    read_config: an optional `tfds.ReadConfig`.

  Returns:
    tf.data.Dataset of dicts with the `slice_features()` schema, decoded:
    image float32 [H, W, 1], mask/brain uint8 [H, W, 1], label int64,
    subject tf.string, slice int32, percentiles float32 [17],
    affine float32 [4, 4].

  Raises:
    DatasetError (a ValueError): unknown dataset, builder config or split
      (valid ones listed); a dataset that is not built and cannot be: no or a
      missing manual_dir, a data_dir that cannot be written.
    NiftiError: bad files or layout under manual_dir (nifti_folder).
    SliceError: bad files or layout under manual_dir (slice_folder).
  """
  builder = prepare(data_config)
  available = sorted(builder.info.splits.keys())
  if isinstance(split, str):
    for name in _split_names(split):
      if name not in available:
        raise DatasetError(
            f"{builder.info.full_name} has no split {name!r}; it has "
            f"{', '.join(map(repr, available))}.")
  if shuffle_files:
    read_config = dataclasses.replace(read_config or tfds.ReadConfig(),
                                      enable_ordering_guard=False)
  return builder.as_dataset(split=split, shuffle_files=shuffle_files,
                            read_config=read_config)
