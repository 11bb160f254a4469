"""Subject discovery, the per-subject pipeline, parallel resumable runs.

Output (a `custom` nifti_folder root, readable by
`genjax.data.layouts.find_subjects('custom', OUT)`):

  OUT/<split>/<subject>.nii.gz          skull-stripped image (background 0)
  OUT/<split>/<subject>_mask.nii.gz     lesion mask, when the input has one
  OUT/<split>/<subject>_brain.nii.gz    brain mask
  OUT/modalities/<mod>/<split>/<subject>[_mask|_brain].nii.gz
                                        other modalities, same grid and masks
                                        (each its own `custom` root)
  OUT/qc/<subject>.png, <subject>.json  QC picture; settings/inputs sidecar
  OUT/qc/qc.csv, qc.md                  the QC table, flags and failures

Other modalities get their own `custom` roots because in `custom` every
`<split>/<stem>` that is not a mask is an image: `<subject>_t2` beside
`<subject>` would be read as a second subject.

Resuming: a subject whose sidecar records the same settings and the same
input files (size, mtime) and whose outputs all exist is skipped; anything
else (new settings, changed input, an earlier failure) is run again.
"""

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import time
import traceback
from typing import NamedTuple, Optional

from absl import logging
import numpy as np

from genjax.data import nifti
from genjax.data.preprocess import PreprocessError
from genjax.data.preprocess import bias
from genjax.data.preprocess import qc
from genjax.data.preprocess import register
from genjax.data.preprocess import skullstrip

SPLITS = ("train", "train_mixed", "validation", "test")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MASK_SUFFIX, BRAIN_SUFFIX = "_mask", "_brain"
VERSION = 1  # Bump when the pipeline's outputs change.
# A head scan: the head mask covers a part of the frame, and the air around
# it is far darker than the head (Rician air ~0.05 of the head's median on
# phantom heads, ~0.1 on 8-bit FLAIR; a uniform noise cube measures ~0.4).
HEAD_FRACTION = (0.01, 0.9)
AIR_TO_HEAD_MAX = 0.25


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a preprocessing run does; recorded in every subject's sidecar.

  Attributes:
    grid: output grid, 'mni<mm>' (the MNI152 template grid at that many mm)
      or 'phantom<n>' (the brain phantom's grid).
    deformable: add a B-spline stage after the affine registration.
    n4: correct the bias field.
    interpolation: 'linear' or 'bspline' for images (masks: nearest).
  """
  grid: str = "mni2"
  deformable: bool = False
  n4: bool = True
  interpolation: str = "linear"

  def to_json(self):
    return dict(dataclasses.asdict(self), version=VERSION)


class RawSubject(NamedTuple):
  """One subject's input files (the fields of genjax.data.layouts.Subject)."""
  subject_id: str
  image: pathlib.Path
  mask: Optional[pathlib.Path]
  brain: Optional[pathlib.Path]
  modalities: dict = {}


# --- Discovery ----------------------------------------------------------------


def _stem(path):
  for suffix in NIFTI_SUFFIXES:
    if path.name.endswith(suffix):
      return path.name[:-len(suffix)]
  return None


def _raw_folder(folder):
  """[RawSubject] of one folder of the 'raw' layout."""
  files = {}
  for path in sorted(folder.iterdir()):
    stem = _stem(path)
    if stem is None or path.name.startswith(".") or not path.is_file():
      continue
    if stem in files:
      raise nifti.NiftiError(f"{files[stem]} and {path}: two files for the "
                             "same volume. Keep one of them.")
    files[stem] = path
  parts = {}  # stem -> (base, role)
  for stem in files:
    for role in (MASK_SUFFIX, BRAIN_SUFFIX):
      if stem.endswith(role):
        base = stem[:-len(role)]
        if base not in files:
          raise nifti.NiftiError(
              f"{files[stem]}: a mask with no image {base}.nii[.gz] next to "
              "it. Add the image or remove the mask.")
        parts[stem] = (base, role)
  for stem in files:
    if stem in parts:
      continue
    # '<subject>_<modality>': the longest other image stem it extends.
    bases = [b for b in files if b != stem and b not in parts
             and stem.startswith(b + "_")]
    if bases:
      base = max(bases, key=len)
      parts[stem] = (base, stem[len(base) + 1:])
  subjects = []
  for stem, path in files.items():
    if stem in parts:
      continue
    extra = {role: files[s] for s, (b, role) in parts.items()
             if b == stem and role not in (MASK_SUFFIX, BRAIN_SUFFIX)}
    get = lambda role: files.get(stem + role)
    subjects.append(RawSubject(stem, path, get(MASK_SUFFIX),
                               get(BRAIN_SUFFIX), extra))
  return subjects


def find_raw_subjects(input_dir):
  """{split: [RawSubject]} of the 'raw' layout.

  `RAW/<split>/<subject>.nii[.gz]` (split among SPLITS) with optional
  `<subject>_mask`, `<subject>_brain` and other modalities
  `<subject>_<modality>` beside it; or `RAW/<subject>...` with no split
  folders, all in 'train'.
  """
  input_dir = pathlib.Path(input_dir)
  if not input_dir.is_dir():
    raise nifti.NiftiError(f"{input_dir}: no such folder.")
  folders = [e for e in sorted(input_dir.iterdir())
             if e.is_dir() and not e.name.startswith(".")]
  loose = [e for e in input_dir.iterdir() if _stem(e) is not None
           and not e.name.startswith(".")]
  if folders and loose:
    raise nifti.NiftiError(
        f"{input_dir}: has both split folders and volumes ({loose[0].name}). "
        "Put every volume in a split folder, or none.")
  found = {}
  if loose:
    found["train"] = _raw_folder(input_dir)
  for folder in folders:
    if folder.name not in SPLITS:
      raise nifti.NiftiError(
          f"{folder}: unknown split folder; use {', '.join(SPLITS)}.")
    subjects = _raw_folder(folder)
    if not subjects:
      raise nifti.NiftiError(f"{folder}: no volumes (*.nii, *.nii.gz).")
    found[folder.name] = subjects
  if not found:
    raise nifti.NiftiError(f"{input_dir}: no volumes (*.nii, *.nii.gz).")
  seen = {}
  for subjects in found.values():
    for s in subjects:
      if s.subject_id in seen:
        raise nifti.NiftiError(f"{seen[s.subject_id]} and {s.image}: both are "
                               f"subject {s.subject_id!r}; rename one.")
      seen[s.subject_id] = s.image
  return found


def find_subjects(layout, input_dir, modality=None):
  """{split: [subject]} for layout 'raw' or any genjax.data.layouts layout."""
  if layout == "raw":
    return find_raw_subjects(input_dir)
  try:
    from genjax.data import layouts  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"layout {layout!r}: only 'raw' is available "
                     "(genjax.data.layouts is missing).") from e
  if layout not in layouts.LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; use 'raw' or one of "
                     f"{', '.join(layouts.LAYOUTS)}.")
  return layouts.find_subjects(layout, input_dir, modality=modality)


# --- One subject --------------------------------------------------------------


def output_paths(out_dir, split, subject):
  """{name: path} of every file a finished subject has."""
  out_dir = pathlib.Path(out_dir)
  folder = out_dir / split
  sid = subject.subject_id
  paths = {"image": folder / f"{sid}.nii.gz",
           "brain": folder / f"{sid}{BRAIN_SUFFIX}.nii.gz",
           "png": out_dir / "qc" / f"{sid}.png"}
  if subject.mask is not None:
    paths["mask"] = folder / f"{sid}{MASK_SUFFIX}.nii.gz"
  for name, path in _other_modalities(subject).items():
    root = out_dir / "modalities" / name / split
    paths[f"modality:{name}"] = root / f"{sid}.nii.gz"
    paths[f"modality:{name}:brain"] = root / f"{sid}{BRAIN_SUFFIX}.nii.gz"
    if subject.mask is not None:
      paths[f"modality:{name}:mask"] = root / f"{sid}{MASK_SUFFIX}.nii.gz"
  return paths


def sidecar_path(out_dir, subject):
  return pathlib.Path(out_dir) / "qc" / f"{subject.subject_id}.json"


def _other_modalities(subject):
  modalities = dict(getattr(subject, "modalities", None) or {})
  return {k: pathlib.Path(v) for k, v in modalities.items()
          if pathlib.Path(v) != pathlib.Path(subject.image)}


def _inputs(subject):
  files = [subject.image, subject.mask, subject.brain,
           *_other_modalities(subject).values()]
  out = {}
  for f in files:
    if f is not None:
      st = os.stat(f)
      out[os.fspath(f)] = [st.st_size, st.st_mtime_ns]
  return out


def is_done(out_dir, split, subject, settings):
  """True if the subject's outputs exist and were made with `settings`."""
  try:
    with open(sidecar_path(out_dir, subject)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return False
  return (record.get("status") == "ok"
          and record.get("settings") == settings.to_json()
          and record.get("split") == split
          and record.get("inputs") == _inputs(subject)
          and all(p.exists() for p in output_paths(
              out_dir, split, subject).values()))


def _load_modality(path, reference, ref_affine, ref_shape):
  """A modality's volume and the map from the reference's scanner mm to it."""
  data, affine = nifti.load_volume(path)
  if data.shape == tuple(ref_shape) and np.allclose(
      affine, ref_affine, atol=nifti.AFFINE_ATOL_MM):
    return data, affine, None
  try:
    rigid = register.register_rigid(reference, ref_affine, data, affine)
  except RuntimeError as e:
    raise PreprocessError(
        "modality_grid",
        f"{path}: not on the reference image's grid and rigid registration "
        f"to it failed ({e}).") from e
  return data, affine, rigid


def _load_lesion(subject, shape, affine):
  """(lesion, ignore) masks of a subject on its image's grid, or (None, None).

  A layout with a label map (`Subject.labels`: BraTS' tumour regions, WMH's
  label 2 'other pathology') is split into lesion and ignored voxels with the
  layout's own rule, which also rejects values outside the dataset's set;
  other masks are binarised (> 0 is lesion).
  """
  if subject.mask is None:
    return None, None
  labels = getattr(subject, "labels", None)
  if labels is None:
    return nifti.load_mask(subject.mask, shape, affine,
                           image_path=subject.image), None
  from genjax.data import layouts  # pylint: disable=g-import-not-at-top
  lesion, ignore = layouts.load_labels(subject.mask, labels, shape, affine,
                                       image_path=subject.image)
  return lesion, (ignore if ignore.any() else None)


def _process(split, subject, out_dir, settings):
  """Runs one subject; returns its QC row (raises PreprocessError)."""
  s = register.sitk()
  try:
    image, affine = nifti.load_volume(subject.image)
    lesion, ignore = _load_lesion(subject, image.shape, affine)
    user_brain = (nifti.load_mask(subject.brain, image.shape, affine,
                                  image_path=subject.image)
                  if subject.brain is not None else None)
  except nifti.NiftiError as e:
    raise PreprocessError("bad_input", str(e)) from e
  if not np.ptp(image) > 0:
    raise PreprocessError("empty_volume",
                          f"{subject.image}: every voxel is {image.flat[0]}.")
  image = image - min(float(image.min()), 0.0)  # N4 needs non-negative.
  head = bias.head_mask(image)
  fraction = float(head.mean())
  contrast = (float(np.median(image[~head]) / max(np.median(image[head]),
                                                   1e-12))
              if 0 < fraction < 1 else 1.0)
  if not (HEAD_FRACTION[0] < fraction < HEAD_FRACTION[1]
          and contrast < AIR_TO_HEAD_MAX):
    raise PreprocessError(
        "no_head",
        f"{subject.image}: no head separates from an air background (head "
        f"mask covers {fraction:.0%} of the frame; median air / head "
        f"intensity {contrast:.2f}, a scan has < {AIR_TO_HEAD_MAX}); not a "
        "head scan.")
  corrected = bias.n4(image, affine, head)[0] if settings.n4 else image
  reg = register.register(corrected, affine, head,
                          deformable=settings.deformable)
  t1, template_brain, grid = register.template_on(settings.grid)
  moved = register.resample(corrected, affine, reg.transform, grid,
                            settings.interpolation)
  similarity = qc.similarity(moved, t1, template_brain)
  if similarity < qc.SIMILARITY_FAIL:
    raise PreprocessError(
        "not_a_brain",
        f"{subject.image}: after registration its correlation with the "
        f"MNI152 template is {similarity:.2f} (< {qc.SIMILARITY_FAIL}): not a brain "
        "scan, or registration failed.")
  voxel_mm = float(abs(np.linalg.det(grid.affine[:3, :3])) ** (1 / 3))
  if user_brain is not None:  # The user's mask wins.
    brain = register.resample(user_brain, affine, reg.transform, grid,
                              "nearest")
  else:
    brain = skullstrip.brain_mask(moved, template_brain, voxel_mm)
  if ignore is not None:
    # Voxels the dataset labels neither lesion nor healthy (WMH label 2)
    # leave the brain mask, so detection scores them neither way.
    brain = brain * (1 - register.resample(ignore, affine, reg.transform,
                                           grid, "nearest"))
  inside = register.resample(np.ones(image.shape, np.uint8), affine,
                             reg.transform, grid, "nearest")
  outputs = {"image": (moved * brain).astype(np.float32), "brain": brain}
  if lesion is not None:
    outputs["mask"] = register.resample(lesion, affine, reg.transform, grid,
                                        "nearest")
  for name, path in _other_modalities(subject).items():
    try:
      data, m_affine, rigid = _load_modality(path, image, affine, image.shape)
    except nifti.NiftiError as e:
      raise PreprocessError("bad_input", str(e)) from e
    transform = reg.transform if rigid is None else s.CompositeTransform(
        [rigid, reg.transform])  # MNI -> reference scanner -> modality.
    data = data - min(float(data.min()), 0.0)
    if settings.n4:
      data = bias.n4(data, m_affine, bias.head_mask(data))[0]
    moved_m = register.resample(data, m_affine, transform, grid,
                                settings.interpolation)
    outputs[f"modality:{name}"] = (moved_m * brain).astype(np.float32)
    outputs[f"modality:{name}:brain"] = brain
    if lesion is not None:
      outputs[f"modality:{name}:mask"] = outputs["mask"]

  paths = output_paths(out_dir, split, subject)
  for key, data in outputs.items():
    nifti.save_volume(paths[key], data, grid.affine, xform_code="mni")
  qc.save_png(paths["png"], moved, template_brain, brain > 0,
              title=f"{subject.subject_id} ({split})")
  row = {
      "similarity": similarity,
      "brain_ml": float(brain.sum() * voxel_mm**3 * reg.determinant / 1e3),
      "brain_frame_fraction": float(brain.mean()),
      "fov_coverage": float(inside[template_brain].mean()),
      "det": reg.determinant,
      "scales": [float(v) for v in reg.scales],
      "mni_to_scanner": reg.affine.tolist(),
  }
  return row


def process_subject(split, subject, out_dir, settings):
  """Runs one subject and writes its sidecar; never raises.

  Returns:
    the QC row (dict with at least the qc.COLUMNS keys).
  """
  start = time.time()
  row = {"split": split, "subject": subject.subject_id, "status": "ok",
         "reason": "", "flag": "", "seconds": 0.0, "similarity": float("nan"),
         "brain_ml": float("nan"), "brain_frame_fraction": float("nan"),
         "fov_coverage": float("nan"), "det": float("nan"), "scales": []}
  try:
    row.update(_process(split, subject, out_dir, settings))
    row["flag"] = ";".join(qc.subject_flags(row))
  except PreprocessError as e:
    row.update(status="failed", reason=e.reason, message=str(e))
  except Exception as e:  # pylint: disable=broad-except
    # One subject's bug must not kill a run over hundreds: report it.
    row.update(status="failed", reason="error",
               message=f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
  row["seconds"] = time.time() - start
  if row["status"] != "ok":  # Excluded from the output layout.
    for path in output_paths(out_dir, split, subject).values():
      if path.exists():
        path.unlink()
  record = {"status": row["status"], "split": split,
            "settings": settings.to_json(), "inputs": _inputs(subject),
            "row": row}
  sidecar = sidecar_path(out_dir, subject)
  sidecar.parent.mkdir(parents=True, exist_ok=True)
  tmp = sidecar.with_suffix(".tmp")
  tmp.write_text(json.dumps(record, indent=1, default=float))
  tmp.replace(sidecar)  # Last, atomically: it marks the subject done.
  return row


# --- A run --------------------------------------------------------------------


def check_folders(input_dir, output_dir):
  """Refuses an output folder equal to or inside the input folder."""
  inp = pathlib.Path(os.path.expanduser(input_dir)).resolve()
  out = pathlib.Path(os.path.expanduser(output_dir)).resolve()
  if out == inp or inp in out.parents:
    raise ValueError(
        f"--output {out} is inside --input {inp}: preprocessing never writes "
        "into its input. Choose an output folder outside it.")


def _init_worker(threads):
  register.sitk().ProcessObject_SetGlobalDefaultNumberOfThreads(threads)


@dataclasses.dataclass
class Summary:
  rows: list  # QC rows, every subject.
  skipped: list  # Subject ids found up to date.
  failed: list  # (subject id, reason, message).


def run(input_dir, output_dir, *, layout="raw", modality=None,
        settings=Settings(), workers=1, keep_going=True):
  """Preprocesses every subject under `input_dir` into `output_dir`.

  Args:
    input_dir: the raw data (never written to).
    output_dir: the `custom` root to write (see the module doc).
    layout: 'raw' or a genjax.data.layouts layout name.
    modality: the layout's reference modality (None: its default).
    settings: a Settings.
    workers: parallel processes (1: in this process).
    keep_going: True: a failed subject is reported and the others still run.
      False: no new subject starts after the first failure (those running
      finish).

  Returns:
    a Summary; the QC table is in output_dir/qc/.
  """
  check_folders(input_dir, output_dir)
  register.output_grid(settings.grid)  # Fails early on a bad grid name.
  found = find_subjects(layout, input_dir, modality)
  jobs = [(split, s) for split in sorted(found) for s in found[split]]
  total = len(jobs)
  rows, skipped, todo = [], [], []
  for split, subject in jobs:
    if is_done(output_dir, split, subject, settings):
      with open(sidecar_path(output_dir, subject)) as f:
        rows.append(json.load(f)["row"])
      skipped.append(subject.subject_id)
      logging.info("[%d/%d] %s: up to date, skipped", len(rows), total,
                   subject.subject_id)
    else:
      todo.append((split, subject))

  def report(row):
    rows.append(row)
    status = row["status"] if row["status"] == "ok" else (
        f"FAILED ({row['reason']})")
    logging.info("[%d/%d] %s: %s in %.1f s%s", len(rows), total,
                 row["subject"], status, row["seconds"],
                 f" [{row['flag']}]" if row.get("flag") else "")
    return row["status"] == "ok"

  if workers <= 1:
    for split, subject in todo:
      if not report(process_subject(split, subject, output_dir, settings)) \
          and not keep_going:
        break
  else:
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # ITK threads and fork.
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker,
        initargs=(threads,)) as pool:
      futures = [pool.submit(process_subject, split, subject, output_dir,
                             settings) for split, subject in todo]
      for future in concurrent.futures.as_completed(futures):
        if not report(future.result()) and not keep_going:
          for f in futures:
            f.cancel()
  qc.cohort_flags(rows)
  qc.write_table(rows, os.path.join(output_dir, "qc"))
  failed = [(r["subject"], r["reason"], r.get("message", ""))
            for r in rows if r["status"] != "ok"]
  return Summary(rows=rows, skipped=skipped, failed=failed)
