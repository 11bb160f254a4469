"""The published evaluation protocol: a validation part made of patients.

Unsupervised lesion detectors are trained on healthy subjects, but their
operating point (threshold, noise level, post-processing) can only be judged
on lesions. The literature genjax is compared with (Behrendt et al. 2023-24)
splits the PATIENTS of the test data into a validation part, where those
choices are made, and a test part, where they are reported. This module makes
that split; `genjax.anomaly.detect` uses it.

Where the validation patients come from (`lesion_validation_source`):
  * 'val_split': config.data.val_split itself holds patients (e.g. a BraTS
    layout with a validation split of patients): those are used and nothing
    is held out of the eval split;
  * 'eval_split': else a fraction `config.anomaly.patient_val_fraction` of the
    eval split's patients (subjects with any lesion pixel inside the brain,
    among the slices the pipeline keeps) is held out, chosen by a stable
    hash of the subject id (`split_patients`); healthy subjects stay in test;
  * None: fraction 0, or fewer than two patients: no validation patients,
    and the detector reports what it did before this protocol existed.
"""

import hashlib

import numpy as np

from genjax import files
from genjax.metrics import detection


class ProtocolError(ValueError):
  """A patient split that cannot be made; the message says why."""


def subject_rank(subject):
  """The stable sort key of a subject id: its sha256 (then the id itself).

  Independent of the order subjects are stored in, of Python's hash seed
  and of the other subjects, so a subject's side never changes when the
  dataset grows (only the count held out does).
  """
  return hashlib.sha256(str(subject).encode("utf-8")).hexdigest(), str(subject)


def num_validation(n_patients, fraction):
  """How many of n_patients go to validation.

  round(fraction * n) (halves up), but at least 1 when fraction > 0 and there
  are >= 2 patients, and always at least 1 left for test; 0 with fewer than
  two patients or fraction 0.
  """
  if not 0.0 <= fraction < 1.0:
    raise ProtocolError(f"patient_val_fraction={fraction!r}: must be in "
                        "[0, 1) (0 turns the patient validation split off).")
  if fraction == 0.0 or n_patients < 2:
    return 0
  return int(min(max(np.floor(fraction * n_patients + 0.5), 1),
                 n_patients - 1))


def split_patients(patients, fraction):
  """Splits patient ids into (validation, test), deterministically.

  Args:
    patients: iterable of subject ids (str), each a patient.
    fraction: share of patients for validation, in [0, 1).

  Returns:
    (validation, test): disjoint sorted lists covering `patients`; the
    validation ones are the first `num_validation` by `subject_rank`.

  Raises:
    ProtocolError: fraction out of range or a repeated subject id.
  """
  patients = [str(p) for p in patients]
  if len(set(patients)) != len(patients):
    raise ProtocolError(f"split_patients: repeated subject ids in "
                        f"{sorted(patients)}.")
  ranked = sorted(patients, key=subject_rank)
  k = num_validation(len(ranked), fraction)
  return sorted(ranked[:k]), sorted(ranked[k:])


def subject_lesion_flags(batches):
  """{subject: has a lesion pixel inside the brain} over valid examples.

  Args:
    batches: eval batches (`genjax.data.pipeline.eval_batches`): mask,
      brain [B, H, W, 1], subject [B], valid [B].
  """
  flags = {}
  for batch in batches:
    lesion = ((batch["mask"][..., 0] > 0.5)
              & (batch["brain"][..., 0] > 0.5)).reshape(len(batch["valid"]),
                                                        -1).any(axis=1)
    for s, v, has in zip(batch["subject"], batch["valid"], lesion):
      if v:
        s = s.decode("utf-8") if isinstance(s, bytes) else str(s)
        flags[s] = flags.get(s, False) or bool(has)
  return flags


def select_subjects(batches, keep):
  """Re-batches eval batches keeping only the examples of some subjects.

  The output has the input's fixed batch size and layout, with padding
  (`valid` False, copied from the input's own padding convention: the
  first batch's arrays zeroed, image -1, subject '', slice -1) filling
  the last batch, so a jitted function sees one shape.

  Args:
    batches: iterator of eval batches (numpy dicts with `valid`).
    keep: a predicate on the subject id (str).

  Yields:
    Batches of the same size holding the kept valid examples, in order.
  """
  pending, size, template = [], None, None
  for batch in batches:
    size = len(batch["valid"])
    template = template or batch
    for i in np.nonzero(np.asarray(batch["valid"], bool))[0]:
      if keep(str(batch["subject"][i])):
        pending.append({k: v[i] for k, v in batch.items()})
      if len(pending) == size:
        yield _stack(pending)
        pending = []
  if pending:
    pad = _padding(template)
    yield _stack(pending + [pad] * (size - len(pending)))


def _padding(batch):
  """One padding example shaped like the examples of `batch`."""
  out = {k: np.zeros_like(v[0]) for k, v in batch.items()}
  out["image"] = np.full_like(batch["image"][0], -1)
  out["subject"] = np.asarray("", dtype=batch["subject"].dtype)
  out["slice"] = np.asarray(-1, dtype=batch["slice"].dtype)
  out["valid"] = np.asarray(False)
  return out


def _stack(examples):
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def validation_patients(val_split_patients, eval_flags, fraction):
  """Chooses the lesion validation set (see the module docstring).

  Args:
    val_split_patients: patients found in config.data.val_split.
    eval_flags: {subject: has lesion} of the eval split (None: not read,
      which is fine when val_split_patients is not empty or fraction is 0).
    fraction: config.anomaly.patient_val_fraction.

  Returns:
    {"source": 'val_split' | 'eval_split' | None, "subjects": sorted ids,
     "held_out": the subset of the eval split excluded from test,
     "fraction", "n_eval_patients", and "status" when source is None}.
  """
  if val_split_patients:
    return {"source": "val_split", "subjects": sorted(val_split_patients),
            "held_out": [], "fraction": fraction,
            "n_eval_patients": None}
  patients = sorted(s for s, has in (eval_flags or {}).items() if has)
  val, _ = split_patients(patients, fraction)
  out = {"source": "eval_split" if val else None, "subjects": val,
         "held_out": val, "fraction": fraction,
         "n_eval_patients": len(patients)}
  if not val:
    out["status"] = (
        "patient_val_fraction is 0" if fraction == 0 else
        f"the eval split has {len(patients)} patient(s); holding one out "
        "needs at least two") + (
            ": no validation patients, so no validation threshold.")
  return out


def pooled(hists):
  """The sum of ScoreHistograms on the same bins (None for none)."""
  hists = list(hists)
  if not hists:
    return None
  out = detection.ScoreHistogram(hists[0].low, hists[0].high, hists[0].bins)
  for h in hists:
    out.pos += h.pos
    out.neg += h.neg
  return out


def validation_threshold(hists):
  """The Dice-optimal threshold on the validation patients' pooled pixels.

  Args:
    hists: {subject: ScoreHistogram} of the validation patients.

  Returns:
    dict: threshold_val (None without lesion pixels), dice_val (the Dice
    it reaches there), auroc_val, auprc_val, n_validation_patients,
    n_validation_lesion_pixels.
  """
  hist = pooled(hists.values())
  out = {"threshold_val": None, "dice_val": None, "auroc_val": None,
         "auprc_val": None, "n_validation_patients": len(hists),
         "n_validation_lesion_pixels": hist.num_pos if hist else 0}
  if hist is None or not hist.num_pos:
    return out
  out["dice_val"], out["threshold_val"] = hist.best_dice()
  out["auprc_val"] = hist.auprc()
  if hist.num_neg:
    out["auroc_val"] = hist.auroc()
  return out


def report_lines(m):
  """report.md's paragraph on where the validation threshold came from."""
  v = m.get("lesion_validation") or {}
  if not v.get("source"):
    return [f"Validation patients: none ({v.get('status', 'not chosen')})."]
  where = ("config.data.val_split" if v["source"] == "val_split" else
           f"held out of `{m['split']}` (patient_val_fraction="
           f"{v['fraction']}, by sha256 of the subject id; they are "
           "excluded from every test number here)")
  return [f"Validation patients ({len(v['subjects'])}, {where}): "
          f"{', '.join(v['subjects'])}. `threshold_val` maximises Dice over "
          "their pooled brain pixels and is applied to the test subjects "
          "unchanged."]


# --- DIR/detect/subject_histograms.npz ----------------------------------------


def write_subject_histograms(path, subject_hists, threshold, val_hists=None,
                             threshold_val=None):
  """DIR/detect/subject_histograms.npz: each subject's pixel histograms.

  Args:
    path: the .npz to write.
    subject_hists: {subject: ScoreHistogram} of the test subjects (all on
      the same bins).
    threshold: the healthy validation threshold (None: stored as NaN).
    val_hists: {subject: ScoreHistogram} of the validation patients.
    threshold_val: their Dice-optimal threshold (None: stored as NaN).

  Returns:
    path. The file holds subjects [S] (str; test, then validation),
    validation [S] bool, pos and neg [S, bins] (int64), low, high, bins,
    threshold and threshold_val; compressed (most bins are empty).
  """
  val_hists = val_hists or {}
  names = sorted(subject_hists) + sorted(val_hists)
  subject_hists = {**subject_hists, **val_hists}
  some = subject_hists[names[0]] if names else None
  bins = some.bins if some else 0
  files.save_npz(
      path, subjects=np.array(names, dtype=str),
      pos=np.array([subject_hists[n].pos for n in names],
                   np.int64).reshape(len(names), bins),
      neg=np.array([subject_hists[n].neg for n in names],
                   np.int64).reshape(len(names), bins),
      low=some.low if some else 0.0, high=some.high if some else 1.0,
      bins=bins, threshold=np.nan if threshold is None else threshold,
      validation=np.arange(len(names)) >= len(names) - len(val_hists),
      threshold_val=np.nan if threshold_val is None else threshold_val)
  return path


def load_subject_histograms(path):
  """Reads `write_subject_histograms`' file (DIR/detect/subject_histograms.npz).

  Returns:
    dict: subjects (list of str), pos, neg ([S, bins] int64) of the TEST
    subjects, low, high (floats), threshold and threshold_val (float or
    None), and val_subjects, val_pos, val_neg for the validation patients
    (a file from before the protocol has none).
  """
  with files.load_npz(path) as f:
    val = (f["validation"] if "validation" in f.files
           else np.zeros(len(f["subjects"]), bool))
    number = lambda k: (None if k not in f.files or np.isnan(float(f[k]))
                        else float(f[k]))
    subjects = np.array([str(s) for s in f["subjects"]], dtype=object)
    return {"subjects": list(subjects[~val]), "pos": f["pos"][~val],
            "neg": f["neg"][~val], "low": float(f["low"]),
            "high": float(f["high"]), "threshold": number("threshold"),
            "threshold_val": number("threshold_val"),
            "val_subjects": list(subjects[val]), "val_pos": f["pos"][val],
            "val_neg": f["neg"][val]}


def pooled_histogram(data, rows=None):
  """One ScoreHistogram summing the subjects `rows` (default: all) of
  `load_subject_histograms`' dict; repeated rows count repeatedly."""
  rows = np.arange(len(data["subjects"])) if rows is None else np.asarray(
      rows, np.int64)
  hist = detection.ScoreHistogram(data["low"], data["high"],
                                  data["pos"].shape[1])
  hist.pos = data["pos"][rows].sum(axis=0)
  hist.neg = data["neg"][rows].sum(axis=0)
  return hist
