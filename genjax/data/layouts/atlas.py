"""nifti_folder/atlas: ATLAS v2.0 stroke T1w (BIDS, MNI152NLin2009aSym)."""

from genjax.data import nifti
from genjax.data.layouts import common

IMAGE_SUFFIX = "_T1w"
MASK_SUFFIX = "_label-L_desc-T1lesion_mask"
DOWNLOAD = "https://fcon_1000.projects.nitrc.org/indi/retro/atlas.html"

TREE = """\
manual_dir/                          (anywhere below it, e.g. ATLAS_2/)
  Training/R001/sub-r001s001/ses-1/anat/
    sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
    sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz
  Training/R002/..."""


def subject_id(image_stem):
  """'sub-r001s001_ses-1_space-X_T1w' -> 'sub-r001s001_ses-1'."""
  entities = image_stem[:-len(IMAGE_SUFFIX)].split("_")
  return "_".join(e for e in entities if not e.startswith("space-"))


def _mask_key(image_key):
  return image_key[:-len(IMAGE_SUFFIX)] + MASK_SUFFIX


def find(manual_dir, modality=None):
  """{'test': [Subject]} of the 'atlas' layout (BIDS-like, recursive)."""
  modality = modality or "T1w"
  triples = common.pair_files(
      common.nifti_files(manual_dir, recursive=True),
      rf"sub-.*{IMAGE_SUFFIX}", _mask_key, mask_required=True,
      mask_suffix=MASK_SUFFIX)
  if not triples:
    raise nifti.NiftiError(
        f"{manual_dir}: no ATLAS images (**/sub-*_T1w.nii.gz) found. Unpack "
        "the ATLAS v2.0 Training data there.")
  return {"test": [
      common.Subject(subject_id(common.stem(im)), im, m, b, {modality: im})
      for im, m, b in triples]}


LAYOUT = common.Layout(
    name="atlas",
    find=find,
    modalities=("T1w",),
    default_modality="T1w",
    splits=("test",),
    description="ATLAS v2.0 stroke T1w with lesion masks (MNI152 2009a); all "
                "subjects in test.",
    tree=TREE,
    download=DOWNLOAD,
    contents="the ATLAS v2.0 BIDS folders, **/sub-*_T1w.nii.gz with "
             "..._label-L_desc-T1lesion_mask.nii.gz beside each (download "
             f"them from {DOWNLOAD})",
)
