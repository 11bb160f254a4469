"""nifti_folder/wmh: MICCAI 2017 White Matter Hyperintensity challenge.

Per subject, `pre/` holds FLAIR and the T1 registered to it (bias-corrected,
not skull-stripped) and `wmh.nii.gz` the manual labels: 0 background, 1 white
matter hyperintensity, 2 other pathology. Label 2 is neither lesion nor
healthy tissue: genjax takes it out of the brain mask, so its voxels are
scored neither way. Every subject has WMH: split by hash into validation and
test.
"""

import collections
import re

from genjax.data import nifti
from genjax.data.layouts import common

MODALITIES = ("FLAIR", "T1")
VALIDATION_PERCENT = 25
LABELS = common.Labels(values=(0, 1, 2), lesion=(1,), ignore=(2,))
MASK_NAME = "wmh"
DOWNLOAD = "https://wmh.isi.uu.nl/ (data via https://doi.org/10.34894/AECRSD)"

TREE = """\
manual_dir/
  training/                 (optional)
    Utrecht/0/pre/FLAIR.nii.gz, T1.nii.gz
    Utrecht/0/wmh.nii.gz        labels 0, 1 WMH, 2 other pathology
    Singapore/50/...
    GE3T/100/...            (or Amsterdam/GE3T/100/...)"""


def find(manual_dir, modality=None):
  """{'validation', 'test': [Subject]} of the WMH layout."""
  modality = modality or "FLAIR"
  cases = sorted(p.parent for p in manual_dir.rglob("pre")
                 if p.is_dir() and re.fullmatch(r"\d+", p.parent.name)
                 and not any(s.startswith(".") for s in p.parts))
  if not cases:
    raise nifti.NiftiError(
        f"{manual_dir}: no WMH subjects (<site>/<id>/pre/FLAIR.nii.gz, e.g. "
        "Utrecht/0/pre/FLAIR.nii.gz) found. Unpack the WMH 2017 training "
        "data there.")
  found = collections.defaultdict(list)
  for case in cases:
    site = case.parent.name
    subject_id = f"{site}_{case.name}"
    modalities = {m: p for m in MODALITIES
                  for p in [common.find_file(case / "pre", [m])]
                  if p is not None}
    if modality not in modalities:
      raise nifti.NiftiError(
          f"{case}: WMH subject {subject_id} has no pre/{modality}.nii.gz "
          f"(config.data.modality); it has {sorted(modalities)}. Restore it "
          "or choose another modality.")
    mask = common.find_file(case, [MASK_NAME])
    if mask is None:
      raise nifti.NiftiError(
          f"{case}: WMH subject {subject_id} has no {MASK_NAME}.nii.gz; "
          "every subject needs its label map.")
    image = modalities[modality]
    brain = common.find_file(case / "pre",
                             [common.stem(image) + common.BRAIN_SUFFIX])
    found[common.patient_split(subject_id, VALIDATION_PERCENT)].append(
        common.Subject(subject_id, image, mask, brain, modalities, LABELS))
  return dict(found)


LAYOUT = common.Layout(
    name="wmh",
    find=find,
    modalities=MODALITIES,
    default_modality="FLAIR",
    splits=("validation", "test"),
    description="MICCAI 2017 WMH challenge (label 1 lesion, label 2 outside "
                "the brain mask); subjects split by hash into validation/test.",
    tree=TREE,
    download=DOWNLOAD,
    contents="the WMH 2017 subjects, <site>/<id>/pre/FLAIR.nii.gz with "
             f"<site>/<id>/wmh.nii.gz (download them from {DOWNLOAD})",
)
