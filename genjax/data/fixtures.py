"""Benchmark datasets in their own on-disk layouts, made from phantom subjects.

`write_layout('brats', out_dir, n_subjects=4)` writes what unpacking the
real release gives, file names, folder nesting, dtypes, orientation and label
values included, so the layout readers (`genjax.data.layouts`), the builders
and the preprocessing can be run end to end without the real data:

  brats   2020 / 2021 / 2023 namings in turn; SRI24-like grid (240 x 240 x
          155 at 1 mm when image_size=240), LPS affine with the corner origin
          of the release, int16 images, zero background, no pose; seg uint8
          (2020, 2021) or float32 (2023) with necrotic core 1, oedema 2,
          enhancing 4 (2023: 3), the core by distance to the tumour centre.
  ixi     IXI-T1 (PIR, 256 x 256 x 150 at 0.94 x 0.94 x 1.2 mm), IXI-T2 and
          IXI-PD (LPS, 256 x 256 x 130); int16; raw heads (skull, bias, noisy
          air) in one random pose per subject; healthy.
  atlas   BIDS folders, MNI grid (197 x 233 x 189 at 1 mm, RAS), float32 T1w
          with skull and bias (registered: no pose), uint8 lesion masks.
  mslub   patientNN/raw/{FLAIR,T1W,T1WKS,T2W}.nii.gz (int16, one grid, raw
          heads in a random pose) and patientNN/consensus_gt.nii.gz (uint8).
  wmh     training/<site>/<id>/pre/{FLAIR,T1}.nii.gz (float32; skull, noisy
          air, bias-corrected) and wmh.nii.gz (float32 labels 0, 1, 2) with
          the sites' grids (Utrecht 240 x 240 x 48, Singapore 232 x 256 x 48,
          GE3T 132 x 256 x 83; 3 mm slices), stored LAS.

`image_size` is the in-plane matrix: voxel sizes scale so that the field of
view is the release's (image_size=240 for BraTS, 256 for IXI gives the real
voxel sizes); tests use 32. Lesions are drawn by this module on the healthy
phantom, always on the patient's LEFT (MNI x < 0), so orientation can be
checked; they are hypointense on T1 and hyperintense on FLAIR/T2/PD. The
truth returned is counted on the arrays written.
"""

import pathlib

import nibabel as nib
import numpy as np
from scipy import ndimage

from genjax.data import layouts
from genjax.data import nifti
from genjax.data import phantom
from genjax.data import rawhead

LAYOUTS = ("brats", "ixi", "atlas", "mslub", "wmh")

# Tissue contrast of each sequence as a function of the T1 phantom (WM ~1, GM
# ~0.75, CSF ~0.27): T2-like sequences invert it, FLAIR also darkens CSF.
_CONTRAST = {
    "t1": lambda t: t,
    "t2": lambda t: np.clip(1.25 - t, 0.05, None),
    "flair": lambda t: np.where(t < 0.45, 0.12 + 0.2 * t, 1.3 - 0.8 * t),
    "pd": lambda t: 1.05 - 0.35 * t,
}
_CONTRAST["t1ce"] = _CONTRAST["t1"]
# Lesion intensity per sequence and label kind (relative to WM = 1).
_LESION_LEVEL = {
    "t1": {"core": 0.30, "oedema": 0.80, "enhancing": 0.75, "lesion": 0.50},
    "t1ce": {"core": 0.30, "oedema": 0.80, "enhancing": 1.60, "lesion": 0.55},
    "t2": {"core": 1.10, "oedema": 0.85, "enhancing": 0.75, "lesion": 0.90},
    "flair": {"core": 0.70, "oedema": 1.20, "enhancing": 1.00,
              "lesion": 1.15},
    "pd": {"core": 1.00, "oedema": 0.95, "enhancing": 0.90, "lesion": 0.95},
}
_SEQUENCE = {  # File modality name -> contrast.
    "flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2",
    "T1": "t1", "T2": "t2", "PD": "pd", "T1w": "t1",
    "FLAIR": "flair", "T1W": "t1", "T1WKS": "t1ce", "T2W": "t2",
}
BRATS_RELEASES = ("2020", "2021", "2023")
WMH_SITES = (  # site, first id, shape, voxel mm (at the real resolution).
    ("Utrecht", 0, (240, 240, 48), (0.958, 0.958, 3.0)),
    ("Singapore", 50, (232, 256, 48), (0.958, 0.958, 3.0)),
    ("GE3T", 100, (132, 256, 83), (1.2, 0.977, 3.0)),
)


def _mm_grid(volume):
  """World (MNI mm) coordinates [3, X, Y, Z] of a phantom's voxels."""
  index = np.indices(volume.image.shape, dtype=np.float64)
  a = volume.affine
  return np.einsum("ij,jxyz->ixyz", a[:3, :3], index) + a[:3, 3, None, None,
                                                          None]


def _ball_centre(volume, rng, x_range, radius_mm):
  """A brain voxel with MNI x in `x_range`, as deep in the brain as can be."""
  mm = _mm_grid(volume)
  depth = ndimage.distance_transform_edt(volume.brain) * abs(volume.affine[0,
                                                                           0])
  ok = (volume.brain > 0) & (mm[0] > x_range[0]) & (mm[0] < x_range[1])
  deep = ok & (depth >= min(radius_mm, np.max(depth[ok])) * 0.8)
  candidates = np.argwhere(deep if deep.any() else ok)
  return mm[(slice(None),) + tuple(candidates[rng.integers(len(candidates))])]


def _draw_lesions(volume, rng, kind):
  """Label map (uint8, phantom grid) and {label: kind name} of one subject.

  kinds: 'tumour' (BraTS: core 1, oedema 2, enhancing 4 in shells of one
  ball), 'ms' (2 small lesions, label 1), 'wmh' (2 small lesions label 1 on
  the left, 'other pathology' label 2 on the right), 'stroke' (one ball).
  """
  mm = _mm_grid(volume)
  labels = np.zeros(volume.image.shape, np.uint8)
  brain = volume.brain > 0
  voxel = abs(volume.affine[0, 0])

  def ball(x_range, radius):
    centre = _ball_centre(volume, rng, x_range, radius)
    return np.sqrt(((mm - centre[:, None, None, None])**2).sum(0)) / max(
        radius, 1.2 * voxel)

  if kind == "tumour":
    d = ball((-60.0, -25.0), 30.0)
    labels[(d < 1.0) & brain] = 2
    labels[(d < 0.6) & brain] = 4
    labels[(d < 0.3) & brain] = 1
    return labels, {1: "core", 2: "oedema", 4: "enhancing"}
  if kind == "stroke":
    labels[(ball((-60.0, -25.0), 16.0) < 1.0) & brain] = 1
    return labels, {1: "lesion"}
  # WMH's 3 mm slices become thick at test sizes: larger lesions survive.
  radius = 14.0 if kind == "wmh" else 9.0
  for _ in range(2):
    labels[(ball((-50.0, -15.0), radius) < 1.0) & brain] = 1
  names = {1: "lesion"}
  if kind == "wmh":
    labels[(ball((20.0, 50.0), radius) < 1.0) & brain & (labels == 0)] = 2
    names[2] = "lesion"
  return labels, names


def _sequence(volume, labels, names, sequence, rng):
  """The phantom as `sequence`, lesions at their level; a PhantomVolume."""
  t1 = volume.image
  image = _CONTRAST[sequence](t1) * (volume.brain > 0)
  for value, name in names.items():
    where = labels == value
    level = _LESION_LEVEL[sequence][name]
    image[where] = level * (1.0 + 0.03 * rng.standard_normal(where.sum()))
  return phantom.PhantomVolume(image=image.astype(np.float32),
                               lesion=labels, brain=volume.brain,
                               affine=volume.affine)


def _scaled(shape, voxel, factor):
  """Release shape and voxel size scaled to a matrix `factor` times smaller."""
  return (tuple(max(2, int(round(n / factor))) for n in shape),
          tuple(v * factor for v in voxel))


def _save(path, data, affine, dtype):
  data = np.asarray(data)
  if np.issubdtype(np.dtype(dtype), np.integer):
    info = np.iinfo(dtype)
    data = np.clip(np.round(data), info.min, info.max)
  nifti.save_volume(path, data.astype(dtype), affine)
  return pathlib.Path(path)


def _subject_volumes(image_size, seed, kind, sequences, grid):
  """Raw heads of one subject, one per sequence, on one grid and pose.

  Returns:
    ({sequence: RawHead}, label names).
  """
  rng = np.random.default_rng(seed)
  volume = phantom.make_subject(image_size, seed, False)
  labels, names = (np.zeros(volume.image.shape, np.uint8), {})
  if kind is not None:
    labels, names = _draw_lesions(volume, rng, kind)
  head_seed = int(rng.integers(2**31))
  heads = {}
  for s in sequences:
    seq_rng = np.random.default_rng([seed, len(heads)])
    # The same head_seed for every sequence: one pose, grid, head and noise
    # field, so the sequences are co-registered as the release ships them.
    heads[s] = rawhead.make_raw_head(
        _sequence(volume, labels, names, _SEQUENCE[s], seq_rng), head_seed,
        **grid)
  return heads, names


def _truth(image_path, mask_path, lesion_values, ignore_values=()):
  """What a subject's written files hold, counted from the files."""
  img = nib.load(str(image_path))
  codes = nib.aff2axcodes(img.affine)
  axial = [i for i, c in enumerate(codes) if c in "SI"][0]
  out = {"shape": img.shape, "axcodes": "".join(codes),
         "n_slices": img.shape[axial], "lesion_voxels": 0,
         "ignore_voxels": 0, "lesion_left": None}
  if mask_path is None:
    return out
  seg = np.asarray(nib.load(str(mask_path)).dataobj)
  lesion = np.isin(seg, lesion_values)
  out["lesion_voxels"] = int(lesion.sum())
  out["ignore_voxels"] = int(np.isin(seg, ignore_values).sum())
  out["label_values"] = sorted(int(v) for v in np.unique(seg))
  # World x (RAS mm) of the lesion vs the head's: < 0 is the patient's left.
  head = np.asarray(img.dataobj) > 0
  world_x = lambda m: (img.affine[0, :3] @ np.argwhere(m).T.mean(1)
                       + img.affine[0, 3])
  out["lesion_left"] = bool(world_x(lesion) < world_x(head))
  return out


def _write_brats(out_dir, i, image_size, seed):
  release = BRATS_RELEASES[i % 3]
  factor = 240 / image_size
  shape, voxel = _scaled((240, 240, 155), (1.0, 1.0, 1.0), factor)
  grid = dict(voxel_size=voxel, shape=shape, pose=False, skull=False,
              bias=False, noise=False, orientation="LPS", background="zero")
  heads, _ = _subject_volumes(image_size, seed, "tumour", layouts.brats
                              .MODALITIES, grid)
  # The release's corner origin: voxel (0, 0, 0) at x = 0, y = 239 mm.
  affine = np.diag([-voxel[0], -voxel[1], voxel[2], 1.0])
  affine[1, 3] = (shape[1] - 1) * voxel[1]
  if release == "2020":
    case = f"BraTS20_Training_{i + 1:03d}"
    folder = out_dir / "MICCAI_BraTS2020_TrainingData" / case
    name = lambda seq: f"{case}_{seq}.nii"
    seg_dtype, labels = np.uint8, layouts.brats.LABELS_2020
  elif release == "2021":
    case = f"BraTS2021_{i:05d}"
    folder = out_dir / "BraTS2021_Training_Data" / case
    name = lambda seq: f"{case}_{seq}.nii.gz"
    seg_dtype, labels = np.uint8, layouts.brats.LABELS_2020
  else:
    case = f"BraTS-GLI-{i:05d}-000"
    folder = (out_dir / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
              / case)
    new_name = {v: k for k, v in layouts.brats.RENAME_2023.items()}
    name = lambda seq: f"{case}-{new_name[seq]}.nii.gz"
    seg_dtype, labels = np.float32, layouts.brats.LABELS_2023
  files = {}
  for seq, head in heads.items():
    files[seq] = _save(folder / name(seq), head.image, affine, np.int16)
  seg = heads["flair"].lesion
  if release == "2023":
    seg = np.where(seg == 4, 3, seg)
  files["seg"] = _save(folder / name("seg"), seg, affine, seg_dtype)
  truth = _truth(files["flair"], files["seg"], labels.lesion)
  return case, files, truth


def _write_ixi(out_dir, i, image_size, seed):
  sites = ("Guys", "HH", "IOP")
  subject = f"IXI{i + 2:03d}-{sites[i % 3]}-{828 + i:04d}"
  factor = 256 / image_size
  grids = {
      "T1": (_scaled((256, 256, 150), (0.9375, 0.9375, 1.2), factor), "PIR"),
      "T2": (_scaled((256, 256, 130), (0.9375, 0.9375, 1.2), factor), "LPS"),
  }
  grids["PD"] = grids["T2"]  # T2 and PD: one dual-echo acquisition.
  files = {}
  for m, ((shape, voxel), orientation) in grids.items():
    heads, _ = _subject_volumes(image_size, seed, None, (m,), dict(
        voxel_size=voxel, shape=shape, orientation=orientation))
    files[m] = _save(out_dir / f"IXI-{m}" / f"{subject}-{m}.nii.gz",
                     heads[m].image, heads[m].affine, np.int16)
  return subject, files, _truth(files["T1"], None, ())


def _write_atlas(out_dir, i, image_size, seed):
  sub = f"r{i // 3 + 1:03d}s{i + 1:03d}"
  shape, voxel = _scaled((197, 233, 189), (1.0, 1.0, 1.0), 197 / image_size)
  heads, _ = _subject_volumes(image_size, seed, "stroke", ("T1w",), dict(
      voxel_size=voxel, shape=shape, pose=False, orientation="RAS"))
  head = heads["T1w"]
  folder = (out_dir / "ATLAS_2" / "Training" / f"R{i // 3 + 1:03d}"
            / f"sub-{sub}" / "ses-1" / "anat")
  stem = f"sub-{sub}_ses-1_space-MNI152NLin2009aSym"
  files = {
      "T1w": _save(folder / f"{stem}_T1w.nii.gz", head.image, head.affine,
                   np.float32),
      "mask": _save(folder / f"{stem}_label-L_desc-T1lesion_mask.nii.gz",
                    head.lesion, head.affine, np.uint8),
  }
  return (f"sub-{sub}_ses-1", files,
          _truth(files["T1w"], files["mask"], (1,)))


def _write_mslub(out_dir, i, image_size, seed):
  patient = f"patient{i + 1:02d}"
  shape, voxel = _scaled((256, 256, 200), (0.9, 0.9, 0.9), 256 / image_size)
  heads, _ = _subject_volumes(image_size, seed, "ms", layouts.mslub.MODALITIES,
                              dict(voxel_size=voxel, shape=shape,
                                   orientation="LPS"))
  folder = out_dir / "MSLUB" / patient
  files = {m: _save(folder / "raw" / f"{m}.nii.gz", h.image, h.affine,
                    np.int16) for m, h in heads.items()}
  files["mask"] = _save(folder / "consensus_gt.nii.gz",
                        heads["FLAIR"].lesion, heads["FLAIR"].affine, np.uint8)
  return patient, files, _truth(files["FLAIR"], files["mask"], (1,))


def _write_wmh(out_dir, i, image_size, seed):
  site, first_id, shape, voxel = WMH_SITES[i % 3]
  case = str(first_id + 2 * (i // 3))
  shape, voxel = _scaled(shape, voxel, 240 / image_size)
  shape = shape[:2] + (max(shape[2], 6),)
  heads, _ = _subject_volumes(image_size, seed, "wmh", layouts.wmh.MODALITIES,
                              dict(voxel_size=voxel, shape=shape, bias=False,
                                   orientation="LAS"))
  folder = out_dir / "training" / site / case
  files = {m: _save(folder / "pre" / f"{m}.nii.gz", h.image, h.affine,
                    np.float32) for m, h in heads.items()}
  files["mask"] = _save(folder / "wmh.nii.gz", heads["FLAIR"].lesion,
                        heads["FLAIR"].affine, np.float32)
  return (f"{site}_{case}", files,
          _truth(files["FLAIR"], files["mask"], (1,), (2,)))


_WRITERS = {"brats": _write_brats, "ixi": _write_ixi, "atlas": _write_atlas,
            "mslub": _write_mslub, "wmh": _write_wmh}
_SPLIT_OF = {  # How each layout splits its subjects (its own rule).
    "brats": lambda s: layouts.common.patient_split(
        s, layouts.brats.VALIDATION_PERCENT),
    "ixi": layouts.ixi_split,
    "atlas": lambda s: "test",
    "mslub": lambda s: layouts.common.patient_split(
        s, layouts.mslub.VALIDATION_PERCENT),
    "wmh": lambda s: layouts.common.patient_split(
        s, layouts.wmh.VALIDATION_PERCENT),
}


def write_layout(layout, out_dir, *, n_subjects, image_size=32, seed=0):
  """Writes `n_subjects` phantom subjects in a dataset's own layout.

  Args:
    layout: one of LAYOUTS.
    out_dir: the folder to write (becomes config.data.manual_dir).
    n_subjects: number of subjects (BraTS cycles 2020/2021/2023 names, WMH
      its three sites).
    image_size: in-plane matrix of the phantom and the files (see module doc).
    seed: subject i uses phantom seed `seed * 1000 + i`.

  Returns:
    {'subjects': [id], 'splits': {id: split}, 'files': {id: {name: path}},
     'truth': {id: {'shape', 'axcodes', 'n_slices', 'lesion_voxels',
     'ignore_voxels', 'lesion_left', 'label_values'}}} counted from the
     written files ('lesion_left': the lesion's centroid is at a smaller RAS
     x than the head's, i.e. on the patient's left).
  """
  if layout not in _WRITERS:
    raise ValueError(f"Unknown layout {layout!r}; use one of "
                     f"{', '.join(LAYOUTS)}.")
  if n_subjects < 1:
    raise ValueError(f"n_subjects must be >= 1, got {n_subjects}.")
  out_dir = pathlib.Path(out_dir)
  result = {"subjects": [], "splits": {}, "files": {}, "truth": {}}
  for i in range(n_subjects):
    subject, files, truth = _WRITERS[layout](out_dir, i, image_size,
                                             seed * 1000 + i)
    result["subjects"].append(subject)
    result["splits"][subject] = _SPLIT_OF[layout](subject)
    result["files"][subject] = files
    result["truth"][subject] = truth
  return result
