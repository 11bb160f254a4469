"""2D slice files (PNG, TIFF, NPY): naming, pairing with masks, reading.

Many brain-MRI datasets come as folders of 2D slices rather than volumes.
This module is everything the `slice_folder` builder (genjax.data.builders)
needs to know about such files; the builder shares the rest (example schema,
percentiles, splits bookkeeping) with the volume builders.

Files. Images and masks are `.png`, `.tif`/`.tiff` or `.npy` (extensions
are case-insensitive):
  * PNG: 8- or 16-bit grayscale, 8-bit RGB/RGBA/palette/gray+alpha, 1-bit.
    16-bit colour PNGs are rejected (Pillow would silently drop their low
    8 bits).
  * TIFF (tifffile): one page, grayscale or RGB(A), any integer or float
    sample type.
  * NPY: a numeric array [H, W] (or [H, W, 1], [1, H, W]); no pickles.
Images keep their raw values (a 16-bit slice stays 0..65535; normalisation
happens in the pipeline). A colour image is collapsed to one channel, and the
build log says so: equal channels (grayscale saved as RGB) give that channel
exactly, others the luminance 0.299 R + 0.587 G + 0.114 B, or the channel a
builder config names (Kaggle LGG: channel 1, FLAIR); alpha is ignored.
Masks are binarised, > 0 is lesion (for colour masks: any channel > 0; for
palette masks: palette index > 0). Slices are used as stored: row 0 is the
top of the image.

Names. The subject id and slice index come from the image's file name
without extension, matched in full by a regular expression with named groups
`subject` and (optionally) `slice`. The default, DEFAULT_PATTERN, takes the
last number after `_`, `-`, `_slice`, `_slice_` (or `-slice-`) as the slice:
  IXI002-Guys-0828_slice_045  -> subject 'IXI002-Guys-0828', slice 45
  TCGA_CS_4941_19960909_12    -> subject 'TCGA_CS_4941_19960909', slice 12
  sub-01_slice7               -> subject 'sub-01', slice 7
For one slice per subject with names like `IXI002-Guys-0828-T1.png`, use
ONE_SLICE_PATTERN (the whole name is the subject, the slice index is 0).

Masks, in one of two conventions per folder:
  * suffix: `<stem>_mask.<ext>` next to the image `<stem>.<ext>` (any of the
    supported extensions; IXI002_slice_045.png + IXI002_slice_045_mask.png,
    Kaggle's TCGA_..._12.tif + TCGA_..._12_mask.tif). An image without a mask
    is lesion-free (unless the layout requires masks).
  * parallel folder: `<folder>/masks/<name>` for the image
    `<folder>/images/<name>` (or `<folder>/<name>` when there is no images/
    folder), same relative path and stem. A masks/ folder says the folder is
    annotated: every image needs its mask.
An optional brain mask `<stem>_brain.<ext>` next to the image replaces the
default brain mask (`genjax.data.brainmask.default_brain_mask`, per slice):
for a slice whose border is one constant value (skull-stripped, zero or
z-scored background) the brain is image != that value; for a noisy
background (FLAIR noise, unstripped slices) it is a HEAD mask (Otsu, large
components, holes filled) that includes the skull. The build log says how
many slices got which rule.

Every problem raises `SliceError`, whose message names the file, says what
is wrong and what to do.
"""

import collections
import os
import pathlib
import re
from typing import NamedTuple, Optional

from absl import logging
import numpy as np
from PIL import Image
import tifffile

from genjax.data import brainmask

EXTENSIONS = (".png", ".tif", ".tiff", ".npy")
MASK_SUFFIX = "_mask"
BRAIN_SUFFIX = "_brain"
MASKS_FOLDER = "masks"
IMAGES_FOLDER = "images"

# The last number of the name, after '_', '-', '_slice', '_slice_' or
# '-slice-', is the slice index; what comes before it is the subject. The
# subject is matched lazily, so that 'a_slice_3' is subject 'a', not
# 'a_slice'.
DEFAULT_PATTERN = r"(?P<subject>.+?)(?:[_-]slice[_-]?|[_-])(?P<slice>\d+)"
# One slice per subject: the whole file name is the subject id.
ONE_SLICE_PATTERN = r"(?P<subject>.+)"

# ITU-R BT.601 luma weights, what Pillow's convert('L') uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Unsupported files that look like slices: named in the errors and warnings,
# so that a folder of JPEGs is not mistaken for an empty folder.
_IMAGE_LIKE = (".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".dcm", ".nii",
               ".nii.gz", ".mha", ".nrrd", ".npz")


class SliceError(ValueError):
  """A slice file or folder is missing, malformed or inconsistent."""


# --- Names --------------------------------------------------------------------


def compile_pattern(pattern):
  """Compiles a slice-name pattern, checking its named groups.

  Args:
    pattern: a regular expression (str) with a named group `subject` and
      optionally `slice` (digits); None gives DEFAULT_PATTERN.

  Returns:
    The compiled `re.Pattern`.

  Raises:
    SliceError: not a valid regular expression, or no `subject` group.
  """
  pattern = DEFAULT_PATTERN if pattern is None else pattern
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise SliceError(
        f"Slice-name pattern {pattern!r} (config.data.slice_pattern) is not a "
        f"valid regular expression: {e}.") from e
  if "subject" not in compiled.groupindex:
    raise SliceError(
        f"Slice-name pattern {pattern!r} (config.data.slice_pattern) has no "
        "named group 'subject'. Write it like "
        f"{DEFAULT_PATTERN!r} (groups (?P<subject>...) and (?P<slice>...)).")
  return compiled


def parse_name(stem, pattern, path=None):
  """Subject id and slice index of a slice file name.

  Args:
    stem: the file name without its extension, e.g. 'IXI002_slice_045'.
    pattern: a pattern (str or compiled) for `compile_pattern`; it must
      match the whole stem.
    path: the file, for the error message (default: the stem).

  Returns:
    (subject, slice): the `subject` group (str) and the `slice` group as int
    (0 if the pattern has no `slice` group or it did not take part).

  Raises:
    SliceError: the pattern does not match, or gives an empty subject or a
      slice that is not a non-negative integer below 2**31.
  """
  if not isinstance(pattern, re.Pattern):
    pattern = compile_pattern(pattern)
  where = os.fspath(path) if path is not None else stem
  match = pattern.fullmatch(stem)
  if match is None:
    raise SliceError(
        f"{where}: the file name {stem!r} does not match the slice-name "
        f"pattern {pattern.pattern!r}. Rename the file to <subject>_slice_<n>"
        f" (e.g. IXI002_slice_045.png), or set config.data.slice_pattern to a "
        f"regular expression with groups (?P<subject>...) and (?P<slice>\\d+) "
        f"that matches your names (for one slice per subject: "
        f"{ONE_SLICE_PATTERN!r}).")
  subject = match.group("subject")
  if not subject:
    raise SliceError(f"{where}: the slice-name pattern {pattern.pattern!r} "
                     "gives an empty subject id. Fix the pattern or the name.")
  index = match.groupdict().get("slice")
  if index is None:
    return subject, 0
  if not re.fullmatch(r"\d+", index) or int(index) >= 2**31:
    raise SliceError(
        f"{where}: the slice-name pattern {pattern.pattern!r} gives slice "
        f"{index!r}, not a non-negative integer below 2**31. Make the "
        "pattern's (?P<slice>...) group match digits only.")
  return subject, int(index)


def split_extension(name):
  """'a/b.PNG' -> ('b', '.png'); None if not a supported slice file."""
  name = pathlib.PurePath(name).name
  lower = name.lower()
  for ext in EXTENSIONS:
    if lower.endswith(ext) and len(name) > len(ext):
      return name[:-len(ext)], ext
  return None


# --- Folders ------------------------------------------------------------------


class Slice(NamedTuple):
  """One slice to read: its files (None: no such mask)."""
  subject: str
  index: int
  image: pathlib.Path
  mask: Optional[pathlib.Path]
  brain: Optional[pathlib.Path]


def _is_hidden(path, root):
  # Hidden files are OS debris (.DS_Store, macOS '._x.png',
  # .ipynb_checkpoints), not slices.
  return any(p.startswith(".") for p in path.relative_to(root).parts)


def _files(root):
  """Regular, non-hidden files under `root` (recursive), sorted."""
  return [p for p in sorted(root.rglob("*"))
          if p.is_file() and not _is_hidden(p, root)]


def _keyed(paths, root, what):
  """{relative stem path: file}; two files for one stem are an error."""
  keyed = {}
  for path in paths:
    stem, _ = split_extension(path.name)
    key = (path.parent.relative_to(root) / stem).as_posix()
    if key in keyed:
      raise SliceError(
          f"{keyed[key]} and {path}: two {what} files for the same slice "
          "(same name, different extensions). Keep one of them.")
    keyed[key] = path
  return keyed


def _strip(key, suffix):
  return key[:-len(suffix)] if key.endswith(suffix) else None


def _unsupported_summary(paths):
  counts = collections.Counter(
      next((e for e in _IMAGE_LIKE if p.name.lower().endswith(e)),
           p.suffix.lower() or p.name) for p in paths)
  return ", ".join(f"{n} {ext}" for ext, n in counts.most_common())


def list_folder(folder, pattern=None, *, mask_required=False, logger=None):
  """Lists the slices of one folder and pairs them with their masks.

  Searches `folder` recursively (hidden files skipped) and applies the mask
  conventions of the module docstring.

  Args:
    folder: the folder (a split folder, or a patient folder).
    pattern: slice-name pattern (str or compiled; None: DEFAULT_PATTERN).
    mask_required: every image needs a lesion mask (implied by a masks/
      folder).
    logger: called as logger(message) for files that are ignored (not of a
      supported type); None: absl logging.warning.

  Returns:
    [Slice], sorted by (subject, slice index).

  Raises:
    SliceError: no images; a mask or brain mask without its image; an image
      without its required mask; two files for one slice; a name the
      pattern cannot parse; two images for the same (subject, slice); a
      slice outside images/ when there is an images/ folder.
  """
  folder = pathlib.Path(folder)
  compiled = pattern if isinstance(pattern, re.Pattern) else compile_pattern(
      pattern)
  if not folder.is_dir():
    raise SliceError(f"{folder}: folder not found.")
  files = _files(folder)
  supported = [p for p in files if split_extension(p.name)]
  ignored = [p for p in files if not split_extension(p.name)]
  masks_root = folder / MASKS_FOLDER
  parallel = masks_root.is_dir()
  images_root = folder
  if parallel and (folder / IMAGES_FOLDER).is_dir():
    images_root = folder / IMAGES_FOLDER

  def under(path, root):
    return root in path.parents

  mask_files = [p for p in supported if parallel and under(p, masks_root)]
  image_side = [p for p in supported if under(p, images_root)
                and not (parallel and under(p, masks_root))]
  placed = set(mask_files) | set(image_side)
  stray = [p for p in supported if p not in placed]
  if stray:
    raise SliceError(
        f"{stray[0]}: a slice file outside {images_root} and {masks_root}. "
        f"With {IMAGES_FOLDER}/ and {MASKS_FOLDER}/ folders, images go in "
        f"{IMAGES_FOLDER}/ and masks in {MASKS_FOLDER}/; move or remove it.")

  keyed = _keyed(image_side, images_root, "image")
  masks, brains, images = {}, {}, {}
  for key, path in keyed.items():
    if _strip(key, MASK_SUFFIX) is not None:
      if parallel:
        raise SliceError(
            f"{path}: a '{MASK_SUFFIX}' file, but {folder} has a "
            f"{MASKS_FOLDER}/ folder. Use one mask convention per folder: "
            f"masks in {MASKS_FOLDER}/ with the images' names, or "
            f"<stem>{MASK_SUFFIX} files next to the images.")
      masks[_strip(key, MASK_SUFFIX)] = path
    elif _strip(key, BRAIN_SUFFIX) is not None:
      brains[_strip(key, BRAIN_SUFFIX)] = path
    else:
      images[key] = path
  if parallel:
    masks = _keyed(mask_files, masks_root, "mask")
    mask_required = True

  if not images:
    found = (f" It holds {_unsupported_summary(ignored)} files, which are "
             "not read." if ignored else "")
    raise SliceError(
        f"{folder}: no slice images ({', '.join(EXTENSIONS)}) found.{found} "
        "Put the slices there (convert JPEG/DICOM/NIfTI first), or remove "
        "the folder.")
  for kind, orphans in (("mask", masks), ("brain mask", brains)):
    for key, path in sorted(orphans.items()):
      if key not in images:
        if parallel and kind == "mask":
          expected = f"{images_root}/{key}.*, the mask's relative path"
        else:
          suffix = MASK_SUFFIX if kind == "mask" else BRAIN_SUFFIX
          expected = (f"{images_root / key}.* next to it, the {kind}'s name "
                      f"without '{suffix}'")
        raise SliceError(
            f"{path}: a {kind} with no matching image (expected {expected}, "
            f"with any of {', '.join(EXTENSIONS)}). Add the image or remove "
            f"the {kind}.")
  if ignored:
    (logger or logging.warning)(
        f"{folder}: ignoring {len(ignored)} files that are not slices "
        f"({_unsupported_summary(ignored)}), e.g. {ignored[0]}.")

  found = {}
  for key, image in sorted(images.items()):
    mask = masks.get(key)
    if mask is None and mask_required:
      where = (f"{masks_root}/{key}.*" if parallel
               else f"{images_root / key}{MASK_SUFFIX}.*")
      raise SliceError(
          f"{image}: no lesion mask {where}. This layout needs one per "
          "image (an all-zero mask for a lesion-free slice): add it, or "
          "remove the image.")
    stem, _ = split_extension(image.name)
    subject, index = parse_name(stem, compiled, image)
    if (subject, index) in found:
      raise SliceError(
          f"{found[subject, index].image} and {image}: both are slice "
          f"{index} of subject {subject!r} by the slice-name pattern "
          f"{compiled.pattern!r}. Rename one, or set "
          "config.data.slice_pattern so that names give distinct "
          "(subject, slice) pairs.")
    found[subject, index] = Slice(subject, index, image, mask,
                                  brains.get(key))
  return [found[k] for k in sorted(found)]


def group_subjects(slices):
  """[Slice] -> {subject: [Slice]} (sorted by subject, then slice)."""
  grouped = collections.defaultdict(list)
  for s in sorted(slices, key=lambda s: (s.subject, s.index)):
    grouped[s.subject].append(s)
  return dict(sorted(grouped.items()))


# --- Reading ------------------------------------------------------------------


def _decode_png(path, as_mask):
  """PNG -> (array [H, W, C], has_alpha, description)."""
  with open(path, "rb") as f:
    header = f.read(26)
  if header[:8] == _PNG_SIGNATURE and header[12:16] == b"IHDR":
    depth, colour_type = header[24], header[25]
    if depth == 16 and colour_type in (2, 4, 6):
      raise SliceError(
          f"{path}: a 16-bit colour PNG; Pillow reads those as 8 bits, "
          "dropping precision. Save the slice as 16-bit grayscale PNG, "
          "TIFF or .npy.")
  with Image.open(path) as im:
    if im.format != "PNG":
      raise SliceError(
          f"{path}: is a {im.format} file named .png. Save it as PNG (or "
          "rename it to its real extension if that is supported).")
    if getattr(im, "n_frames", 1) > 1:
      raise SliceError(f"{path}: an animated PNG with {im.n_frames} frames; "
                       "genjax needs one 2D slice per file.")
    im.load()
    mode = im.mode
    if mode == "P":
      if as_mask:  # Palette masks: the index is the class (0 background).
        return np.asarray(im)[..., None], False, "palette"
      im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    array = np.asarray(im)
    description = im.mode
  if array.ndim == 2:
    array = array[..., None]
  return array, description in ("LA", "RGBA", "PA"), description


_TIFF_PHOTOMETRIC = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)


def _decode_tiff(path, as_mask):
  """TIFF -> (array [H, W, C], has_alpha, description)."""
  del as_mask
  with tifffile.TiffFile(path) as tif:
    if len(tif.pages) != 1:
      raise SliceError(
          f"{path}: a TIFF with {len(tif.pages)} pages; genjax needs one 2D "
          "slice per file. Save each slice as its own file.")
    page = tif.pages[0]
    photometric = page.photometric
    if photometric not in _TIFF_PHOTOMETRIC:
      raise SliceError(
          f"{path}: TIFF photometric interpretation {photometric.name}; "
          "genjax reads grayscale (MINISBLACK) and RGB TIFFs. Re-save it as "
          "grayscale.")
    array = page.asarray()
    axes = page.axes
    has_alpha = bool(page.extrasamples)
  if "S" in axes:  # Samples (channels) last, whatever the planar layout.
    array = np.moveaxis(array, axes.index("S"), -1)
    axes = axes.replace("S", "") + "S"
  if axes.replace("S", "") != "YX":
    raise SliceError(f"{path}: a TIFF with axes {axes!r} (shape "
                     f"{array.shape}); genjax needs one 2D slice per file.")
  if array.ndim == 2:
    array = array[..., None]
  description = "RGB" if photometric == tifffile.PHOTOMETRIC.RGB else "gray"
  return array, has_alpha, description + ("+alpha" if has_alpha else "")


def _decode_npy(path, as_mask):
  """NPY -> (array [H, W, 1], False, 'npy')."""
  del as_mask
  array = np.load(path, allow_pickle=False)
  if not isinstance(array, np.ndarray):
    raise SliceError(f"{path}: holds several arrays (an .npz archive?); "
                     "save one 2D slice with np.save.")
  if array.ndim == 3 and array.shape[0] == 1:
    array = array[0]
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise SliceError(
        f"{path}: holds an array of shape {array.shape}; genjax reads one 2D "
        "slice per file ([H, W] or [H, W, 1]). Save each slice on its own.")
  return array[..., None], False, "npy"


_DECODERS = {".png": _decode_png, ".tif": _decode_tiff, ".tiff": _decode_tiff,
             ".npy": _decode_npy}


def _decode(path, as_mask):
  """Reads any supported file as (array [H, W, C], has_alpha, description)."""
  path = pathlib.Path(path)
  parts = split_extension(path.name)
  if parts is None:
    raise SliceError(f"{path}: not a supported slice file "
                     f"({', '.join(EXTENSIONS)}).")
  if not path.is_file():
    raise SliceError(f"{path}: no such file.")
  try:
    array, has_alpha, description = _DECODERS[parts[1]](path, as_mask)
  except SliceError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Pillow, tifffile (and its codecs) and numpy raise a zoo of types
    # (OSError, SyntaxError, ValueError, EOFError, zlib.error, ...) for
    # truncated or corrupt files; all mean the same to the user.
    raise SliceError(
        f"{path}: cannot read it ({type(e).__name__}: {e}). The file is "
        "probably truncated or corrupt, or not really a "
        f"{parts[1][1:].upper()} file; re-export it.") from e
  if array.dtype.kind not in "biuf":
    raise SliceError(f"{path}: pixel type {array.dtype} is not numeric; "
                     "genjax reads integer, float or boolean slices.")
  if array.shape[0] < 1 or array.shape[1] < 1:
    raise SliceError(f"{path}: an empty image (shape {array.shape}).")
  if array.dtype.kind == "f":
    n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if n_bad:
      raise SliceError(
          f"{path}: {n_bad} of {array.size} values are NaN or infinite. Fix "
          "the export that wrote it (or replace them, e.g. with 0).")
  return array, has_alpha, description


def read_image(path, channel=None):
  """Reads one slice image as raw intensities.

  Args:
    path: a .png, .tif/.tiff or .npy file.
    channel: for colour images, the channel to use (0 R, 1 G, 2 B); None
      collapses colour to one channel (see the module docstring).

  Returns:
    (image, note): image float32 [H, W] with the file's values; note a short
    string saying how a colour image was collapsed to one channel (None for
    a one-channel image), for the build log.

  Raises:
    SliceError: unreadable, truncated or corrupt file, multi-page or
      multi-slice file, 16-bit colour PNG, non-numeric or non-finite pixels,
      a `channel` the image does not have.
  """
  array, has_alpha, description = _decode(path, as_mask=False)
  colour = array[..., :-1] if has_alpha else array
  image, how = _one_channel(colour, channel, path)
  notes = [n for n in (how, "alpha ignored" if has_alpha else None) if n]
  return image, (f"{description}: {', '.join(notes)}" if notes else None)


def _one_channel(colour, channel, path):
  """[H, W, C] -> (float32 [H, W], how it was collapsed or None if C = 1)."""
  if colour.shape[-1] == 1:
    return colour[..., 0].astype(np.float32), None
  if channel is not None:
    if not 0 <= channel < colour.shape[-1]:
      raise SliceError(f"{path}: has {colour.shape[-1]} colour channels, "
                       f"no channel {channel}.")
    return colour[..., channel].astype(np.float32), f"channel {channel} used"
  if (colour == colour[..., :1]).all():  # Grayscale saved as colour.
    return colour[..., 0].astype(np.float32), "equal channels, one kept"
  if colour.shape[-1] != 3:
    raise SliceError(f"{path}: {colour.shape[-1]} colour channels that "
                     "differ; genjax collapses only RGB. Save a grayscale "
                     "slice.")
  luma = colour.astype(np.float64) @ np.asarray(LUMA_WEIGHTS, np.float64)
  return luma.astype(np.float32), (
      f"luminance {LUMA_WEIGHTS[0]} R + {LUMA_WEIGHTS[1]} G + "
      f"{LUMA_WEIGHTS[2]} B")


def read_mask(path, shape, image_path=None):
  """Reads a lesion or brain mask, binarised (> 0 is foreground).

  Args:
    path: a .png, .tif/.tiff or .npy file.
    shape: (H, W) of its image.
    image_path: the image, named in the error message.

  Returns:
    uint8 [H, W] in {0, 1}; for colour masks a pixel is foreground when any
    channel is > 0 (alpha ignored), for palette PNGs when its index is > 0.

  Raises:
    SliceError: what `read_image` rejects, or a size other than `shape`.
  """
  array, has_alpha, _ = _decode(path, as_mask=True)
  colour = array[..., :-1] if has_alpha else array
  mask = (colour > 0).any(axis=-1).astype(np.uint8)
  if mask.shape != tuple(shape):
    image = os.fspath(image_path) if image_path else "its image"
    raise SliceError(
        f"{path}: mask size {mask.shape[0]}x{mask.shape[1]} (HxW) differs "
        f"from the size {shape[0]}x{shape[1]} of {image}. A mask must be "
        "pixel-aligned with its image: resample it (nearest neighbour) or "
        "re-export both.")
  return mask


def read_subject(slices, channel=None):
  """Reads one subject's slices into stacks.

  Args:
    slices: the subject's [Slice] (one subject, distinct indices).
    channel: passed to `read_image`.

  Returns:
    (images, masks, brains, indices, notes): images float32 [N, H, W] raw;
    masks uint8 [N, H, W] (zeros where a slice has no mask); brains uint8
    [N, H, W] (the `_brain` file, else `brainmask.default_brain_mask` of
    the slice); indices int [N]; notes {note: [files]} how colour images
    were collapsed, which default brain-mask rule each slice without a
    `_brain` file got, and other things the build log should say.

  Raises:
    SliceError: any file `read_image`/`read_mask` rejects; slices of
      different sizes; a subject whose brain is empty in every slice.
  """
  if not slices:
    raise ValueError("read_subject needs at least one slice.")
  subject = slices[0].subject
  images, masks, brains = [], [], []
  notes = collections.defaultdict(list)
  for s in slices:
    image, note = read_image(s.image, channel)
    if note:
      notes[note].append(s.image)
    if images and image.shape != images[0].shape:
      raise SliceError(
          f"{s.image}: size {image.shape[0]}x{image.shape[1]} (HxW) differs "
          f"from {images[0].shape[0]}x{images[0].shape[1]} of "
          f"{slices[0].image}, another slice of "
          f"subject {subject!r}. Slices of one subject must have one size "
          "(they share one intensity normalisation): crop/pad them alike, or "
          "check config.data.slice_pattern if these are different subjects.")
    images.append(image)
    masks.append(read_mask(s.mask, image.shape, s.image) if s.mask
                 else np.zeros(image.shape, np.uint8))
    if s.brain:
      brains.append(read_mask(s.brain, image.shape, s.image))
    else:
      bg = brainmask.background(image)
      notes[f"no {BRAIN_SUFFIX} file (default brain mask, "
            f"{brainmask.RULES[bg.kind]})"].append(s.image)
      brains.append(brainmask.default_brain_mask(image, bg))
  brains = np.stack(brains)
  if not brains.any():
    raise SliceError(
        f"{slices[0].image}: subject {subject!r} has no brain pixel in any of "
        f"its {len(slices)} slices (without _brain files the default brain "
        "mask is used: every slice is all background, or noise with no head "
        "in it; see genjax.data.brainmask). Check the export, or add "
        f"<stem>{BRAIN_SUFFIX} masks.")
  return (np.stack(images), np.stack(masks), brains,
          np.asarray([s.index for s in slices]), dict(notes))


# --- Writing (exporting a dataset as slices) ----------------------------------


def export_examples(examples, folder, fmt="png"):
  """Writes decoded slice examples as a slice folder (one split's folder).

  For trying the slice_folder builder on known data (e.g. the phantom), and
  for handing slices to other tools. Files are named
  `<subject>_slice_<k:03d>.<ext>` (DEFAULT_PATTERN parses them back), with
  `_mask` files for the slices with a lesion and `_brain` files for every
  slice (so the brain mask survives exactly).

  Args:
    examples: iterable of numpy examples with the `slice_features()` schema
      (e.g. `tfds.as_numpy(builders.load_split(data_config, split))`).
    folder: output folder (created).
    fmt: 'png': 16-bit grayscale, each subject's [0, brain maximum]
      (its `percentiles[-1]`) mapped to [0, 65535] (rounded; values outside
      clipped), masks 8-bit 0/255; 'npy': exact float32 images, uint8 masks.

  Returns:
    The number of slices written.
  """
  if fmt not in ("png", "npy"):
    raise ValueError(f"fmt must be 'png' or 'npy', got {fmt!r}.")
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)

  def save(stem, array, is_mask):
    # Names are built as strings: a subject id may contain dots.
    if fmt == "npy":
      np.save(folder / f"{stem}.npy", array)
    else:
      Image.fromarray(array * np.uint8(255) if is_mask else array).save(
          folder / f"{stem}.png")

  n = 0
  for ex in examples:
    subject = ex["subject"]
    subject = subject.decode("utf-8") if isinstance(subject, bytes) else str(
        subject)
    stem = f"{subject}_slice_{int(ex['slice']):03d}"
    image = np.asarray(ex["image"], np.float32)[..., 0]
    if fmt == "png":
      top = float(ex["percentiles"][-1])
      scale = 65535.0 / top if top > 0 else 1.0
      image = np.clip(np.round(image * scale), 0, 65535).astype(np.uint16)
    save(stem, image, is_mask=False)
    mask = (np.asarray(ex["mask"])[..., 0] > 0).astype(np.uint8)
    if mask.any():
      save(stem + MASK_SUFFIX, mask, is_mask=True)
    brain = (np.asarray(ex["brain"])[..., 0] > 0).astype(np.uint8)
    save(stem + BRAIN_SUFFIX, brain, is_mask=True)
    n += 1
  return n
