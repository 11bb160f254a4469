"""TFDS builders: brain volumes or 2D slice files in, one example per slice out.

Three datasets share one example schema and one slices-to-examples
conversion (`genjax.data.examples`); they differ only in how they find and
read their files:

  brain_phantom  the embedded phantom (`genjax.data.phantom`); configs 'tiny'
                 (32 px), 'res64', 'res128'; generated on first use, no
                 download.
  nifti_folder   NIfTI volumes under `manual_dir` in a dataset's own layout;
                 configs 'custom', 'ixi', 'atlas', 'brats', 'mslub', 'wmh',
                 each with its modalities (`config.data.modality`).
  slice_folder   your own 2D slices (PNG, TIFF, NPY) under `manual_dir`;
                 configs 'custom', 'kaggle_lgg' (reading in
                 `genjax.data.slices`).

Where each layout keeps its files, and how its subjects are found and split,
is `genjax.data.layouts` (one module per layout behind one registry).

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
import multiprocessing
import os
import re
from typing import Optional

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from genjax.data import brainmask
from genjax.data import examples
from genjax.data import layouts
from genjax.data import nifti
from genjax.data import phantom
from genjax.data import slices

# The example schema lives in genjax.data.examples; these names stay for
# callers.
PERCENTILES = examples.PERCENTILES
LABEL_NAMES = examples.LABEL_NAMES
slice_features = examples.slice_features
display_slice = examples.display_slice
volume_examples = examples.volume_examples
stack_examples = examples.stack_examples
# Every split a genjax dataset may have; a builder emits those it has data for.
SPLITS = layouts.SPLITS

# Discovery lives in genjax.data.layouts; these names stay for callers.
find_subjects = layouts.find_subjects
find_slice_subjects = layouts.find_slice_subjects
ixi_split = layouts.ixi_split


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


def _manual_dir(dl_manager):
  try:
    return dl_manager.manual_dir
  except AssertionError as e:  # What TFDS raises for a missing manual_dir.
    raise nifti.NiftiError(
        f"{e}\nSet config.data.manual_dir to the folder with your volumes.") \
        from e


@dataclasses.dataclass(eq=False)
class NiftiConfig(tfds.core.BuilderConfig):
  """A nifti_folder layout and the modality read from it.

  Attributes:
    layout: a name in `layouts.LAYOUTS`.
    modality: the layout's modality to read (None: its default).
  """
  layout: str = ""
  modality: Optional[str] = None


def nifti_config(layout, modality=None):
  """The builder config of a layout and modality (see `layouts.config_name`).

  The default modality gives the registered config (named as the layout);
  another gives a config of its own name, e.g. 'brats_t2', which TFDS keeps
  in its own folder, data_dir/nifti_folder/brats_t2/.

  Raises:
    ConfigError: a modality the layout does not have.
  """
  name = layouts.config_name(layout, modality)
  if name == layout:
    return name
  spec = layouts.LAYOUTS[layout]
  modality = layouts.check_modality(spec, modality)
  return NiftiConfig(name=name, layout=layout, modality=modality,
                     description=f"{spec.description} Modality {modality}.")


class NiftiFolder(tfds.core.GeneratorBasedBuilder):
  """NIfTI volumes (a dataset's own layout or any folder), sliced axially."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: layouts custom, ixi and atlas; one example "
               "per axial slice of each RAS volume.",
      "1.1.0": "Layouts brats, mslub, wmh; a modality per config; the "
               "default brain mask is brainmask.default_brain_mask (was "
               "image > 0); label maps with ignored values (WMH label 2 is "
               "out of the brain mask).",
  }
  BUILDER_CONFIGS = [
      NiftiConfig(name=name, description=spec.description, layout=name,
                  modality=spec.default_modality)
      for name, spec in layouts.LAYOUTS.items()
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = layouts.MANUAL_DOWNLOAD_INSTRUCTIONS

  def _find(self, manual_dir):
    return find_subjects(self.builder_config.layout, manual_dir,
                         self.builder_config.modality)

  def manual_fingerprint(self, manual_dir):
    """The fingerprint the prepared dataset must match for `manual_dir`."""
    return layouts.files_fingerprint(self._find(manual_dir), manual_dir)

  def _info(self):
    return self.dataset_info_from_configs(
        description=(
            "Brain MRI volumes from NIfTI files in manual_dir, laid out as "
            "the dataset ships, reoriented to RAS; one example per axial "
            "slice, raw intensities. Slice size varies with the volumes."),
        features=slice_features(None, None),
        disable_shuffling=True,
        # Records which files the dataset was built from (see load_split).
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    manual_dir = _manual_dir(dl_manager)
    found = self._find(manual_dir)
    self.info.metadata["files_fingerprint"] = layouts.files_fingerprint(
        found, manual_dir)
    self.info.metadata["manual_dir"] = os.fspath(manual_dir)
    self.info.metadata["modality"] = self.builder_config.modality
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
      mask = ignore = None
      if s.mask is not None and s.labels is None:
        mask = nifti.load_mask(s.mask, image.shape, affine,
                               image_path=s.image)
      elif s.mask is not None:
        mask, ignore = layouts.load_labels(s.mask, s.labels, image.shape,
                                           affine, image_path=s.image)
      if s.brain is not None:
        brain = nifti.load_mask(s.brain, image.shape, affine,
                                image_path=s.image)
      else:
        brain = brainmask.default_brain_mask(image)
      if ignore is not None:
        # Neither lesion nor healthy (WMH 'other pathology'): out of the brain
        # mask, so no metric counts those voxels either way.
        brain = np.where(ignore > 0, 0, brain)
      yield from volume_examples(s.subject_id, image, mask, brain, affine)


# --- slice_folder -------------------------------------------------------------


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

class SliceFolder(tfds.core.GeneratorBasedBuilder):
  """Your 2D slices (PNG, TIFF, NPY) with lesion masks, by subject."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: layouts custom and kaggle_lgg; one example "
               "per 2D slice file, grouped by subject.",
  }
  BUILDER_CONFIGS = [
      SliceFolderConfig(name=name, description=spec.description,
                        channel=spec.channel,
                        mask_required=spec.mask_required)
      for name, spec in layouts.SLICE_LAYOUTS.items()
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = layouts.SLICE_INSTRUCTIONS

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
    return layouts.slice_files_fingerprint(found, manual_dir, self.pattern,
                                   self.builder_config.channel)

  def _split_generators(self, dl_manager):
    manual_dir = _manual_dir(dl_manager)
    found = find_slice_subjects(self.builder_config, manual_dir, self.pattern)
    self.info.metadata["files_fingerprint"] = layouts.slice_files_fingerprint(
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
def how_to_build(builder):
  """One paragraph: what manual_dir must hold and where the README says more."""
  config = builder.builder_config
  if isinstance(builder, NiftiFolder):
    contents = layouts.LAYOUTS[config.layout].contents
  else:
    contents = layouts.SLICE_LAYOUTS[config.name].contents
  return (f"For {builder.name}/{config.name}, manual_dir must "
          f"hold {contents}. Pass it as "
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
    ConfigError: a config.data.modality the layout does not have.
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
  if cls is NiftiFolder:
    # Each modality is a config (and prepared dataset) of its own.
    modality = getattr(data_config, "modality", None)
    return cls(config=nifti_config(data_config.builder_config, modality),
               data_dir=data_dir)
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
