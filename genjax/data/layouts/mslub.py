"""nifti_folder/mslub: MSLUB, 30 multiple-sclerosis patients (Lesjak 2018).

Lesjak et al., "A novel public MR image dataset of multiple sclerosis patients
with lesion segmentations based on multi-rater consensus", Neuroinformatics
16, 2018. Per patient, four sequences and the consensus lesion mask (labels
{0, 1}). Patients only: split by hash into validation and test.
"""

import collections
import re

from genjax.data import nifti
from genjax.data.layouts import common

MODALITIES = ("FLAIR", "T1W", "T1WKS", "T2W")
VALIDATION_PERCENT = 25
LABELS = common.Labels(values=(0, 1), lesion=(1,))
MASK_NAME = "consensus_gt"
_PATIENT = re.compile(r"patient\d+")
DOWNLOAD = "http://lit.fe.uni-lj.si/tools.php?lang=eng (3D MR MS dataset)"

TREE = """\
manual_dir/                       (anywhere below it)
  patient01/
    raw/                          (or the files directly in patient01/)
      FLAIR.nii.gz  T1W.nii.gz  T1WKS.nii.gz  T2W.nii.gz
                                  (also accepted: patient01_FLAIR.nii.gz, ...)
    consensus_gt.nii.gz           lesion mask, labels 0/1 (here or in raw/)
  patient02/ ..."""


def _find_in(folders, patient, name):
  return next((p for folder in folders if folder.is_dir()
               for p in [common.find_file(folder, (name, f"{patient}_{name}"))]
               if p is not None), None)


def find(manual_dir, modality=None):
  """{'validation', 'test': [Subject]} of the MSLUB layout."""
  modality = modality or "FLAIR"
  patients = sorted(
      p for p in ([manual_dir] + sorted(manual_dir.rglob("patient*")))
      if p.is_dir() and _PATIENT.fullmatch(p.name)
      and not any(part.startswith(".") for part in p.parts))
  if not patients:
    raise nifti.NiftiError(
        f"{manual_dir}: no MSLUB patient folders (patient01/ ... with "
        "raw/FLAIR.nii.gz and consensus_gt.nii.gz) found. Unpack the MSLUB "
        "data there.")
  found = collections.defaultdict(list)
  for folder in patients:
    image_folders = [folder / "raw", folder]
    modalities = {m: p for m in MODALITIES
                  for p in [_find_in(image_folders, folder.name, m)]
                  if p is not None}
    if modality not in modalities:
      raise nifti.NiftiError(
          f"{folder}: MSLUB patient {folder.name} has no {modality} volume "
          f"(config.data.modality); it has {sorted(modalities)}. Restore "
          f"raw/{modality}.nii.gz or choose another modality.")
    image = modalities[modality]
    mask = _find_in([folder, folder / "raw"], folder.name, MASK_NAME)
    if mask is None:
      raise nifti.NiftiError(
          f"{folder}: MSLUB patient {folder.name} has no lesion mask "
          f"{MASK_NAME}.nii.gz; every patient needs one.")
    brain = common.find_file(image.parent,
                             [common.stem(image) + common.BRAIN_SUFFIX])
    found[common.patient_split(folder.name, VALIDATION_PERCENT)].append(
        common.Subject(folder.name, image, mask, brain, modalities, LABELS))
  return dict(found)


LAYOUT = common.Layout(
    name="mslub",
    find=find,
    modalities=MODALITIES,
    default_modality="FLAIR",
    splits=("validation", "test"),
    description="MSLUB multiple-sclerosis patients (Lesjak 2018), consensus "
                "lesion masks; patients split by hash into validation/test.",
    tree=TREE,
    download=DOWNLOAD,
    contents="the MSLUB patient folders, patient01/raw/FLAIR.nii.gz (and "
             "T1W, T1WKS, T2W) with patient01/consensus_gt.nii.gz (download "
             f"them from {DOWNLOAD})",
)
