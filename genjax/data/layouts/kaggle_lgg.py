"""slice_folder/kaggle_lgg: the Kaggle LGG set (TIFF slices, FLAIR channel)."""

import collections

from genjax.data import slices
from genjax.data.layouts import common
from genjax.data.layouts import slices_custom

VALIDATION_PERCENT = 10
TEST_PERCENT = 20
FOLDER = "kaggle_3m"
CHANNEL = 1  # FLAIR, in the images' (pre-contrast, FLAIR, post) order.
DOWNLOAD = "https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation"


def kaggle_split(subject_id):
  """'train', 'validation' or 'test' for a Kaggle LGG patient (stable hash)."""
  bucket = common.hash_percent(subject_id)
  if bucket < VALIDATION_PERCENT:
    return "validation"
  if bucket < VALIDATION_PERCENT + TEST_PERCENT:
    return "test"
  return "train"


def find(manual_dir, pattern, mask_required):
  """{split: [SliceSubject]} of the 'kaggle_lgg' layout."""
  root = manual_dir / FOLDER
  if not root.is_dir():
    root = manual_dir
  patients = [d for d in sorted(root.iterdir())
              if d.is_dir() and not d.name.startswith(".")]
  if not patients:
    raise slices.SliceError(
        f"{root}: no patient folders. The 'kaggle_lgg' layout needs "
        f"{manual_dir}/{FOLDER}/<patient>/<patient>_<n>.tif with "
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
    subject = slices_custom.SliceSubject(folder.name, tuple(patient_slices))
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


LAYOUT = slices_custom.SliceLayout(
    name="kaggle_lgg",
    find=find,
    channel=CHANNEL,
    mask_required=True,
    description="Kaggle LGG kaggle_3m/<patient>/<patient>_<n>.tif (FLAIR "
                "channel) with _mask.tif; patients split by hash.",
    contents="kaggle_3m/<patient>/<patient>_<n>.tif with "
             f"<patient>_<n>_mask.tif (download the set from {DOWNLOAD} and "
             "unzip it there)",
)
