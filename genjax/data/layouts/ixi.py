"""nifti_folder/ixi: IXI healthy volumes, T1, T2 or PD."""

import collections
import re

from genjax.data import nifti
from genjax.data.layouts import common

MODALITIES = ("T1", "T2", "PD")
VALIDATION_PERCENT = 10
DOWNLOAD = "https://brain-development.org/ixi-dataset/"

TREE = """\
manual_dir/
  IXI-T1/IXI002-Guys-0828-T1.nii.gz     (IXI-T1.tar unpacked here)
  IXI-T2/IXI002-Guys-0828-T2.nii.gz     (IXI-T2.tar, optional)
  IXI-PD/IXI002-Guys-0828-PD.nii.gz     (IXI-PD.tar, optional)
  optional brain masks beside the images: IXI002-Guys-0828-T1_brain.nii.gz"""


def ixi_split(subject_id):
  """'train' or 'validation' for an IXI subject (stable hash of its id)."""
  is_val = common.hash_percent(subject_id) < VALIDATION_PERCENT
  return "validation" if is_val else "train"


def _folder_images(folder, modality):
  """{subject id: (image, brain or None)} of IXI-<modality>/."""
  triples = common.pair_files(common.nifti_files(folder),
                              rf"IXI.*-{re.escape(modality)}", None,
                              mask_required=False)
  return {common.stem(im)[:-len(modality) - 1]: (im, b)
          for im, _, b in triples}


def find(manual_dir, modality=None):
  """{split: [Subject]} of the 'ixi' layout (manual_dir/IXI-<modality>/)."""
  modality = modality or "T1"
  folder = manual_dir / f"IXI-{modality}"
  if not folder.is_dir():
    raise nifti.NiftiError(
        f"{folder}: folder not found. Put the IXI {modality} volumes "
        f"IXI*-{modality}.nii.gz there (unpack IXI-{modality}.tar), or choose "
        "another config.data.modality.")
  chosen = _folder_images(folder, modality)
  if not chosen:
    raise nifti.NiftiError(
        f"{folder}: no IXI*-{modality}.nii.gz files found. Put the IXI "
        f"{modality} volumes there, keeping their original names.")
  # The other modalities of each subject (IXI's T1 and T2/PD are separate
  # acquisitions, not co-registered): listed, not read.
  others = {m: _folder_images(manual_dir / f"IXI-{m}", m)
            for m in MODALITIES
            if m != modality and (manual_dir / f"IXI-{m}").is_dir()}
  found = collections.defaultdict(list)
  for subject_id, (image, brain) in chosen.items():
    modalities = {m: files[subject_id][0] for m, files in others.items()
                  if subject_id in files}
    modalities[modality] = image
    found[ixi_split(subject_id)].append(
        common.Subject(subject_id, image, None, brain, modalities))
  return dict(found)


LAYOUT = common.Layout(
    name="ixi",
    find=find,
    modalities=MODALITIES,
    default_modality="T1",
    splits=("train", "validation"),
    description="IXI healthy T1, T2 or PD (config.data.modality); "
                "train/validation by subject hash.",
    tree=TREE,
    download=DOWNLOAD,
    contents="IXI-T1/IXI*-T1.nii.gz (or IXI-T2/, IXI-PD/ for "
             "config.data.modality T2, PD), the IXI volumes (download them "
             f"from {DOWNLOAD}; preprocess them with genjax.data.preprocess or "
             "skull-strip and register them to MNI space yourself)",
)
