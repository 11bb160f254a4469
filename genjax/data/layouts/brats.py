"""nifti_folder/brats: BraTS 2020, 2021 and 2023 (glioma, patients only).

One config reads all three releases' namings, recursively under manual_dir:

  2020  BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii
  2021  BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz
  2023  BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz

2023 sequences take the older names (t2f flair, t1n t1, t1c t1ce, t2w t2), so
config.data.modality has one vocabulary. Labels: 2020/2021 {0, 1 necrotic
core, 2 oedema, 4 enhancing}; 2023 {0, 1 necrotic core, 2 oedema,
3 enhancing}; the lesion is the whole tumour, label > 0. Volumes are
co-registered to SRI24 (240 x 240 x 155, 1 mm), skull-stripped, background 0.
"""

import collections
import pathlib
import re

from absl import logging

from genjax.data import nifti
from genjax.data.layouts import common

MODALITIES = ("flair", "t1", "t1ce", "t2")
# Patients (every BraTS case) to 'validation' by a stable hash of the case id;
# the rest are 'test'. There are no healthy subjects, hence no train split.
VALIDATION_PERCENT = 25
LABELS_2020 = common.Labels(values=(0, 1, 2, 4), lesion=(1, 2, 4))
LABELS_2023 = common.Labels(values=(0, 1, 2, 3), lesion=(1, 2, 3))
# 2023 sequence names -> the 2020/2021 names genjax uses.
RENAME_2023 = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2",
               "seg": "seg"}
_OLD = re.compile(r"(?P<case>BraTS\d*_(?:[A-Za-z]+_)?\d+)_"
                  r"(?P<seq>flair|t1ce|t1|t2|seg)")
_NEW = re.compile(r"(?P<case>BraTS-[A-Za-z]+-\d+-\d+)-"
                  r"(?P<seq>t2f|t1n|t1c|t2w|seg)")
DOWNLOAD = ("https://www.synapse.org/brats (2021, 2023; 2020 via "
            "https://www.med.upenn.edu/cbica/brats2020/)")

TREE = """\
manual_dir/                                 (anywhere below it)
  MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/
    BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii      labels 0,1,2,4
  BraTS2021_Training_Data/BraTS2021_00000/
    BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz        labels 0,1,2,4
  ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-00000-000/
    BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz     labels 0,1,2,3"""


def parse(file_stem):
  """'BraTS2021_00000_t1ce' -> ('BraTS2021_00000', 't1ce', labels); or None."""
  match = _OLD.fullmatch(file_stem)
  if match:
    return match["case"], match["seq"], LABELS_2020
  match = _NEW.fullmatch(file_stem)
  if match:
    return match["case"], RENAME_2023[match["seq"]], LABELS_2023
  return None


def find(manual_dir, modality=None):
  """{'validation', 'test': [Subject]} of the BraTS layout."""
  modality = modality or "flair"
  files = common.nifti_files(manual_dir, recursive=True)
  cases = collections.defaultdict(dict)  # (folder, case) -> {seq: path}
  labels_of, ignored = {}, []
  for key, path in files.items():
    name = pathlib.Path(key).name
    is_brain = name.endswith(common.BRAIN_SUFFIX)
    parsed = parse(name[:-len(common.BRAIN_SUFFIX)] if is_brain else name)
    if parsed is None:
      ignored.append(str(path))
      continue
    case, seq, labels = parsed
    if is_brain:  # <image stem>_brain: a brain mask of that sequence.
      seq += common.BRAIN_SUFFIX
    cases[(path.parent, case)][seq] = path
    labels_of[(path.parent, case)] = labels
  if ignored:
    logging.warning(
        "Ignoring %d NIfTI files not named as BraTS cases: %s", len(ignored),
        ", ".join(sorted(ignored)[:10]))
  if not cases:
    raise nifti.NiftiError(
        f"{manual_dir}: no BraTS cases (e.g. BraTS2021_00000/"
        "BraTS2021_00000_flair.nii.gz) found. Unpack the BraTS 2020, 2021 or "
        "2023 training data there.")
  found = collections.defaultdict(list)
  for (folder, case), seqs in sorted(cases.items()):
    present = sorted(s for s in seqs if s in MODALITIES)
    if "seg" not in seqs:
      raise nifti.NiftiError(
          f"{folder}: BraTS case {case} has no segmentation (_seg / -seg "
          f"file); it has {present}. genjax needs the training data, whose "
          "cases have one (validation/test releases do not).")
    if modality not in seqs:
      raise nifti.NiftiError(
          f"{folder}: BraTS case {case} has no {modality!r} volume "
          f"(config.data.modality); it has {present}. Restore the file or "
          "choose another modality.")
    modalities = {m: seqs[m] for m in present}
    subject = common.Subject(
        case, seqs[modality], seqs["seg"],
        seqs.get(modality + common.BRAIN_SUFFIX), modalities,
        labels_of[(folder, case)])
    found[common.patient_split(case, VALIDATION_PERCENT)].append(subject)
  return dict(found)


LAYOUT = common.Layout(
    name="brats",
    find=find,
    modalities=MODALITIES,
    default_modality="flair",
    splits=("validation", "test"),
    description="BraTS 2020/2021/2023 glioma cases, whole tumour (label > 0) "
                "as lesion; patients split by hash into validation/test.",
    tree=TREE,
    download=DOWNLOAD,
    contents="BraTS training cases (BraTS20_Training_001/..._flair.nii, "
             "BraTS2021_00000/..._flair.nii.gz or BraTS-GLI-00000-000/"
             "...-t2f.nii.gz, each with its _seg/-seg file) anywhere below it "
             f"(download them from {DOWNLOAD})",
)
