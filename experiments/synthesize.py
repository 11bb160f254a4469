r"""Synthesise pathology on demand with a trained lesion-conditioned DDPM.

  # A slice with a lesion where each mask says (masks of the phantom's
  # lesion generator, of the test split, or of your own files):
  python -m experiments.synthesize --config=configs/lesion_ddpm.py:cpu \
      --workdir=runs/lesion_cpu --mode=generate --masks_from=phantom
  python -m experiments.synthesize --config=configs/lesion_ddpm.py:cpu \
      --workdir=runs/lesion_cpu --mode=generate --masks=my_masks/ --guidance=3

  # A lesion painted into healthy slices at the masks, the rest of each
  # slice left exactly as it was (default slices: the validation split's
  # healthy slices with the most brain):
  python -m experiments.synthesize --config=configs/lesion_ddpm.py:cpu \
      --workdir=runs/lesion_cpu --mode=paint --masks_from=test \
      --images=my_healthy_slices/

--masks: a folder of .nii / .nii.gz / .png masks (> 0 is lesion), each fitted
to the model's image size as the data pipeline fits slices (longer side
resized with nearest neighbour, the other padded). A 2D NIfTI is one mask, a
3D one gives each axial slice that has lesion in it (displayed as the data
pipeline displays slices); 4D, empty and unreadable files are errors naming
the file. --images: a folder of .nii / .nii.gz / .png / .npy slices,
normalised as the pipeline normalises them (brain percentiles to [-1, 1],
background -1). Masks and images are paired in file-name order, each list
repeated to --num.

Writes to --out (default WORKDIR/synthesize/<mode>):
  grid.png        one tile group per example: mask | generated
                  (paint: healthy | mask | painted)
  synthesis.npz   masks, images (the output), healthy (paint), sources (the
                  mask of each example), guidance_scale, mode
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

MODES = ("generate", "paint")
MASKS_FROM = ("test", "phantom")
MASK_EXTENSIONS = (".nii.gz", ".nii", ".png")
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".png", ".npy")


class SynthesisError(ValueError):
  """A mask or image input that cannot be used; the message names it."""


# --- Reading masks and images ---------------------------------------------------


def _extension(name, extensions):
  lower = name.lower()
  return next((e for e in extensions if lower.endswith(e)), None)


def _files(folder, extensions, what):
  """The supported files of `folder`, sorted; raises SynthesisError."""
  if not os.path.isdir(folder):
    raise SynthesisError(f"{what} folder {folder}: no such folder.")
  names = sorted(n for n in os.listdir(folder)
                 if not n.startswith(".") and _extension(n, extensions)
                 and os.path.isfile(os.path.join(folder, n)))
  if not names:
    raise SynthesisError(
        f"{what} folder {folder}: no {' / '.join(extensions)} files in it.")
  return [os.path.join(folder, n) for n in names]


def _read_nifti(path):
  """A NIfTI file as 2D slices [N, H, W] in display orientation."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  from genjax.data import examples  # pylint: disable=g-import-not-at-top
  try:
    data = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
  except Exception as e:  # pylint: disable=broad-except
    raise SynthesisError(f"{path}: cannot read it as NIfTI "
                         f"({type(e).__name__}: {e}).") from e
  # Trailing singleton axes (e.g. [X, Y, 1, 1]) are not dimensions.
  while data.ndim > 2 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim not in (2, 3):
    raise SynthesisError(
        f"{path}: a {data.ndim}D NIfTI of shape {data.shape}; give a 2D "
        "slice or a 3D volume (its axial slices are used).")
  if data.ndim == 2:
    data = data[..., None]
  return np.stack([examples.display_slice(data[..., k])[..., 0]
                   for k in range(data.shape[2])])


def _read_2d(path):
  """A PNG (or .npy) slice as float32 [H, W]; raises SynthesisError."""
  if path.lower().endswith(".npy"):
    try:
      array = np.load(path, allow_pickle=False)
    except Exception as e:  # pylint: disable=broad-except
      raise SynthesisError(f"{path}: cannot read it as .npy "
                           f"({type(e).__name__}: {e}).") from e
  else:
    try:
      with Image.open(path) as im:
        im.load()
        array = np.asarray(im)
    except Exception as e:  # pylint: disable=broad-except
      raise SynthesisError(f"{path}: cannot read it as an image "
                           f"({type(e).__name__}: {e}).") from e
    if array.ndim == 3:  # Colour: the channels' maximum, alpha ignored.
      if array.shape[-1] in (2, 4):
        array = array[..., :-1]
      array = array.max(axis=-1)
  array = np.squeeze(np.asarray(array, np.float32))
  if array.ndim != 2:
    raise SynthesisError(f"{path}: shape {array.shape}; one 2D slice per "
                         "file is needed.")
  return array


def fit(array, size, resample, pad_value):
  """[H, W] -> [size, size]: longer side resized, shorter padded (centred).

  The data pipeline's `_fit`: the aspect ratio is kept, the border is the
  background value.
  """
  h, w = array.shape
  scale = size / max(h, w)
  new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
  if (new_h, new_w) != (h, w):
    image = Image.fromarray(np.asarray(array, np.float32), mode="F")
    array = np.asarray(image.resize((new_w, new_h), resample), np.float32)
  top, left = (size - new_h) // 2, (size - new_w) // 2
  out = np.full((size, size), pad_value, np.float32)
  out[top:top + new_h, left:left + new_w] = array
  return out


def read_masks(path, size):
  """The masks in one file, fitted to size x size and binarised.

  Args:
    path: a .nii, .nii.gz or .png file.
    size: the model's image size.

  Returns:
    float32 [N, size, size, 1] in {0, 1}: one mask for a 2D file, one per
    axial slice with lesion for a 3D NIfTI.

  Raises:
    SynthesisError: unreadable, 4D, or no lesion pixel (after fitting).
  """
  if path.lower().endswith((".nii", ".nii.gz")):
    slices = _read_nifti(path)
  else:
    slices = _read_2d(path)[None]
  masks = [fit((s > 0).astype(np.float32), size, Image.NEAREST, 0.0)
           for s in slices if (s > 0).any()]
  masks = [m for m in masks if m.any()]
  if not masks:
    raise SynthesisError(
        f"{path}: an empty mask (no pixel > 0"
        f"{' after resizing to %d px' % size if slices.any() else ''}); "
        "a lesion mask needs at least one lesion pixel.")
  return np.stack(masks)[..., None]


def load_masks(folder, size):
  """(masks [N, size, size, 1] in {0, 1}, source of each) from a folder."""
  masks, sources = [], []
  for path in _files(folder, MASK_EXTENSIONS, "Mask"):
    m = read_masks(path, size)
    masks.append(m)
    name = os.path.basename(path)
    sources += [name] if len(m) == 1 else [f"{name}[{i}]" for i in
                                           range(len(m))]
  return np.concatenate(masks), sources


def normalise(image, clip_percentiles):
  """Raw intensities -> [-1, 1] as the data pipeline does, background -1.

  The brain is every pixel above the slice's minimum (skull-stripped
  slices); its clip_percentiles map to -1 and 1.
  """
  brain = image > image.min()
  if not brain.any():
    return np.full_like(image, -1.0)
  lo, hi = np.percentile(image[brain], clip_percentiles)
  unit = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
  return np.where(brain, 2.0 * unit - 1.0, -1.0).astype(np.float32)


def load_images(folder, size, clip_percentiles):
  """(slices [N, size, size, 1] in [-1, 1], source of each) from a folder."""
  images, sources = [], []
  for path in _files(folder, IMAGE_EXTENSIONS, "Image"):
    if path.lower().endswith((".nii", ".nii.gz")):
      slices = _read_nifti(path)
    else:
      slices = _read_2d(path)[None]
    name = os.path.basename(path)
    for i, s in enumerate(slices):
      if not np.isfinite(s).all():
        raise SynthesisError(f"{path}: has NaN or infinite values.")
      images.append(fit(normalise(s, clip_percentiles), size,
                        Image.BILINEAR, -1.0))
      sources.append(name if len(slices) == 1 else f"{name}[{i}]")
  return np.stack(images)[..., None], sources


def _spread(n_available, num):
  """`num` indices spread evenly over range(n_available)."""
  return np.linspace(0, n_available - 1, min(num, n_available)).round(
  ).astype(int)


def split_slices(config, split, lesion, num, largest_brain=False):
  """Up to `num` (image, mask) pairs of `split`'s lesion or healthy slices.

  Spread evenly over the split's slices in order, or (largest_brain) the
  slices with the most brain, where a lesion has room.
  """
  from genjax.data import pipeline  # pylint: disable=g-import-not-at-top
  images, masks, brain, names = [], [], [], []
  for batch in pipeline.eval_batches(config.data, split,
                                     config.eval.batch_size):
    keep = batch["valid"] & ((batch["label"] == 1) == lesion)
    images.append(batch["image"][keep])
    masks.append(batch["mask"][keep])
    brain.append(batch["brain"][keep].sum(axis=(1, 2, 3)))
    names += [f"{s.decode() if isinstance(s, bytes) else s}/{int(k):04d}"
              for s, k in zip(batch["subject"][keep], batch["slice"][keep])]
  images, masks = np.concatenate(images), np.concatenate(masks)
  if not len(images):
    raise SynthesisError(
        f"Split {split!r} has no {'lesion' if lesion else 'healthy'} slices.")
  if largest_brain:
    idx = np.argsort(-np.concatenate(brain), kind="stable")[:num]
  else:
    idx = _spread(len(images), num)
  return images[idx], masks[idx], [names[i] for i in idx]


def phantom_masks(size, num, seed=0):
  """`num` lesion masks of the phantom's lesion generator.

  Each comes from a new patient of `genjax.data.phantom.make_subject`
  (seeds outside the datasets'): its axial slice with the largest lesion,
  displayed as the data pipeline displays slices.
  """
  from genjax.data import examples  # pylint: disable=g-import-not-at-top
  from genjax.data import phantom  # pylint: disable=g-import-not-at-top
  masks, sources = [], []
  for i in range(num):
    subject_seed = 2_000_000_000 + 1000 * seed + i
    lesion = phantom.make_subject(size, subject_seed, True).lesion
    k = int(np.argmax(lesion.sum(axis=(0, 1))))
    m = examples.display_slice(lesion[..., k])[..., 0].astype(np.float32)
    masks.append(fit(m, size, Image.NEAREST, 0.0))
    sources.append(f"phantom seed {subject_seed} slice {k}")
  return np.stack(masks)[..., None], sources


# --- Synthesis ------------------------------------------------------------------


def _repeat(array, num):
  return array[np.arange(num) % len(array)]


def _grid(columns, per_row=4):
  """A uint8 grid: each example's columns side by side, `per_row` per row."""
  from genjax import viz  # pylint: disable=g-import-not-at-top
  n, k = len(columns[0]), len(columns)
  tiles = [viz.to_uint8(c[i][..., 0]) for i in range(n) for c in columns]
  return viz.grid(np.stack(tiles), ncols=k * min(per_row, n))


def generate_images(config, method, state, masks, guidance, healthy=None,
                    seed_offset=7_654_321):
  """Lesions at `masks`: whole slices, or painted into `healthy` slices.

  One jitted `method.generate` (or `lesion_ddpm.paint` when `healthy` is
  given) called on chunks of config.eval.batch_size examples. Every call
  gets a full chunk (one compiled shape; the last one is filled by cycling
  the inputs) and the padding is dropped. Chunk i draws its noise from
  `fold_in(fold_in(key(config.seed), seed_offset), i)`, so the same inputs
  and offset give the same images.

  Args:
    config: the generator's config (seed, eval.batch_size).
    method: its `Method`, which must have `generate`.
    state: its state (e.g. from `checkpoints.load_state`).
    masks: [N, H, W, 1] lesion masks in {0, 1}.
    guidance: the guidance scale s of u + s (c - u), a Python number (the
      lesion VAE accepts only 1).
    healthy: None (generate whole slices) or [N, H, W, 1] healthy slices in
      [-1, 1] to paint into (the slice kept outside each mask).
    seed_offset: folded into the config's seed; another offset gives other
      draws for the same masks.

  Returns:
    float32 numpy [N, H, W, 1] in [-1, 1].
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from genjax.methods import lesion_ddpm
  # pylint: enable=g-import-not-at-top
  if healthy is None:
    fn = jax.jit(lambda s, r, m: method.generate(s, r, {"mask": m},
                                                 guidance))
  else:
    fn = jax.jit(lambda s, r, m, x: lesion_ddpm.paint(method, s, r, x, m,
                                                      guidance))
  num = len(masks)
  chunk = min(num, config.eval.batch_size)
  rng = jax.random.fold_in(jax.random.key(config.seed), seed_offset)
  outputs = []
  for i, start in enumerate(range(0, num, chunk)):
    # Every call gets a full chunk (one compiled shape); padding is dropped.
    idx = np.arange(start, start + chunk) % num
    args = (masks[idx],) if healthy is None else (masks[idx], healthy[idx])
    result = np.asarray(fn(state, jax.random.fold_in(rng, i), *args))
    outputs.append(result[:min(chunk, num - start)])
  return np.concatenate(outputs).astype(np.float32)


def synthesize(config, workdir, mode, *, masks=None, masks_from=None,
               images=None, guidance=None, num=None, out=None):
  """Generates or paints lesions at masks; writes grid.png, synthesis.npz.

  Args:
    config: the lesion_ddpm config the run in `workdir` was trained with.
    workdir: the trained run (its latest checkpoint is used).
    mode: 'generate' (a slice with a lesion at each mask) or 'paint' (a
      lesion painted into each healthy slice at its mask).
    masks: a folder of mask files (see the module docstring), or None.
    masks_from: 'test' (the eval split's lesion masks) or 'phantom' (the
      phantom's lesion generator), when `masks` is None.
    images: paint: a folder of healthy slices; None: the val split's
      healthy slices with the most brain.
    guidance: the guidance scale; None: config.sample.guidance_scale.
    num: examples; None: every mask of `masks`, else
      config.sample.num_samples.
    out: output folder; None: WORKDIR/synthesize/<mode>.

  Returns:
    A dict of what synthesis.npz holds, plus 'out'.

  Raises:
    SynthesisError: bad mask or image inputs, or a method that cannot
      generate given a condition.
  """
  # pylint: disable=g-import-not-at-top
  from genjax import checkpoints
  from genjax import files
  from genjax import methods
  from genjax import viz
  # pylint: enable=g-import-not-at-top
  if mode not in MODES:
    raise SynthesisError(f"mode={mode!r}: use one of {', '.join(MODES)}.")
  if (masks is None) == (masks_from is None):
    raise SynthesisError("Give exactly one of --masks (a folder) and "
                         f"--masks_from ({' or '.join(MASKS_FROM)}).")
  if images is not None and mode != "paint":
    raise SynthesisError("--images are the healthy slices of --mode=paint; "
                         f"--mode={mode} generates whole slices.")
  if masks_from is not None and masks_from not in MASKS_FROM:
    raise SynthesisError(f"--masks_from={masks_from!r}: use "
                         f"{' or '.join(MASKS_FROM)}.")
  if methods.get(config).generate is None:
    raise SynthesisError(
        f"config.method={config.method!r} samples only unconditionally; "
        "train configs/lesion_ddpm.py to synthesise lesions at masks.")
  size = config.data.image_size
  default_num = config.sample.num_samples
  if masks is not None:
    mask_arr, sources = load_masks(masks, size)
    num = num or len(mask_arr)
  elif masks_from == "test":
    num = num or default_num
    _, mask_arr, sources = split_slices(config, config.data.eval_split, True,
                                        num)
  else:
    num = num or default_num
    mask_arr, sources = phantom_masks(size, num, config.seed)
  mask_arr = _repeat(mask_arr, num)
  sources = [sources[i % len(sources)] for i in range(num)]
  healthy = None
  if mode == "paint":
    if images is not None:
      healthy, _ = load_images(images, size, tuple(config.data.clip_percentiles))
    else:
      healthy, _, _ = split_slices(config, config.data.val_split, False, num,
                                   largest_brain=True)
    healthy = _repeat(healthy, num)
    outside = (mask_arr * (healthy <= -1.0)).sum() / mask_arr.sum()
    if outside > 0.5:
      logging.warning("%.0f%% of the mask pixels lie in the background of "
                      "their slices; the lesions will be painted there.",
                      100 * outside)
  scale = (config.sample.guidance_scale if guidance is None
           else float(guidance))

  method, state = checkpoints.load_state(config, workdir)
  generated = generate_images(config, method, state, mask_arr, scale,
                              healthy=healthy)

  out = out or files.join(workdir, "synthesize", mode)
  shown_mask = 2.0 * mask_arr - 1.0
  columns = ([shown_mask, generated] if healthy is None
             else [healthy, shown_mask, generated])
  viz.save_png(files.join(out, "grid.png"), _grid(columns))
  arrays = {"masks": mask_arr.astype(np.float32), "images": generated,
            "sources": np.array(sources), "guidance_scale": np.float32(scale),
            "mode": np.array(mode)}
  if healthy is not None:
    arrays["healthy"] = healthy
  files.save_npz(files.join(out, "synthesis.npz"), compressed=False, **arrays)
  logging.info("Wrote %d %s examples (guidance %.2f) to %s", num, mode, scale,
               out)
  return dict(arrays, out=out)


# --- Command line -----------------------------------------------------------------


def define_flags():
  """The flags (defined only when run as a script, so tests can import)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file(
      "config", None, "The run's config, e.g. configs/lesion_ddpm.py:cpu.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "The trained lesion_ddpm run.")
  flags.DEFINE_enum("mode", "generate", MODES,
                    "generate: a slice with a lesion at each mask; paint: a "
                    "lesion painted into healthy slices at the masks.")
  flags.DEFINE_string("masks", None,
                      "Folder of .nii/.nii.gz/.png lesion masks.")
  flags.DEFINE_enum("masks_from", None, MASKS_FROM,
                    "Instead of --masks: the test split's lesion masks, or "
                    "the phantom's lesion generator.")
  flags.DEFINE_string("images", None,
                      "paint: folder of healthy .nii/.nii.gz/.png/.npy "
                      "slices (default: the validation split's slices "
                      "with the most brain).")
  flags.DEFINE_float("guidance", None, "Classifier-free guidance scale "
                     "(default: config.sample.guidance_scale).")
  flags.DEFINE_integer("num", None, "Examples (default: every mask of "
                       "--masks, else config.sample.num_samples).")
  flags.DEFINE_string("out", None,
                      "Output folder (default: WORKDIR/synthesize/MODE).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  from genjax import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    config_lib.validate(f.config)
  except config_lib.ConfigError as e:
    sys.exit(f"Config error: {e}")
  if f.num is not None and f.num < 1:
    sys.exit(f"Flag error: --num={f.num} must be >= 1.")
  try:
    synthesize(f.config, f.workdir, f.mode, masks=f.masks,
               masks_from=f.masks_from, images=f.images, guidance=f.guidance,
               num=f.num, out=f.out)
  except (SynthesisError, FileNotFoundError, ValueError) as e:
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
