"""slice_folder/custom: `<split>/` folders of 2D slices (PNG, TIFF, NPY)."""

import dataclasses
from typing import Callable, NamedTuple, Optional

from genjax.data import slices
from genjax.data.layouts import common

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
brain is genjax.data.brainmask.default_brain_mask per slice (image !=
background where the border is one constant value; a head mask, skull
included, where it is noise). Intensities are normalised per subject (percentiles of the
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
  so the default brain mask is a head mask (skull included); add
  <stem>_brain.tif masks (or skull-strip) for a brain-only mask.

The prepared dataset is cached in data_dir/slice_folder/<config>/; genjax
refuses to use it if the files under manual_dir or the slice pattern change;
delete that folder to rebuild.
"""


class SliceSubject(NamedTuple):
  """One subject to convert: its slices, and which of them to emit."""
  subject_id: str
  slices: tuple  # [slices.Slice], sorted by slice index.
  lesion_free_only: bool = False  # Emit only slices without lesion.


@dataclasses.dataclass(frozen=True)
class SliceLayout:
  """A slice_folder layout (one builder config).

  Attributes:
    name: the builder config name.
    find: (manual_dir, compiled pattern, mask_required) ->
      {split: [SliceSubject]}.
    channel: the channel of colour images to read (None: collapse colour).
    mask_required: every image needs a lesion mask.
    description: one line.
    contents: what manual_dir must hold (for error messages).
  """
  name: str
  find: Callable
  channel: Optional[int]
  mask_required: bool
  description: str
  contents: str


def subjects_of(found_slices):
  """[slices.Slice] -> [SliceSubject], grouped by subject."""
  return [SliceSubject(subject, tuple(slice_list))
          for subject, slice_list in slices.group_subjects(
              found_slices).items()]


def find(manual_dir, pattern, mask_required):
  """{split: [SliceSubject]} of the 'custom' slice layout."""
  for entry in sorted(manual_dir.iterdir()):
    if entry.name.startswith("."):
      continue  # Hidden: .DS_Store, .ipynb_checkpoints, ...
    if entry.is_dir() and entry.name not in common.SPLITS:
      raise slices.SliceError(
          f"{entry}: unknown split folder. Split folders in {manual_dir} must "
          f"be among {', '.join(common.SPLITS)}; rename or move it.")
    if entry.is_file() and slices.split_extension(entry.name):
      raise slices.SliceError(
          f"{entry}: slices must be in split folders ({manual_dir}/train/, "
          ".../test/, ...), not in manual_dir itself.")
  found = {}
  for split in common.SPLITS:
    folder = manual_dir / split
    if folder.is_dir():
      found[split] = subjects_of(slices.list_folder(
          folder, pattern, mask_required=mask_required))
  if not found:
    raise slices.SliceError(
        f"{manual_dir}: no split folders. The 'custom' layout needs "
        f"{manual_dir}/<split>/ with <split> among {', '.join(common.SPLITS)}.")
  return found


LAYOUT = SliceLayout(
    name="custom",
    find=find,
    channel=None,
    mask_required=False,
    description="manual_dir/<split>/ slices with <stem>_mask files or a "
                "masks/ folder; subjects from file names.",
    contents="<split>/<subject>_slice_<n>.png (or .tif, .npy) for splits "
             "among train, train_mixed, validation, test, with lesion masks "
             "<stem>_mask.png beside the images",
)
