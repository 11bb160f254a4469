"""nifti_folder/custom: `<split>/<stem>.nii[.gz]` with optional masks."""

from genjax.data import nifti
from genjax.data.layouts import common

MASK_SUFFIX = "_mask"  # <stem>_mask.nii[.gz]
# Folders a preprocessing run (genjax.data.preprocess.run) writes beside the
# split folders: its QC (qc/) and other modalities' own custom roots.
PREPROCESS_FOLDERS = ("qc", "modalities")

TREE = """\
manual_dir/
  train/            (any of train, train_mixed, validation, test)
    <stem>.nii.gz           image (the subject id is <stem>)
    <stem>_mask.nii.gz      optional lesion mask (none: healthy), > 0 lesion
    <stem>_brain.nii.gz     optional brain mask
  test/ ..."""


def find(manual_dir, modality=None):
  """{split: [Subject]} of the 'custom' layout."""
  del modality  # One unnamed image per subject.
  for entry in sorted(manual_dir.iterdir()):
    if entry.name.startswith("."):
      continue  # Hidden: .DS_Store, .ipynb_checkpoints, ...
    if entry.is_dir() and entry.name in PREPROCESS_FOLDERS:
      continue  # QC and other modalities written by genjax.data.preprocess.
    if entry.is_dir() and entry.name not in common.SPLITS:
      raise nifti.NiftiError(
          f"{entry}: unknown split folder. Split folders in {manual_dir} must "
          f"be among {', '.join(common.SPLITS)}; rename or move it.")
    if entry.is_file() and common.stem(entry) is not None:
      raise nifti.NiftiError(
          f"{entry}: volumes must be in split folders "
          f"({manual_dir}/train/, .../test/, ...), not in manual_dir itself.")
  found = {}
  for split in common.SPLITS:
    folder = manual_dir / split
    if not folder.is_dir():
      continue
    files = common.nifti_files(folder)
    # Anything not a mask or brain mask is an image.
    image_pattern = rf"(?!.*({MASK_SUFFIX}|{common.BRAIN_SUFFIX})$).+"
    triples = common.pair_files(files, image_pattern,
                                lambda key: key + MASK_SUFFIX,
                                mask_required=False, mask_suffix=MASK_SUFFIX)
    if not triples:
      raise nifti.NiftiError(
          f"{folder}: no images (*.nii, *.nii.gz) found. Put the split's "
          "volumes there, or remove the empty folder.")
    found[split] = [common.Subject(common.stem(im), im, m, b)
                    for im, m, b in triples]
  if not found:
    raise nifti.NiftiError(
        f"{manual_dir}: no split folders. The 'custom' layout needs "
        f"{manual_dir}/<split>/ with <split> among {', '.join(common.SPLITS)}.")
  return found


LAYOUT = common.Layout(
    name="custom",
    find=find,
    modalities=(),
    default_modality=None,
    splits=common.SPLITS,
    description="manual_dir/<split>/<stem>.nii[.gz] with optional "
                "<stem>_mask and <stem>_brain masks.",
    tree=TREE,
    download="your own volumes",
    contents="<split>/<name>.nii.gz for splits among train, train_mixed, "
             "validation, test, with lesion masks <name>_mask.nii.gz",
)
