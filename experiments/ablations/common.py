"""What the ablation scripts share: configs, reuse of outputs, tables, bootstrap.

Every script in experiments/ablations/ trains, evaluates and detects through
genjax's own functions (`train.train_and_evaluate`, `evaluate.evaluate`,
`anomaly.detect`); this module only decides what to rebuild and what to reuse,
and writes the tables.

Config overrides are `FIELD=VALUE` strings (`anomaly.num_steps=50`,
`data.data_dir=/tmp/tfds`, `model.channel_mult=(1,2,4)`): VALUE is read as a
Python literal when it is one (numbers, tuples, True/None), else as a string.
A field that does not exist is an error naming it, as on experiments.main's
command line.
"""

import ast
import copy
import csv
import difflib
import hashlib
import importlib
import io
import json
import os

from absl import logging
import jax
import ml_collections
import numpy as np

from genjax import anomaly
from genjax import checkpoints
from genjax import config as config_lib
from genjax import files
from genjax import evaluate
from genjax import methods
from genjax import train

# Config fields that do not change what eval/detect compute from a checkpoint:
# where the data lives and how it is fed, and the training run (its length is
# captured by the checkpoint's step; a workdir holds one training config).
IGNORED_FIELDS = ("data.data_dir", "data.manual_dir", "data.prefetch",
                  "data.cache", "train.")

# --- Configs -----------------------------------------------------------------


def method_config(method, variant="", overrides=()):
  """configs/<method>.py:<variant> with `overrides` applied and validated."""
  module = importlib.import_module(f"configs.{method}")
  config = module.get_config(variant or None)
  apply_overrides(config, overrides)
  validate(config)
  return config


def parse_override(text):
  """'a.b=value' -> ('a.b', value); value a Python literal or a string."""
  key, sep, raw = str(text).partition("=")
  key = key.strip()
  if key.startswith("config."):
    key = key[len("config."):]
  if not sep or not key:
    raise ValueError(f"Override {text!r}: write FIELD=VALUE, e.g. "
                     "anomaly.noise_level=100.")
  try:
    value = ast.literal_eval(raw.strip())
  except (ValueError, SyntaxError):
    value = raw.strip()
  return key, value


def _fields(config, prefix=""):
  """Every leaf field of a ConfigDict as 'a.b.c'."""
  out = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out += _fields(value, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}")
  return out


def set_field(config, key, value):
  """Sets config field 'a.b.c' (which must exist), with its type checks."""
  fields = _fields(config)
  if key not in fields:
    close = difflib.get_close_matches(key, fields, n=1)
    hint = f' Did you mean "{close[0]}"?' if close else ""
    raise KeyError(f"No field {key!r} in the {config.get('method', '')} "
                   f"config.{hint}")
  if isinstance(value, list):
    value = tuple(value)  # JSON and literals give lists; configs hold tuples.
  try:
    config.update_from_flattened_dict({key: value})
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.{key}={value!r}: {e}") from None


def apply_overrides(config, overrides):
  """Applies 'FIELD=VALUE' strings (or (field, value) pairs) in order."""
  for item in overrides or ():
    key, value = (parse_override(item) if isinstance(item, str) else item)
    set_field(config, key, value)
  return config


def validate(config):
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    raise ValueError(str(e)) from None
  return config


def config_from_workdir(workdir):
  """The config of the run in `workdir`, rebuilt from its config.json.

  `train.check_workdir_config` saved the whole config as JSON (tuples as
  lists, placeholders as null). This starts from the method's own
  `configs/<method>.py:<variant>` (so field references and types are the
  config file's) and sets every field whose saved value differs. A saved
  field the current config no longer has is logged and skipped; a field
  added to genjax since keeps its default (as when resuming training).
  """
  path = files.join(workdir, "config.json")
  if not files.exists(path):
    raise FileNotFoundError(
        f"{path} does not exist: {workdir} is not a genjax run (train it "
        "with experiments.main first), or pass --config.")
  saved = files.read_json(path)
  if not saved.get("method"):
    raise ValueError(f"{path} has no 'method': not a genjax config.")
  config = method_config(saved["method"], saved.get("variant", ""))
  default = train.flatten_config(json.loads(config.to_json_best_effort()))
  for key, value in train.flatten_config(saved).items():
    if key not in default:
      logging.warning("%s: field %r is not in the current %s config; "
                      "ignored.", path, key, saved["method"])
    elif value != default[key]:
      set_field(config, key, value)
  return config


def flat(config):
  """A config (ConfigDict or its JSON dict) as {'a.b': value}."""
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json_best_effort())
  return train.flatten_config(config)


def relevant(config, ignored=IGNORED_FIELDS):
  """flat(config) without the `ignored` fields (prefixes end with '.')."""
  skip = lambda k: any(k == f or (f.endswith(".") and k.startswith(f))
                       for f in ignored)
  return {k: v for k, v in flat(config).items() if not skip(k)}


def config_differences(saved, config, ignored=IGNORED_FIELDS):
  """Fields (other than `ignored` ones) where `saved` and `config` differ."""
  a, b = relevant(saved, ignored), relevant(config, ignored)
  # A field `saved` lacks was added to genjax since it was written; it
  # differs only if `config` sets it away from its default.
  added = set(b) - set(a)
  if isinstance(config, ml_collections.ConfigDict):
    added &= set(train.added_field_differences(flat(saved), config))
  return sorted(k for k in set(a) | set(b)
                if a.get(k) != b.get(k) and (k in a or k in added))


# --- Train, eval and detect, reusing what exists ---------------------------------


def train_or_resume(config, workdir):
  """(method, state) after `config.train.num_steps` steps in `workdir`.

  `train.train_and_evaluate` resumes from the latest checkpoint, so a
  finished run is only restored, and an interrupted one continues.
  """
  state = train.train_and_evaluate(config, workdir)
  return methods.get(config), state


def checkpoint_step(config, workdir):
  """The latest checkpoint's step in `workdir` (None: no checkpoint).

  Looks before opening: orbax's manager creates the folder it opens, which
  would make a mistyped workdir.
  """
  if not files.exists(checkpoints.checkpoint_dir(workdir)):
    return None
  return checkpoints.checkpoint_manager(config, workdir).latest_step()


def reusable(path, config, step, required=()):
  """Whether out_dir/metrics.json at `path` was made from this config/step.

  Args:
    path: a metrics.json written by evaluate or detect (any genjax.files
      path: a local file or gs://...).
    config: the config it should have been made with.
    step: the checkpoint step it should come from.
    required: other files (relative to its folder) that must exist too.

  Returns:
    (True, metrics) or (False, the reason).
  """
  if not files.exists(path):
    return False, "no outputs yet"
  metrics = files.read_json(path)
  if metrics.get("step") != step:
    return False, f"made at step {metrics.get('step')}, checkpoint is {step}"
  if not metrics.get("config"):
    return False, "it records no config"
  diff = config_differences(metrics["config"], config)
  if diff:
    return False, "config differs in " + ", ".join(diff[:5])
  folder = files.path(path).parent
  missing = [f for f in required if not files.exists(folder / f)]
  if missing:
    return False, "missing " + ", ".join(missing)
  return True, metrics


def run_or_reuse(kind, config, method, state, out_dir, *, force=False,
                 command=None, log=None):
  """evaluate.evaluate / anomaly.detect into out_dir, or their saved output.

  Args:
    kind: 'eval' or 'detect'.
    config, method, state: as for evaluate/detect.
    out_dir: their output folder.
    force: recompute even if reusable outputs exist.
    command: the command line for their report.md.
    log: an optional list; (kind, out_dir) is appended when computed.

  Returns:
    The metrics dict.
  """
  required = {"eval": ("figures.npz",),
              "detect": ("subject_histograms.npz",)}[kind]
  step = int(jax.device_get(state.step))
  ok, found = reusable(files.join(out_dir, "metrics.json"), config, step,
                       required)
  if ok and not force:
    logging.info("Reusing %s (step %d).", out_dir, step)
    return found
  logging.info("Running %s into %s (%s).", kind, out_dir,
               "--force" if ok else found)
  fn = evaluate.evaluate if kind == "eval" else anomaly.detect
  metrics = fn(config, method, state, out_dir, command=command)
  if log is not None:
    log.append((kind, out_dir))
  return metrics


def train_eval_detect(config, run_dir, *, force=False, command=None,
                      log=None):
  """Trains (or resumes) in run_dir, then eval and detect into its eval/ and
  detect/ folders, reusing what exists (see `run_or_reuse`).

  Args:
    config: the run's config.
    run_dir: its workdir.
    force: recompute eval and detect even if reusable outputs exist.
    command: the command line for their report.md.
    log: an optional list; ('train', run_dir) and (kind, out_dir) are
      appended for what was computed.

  Returns:
    (method, state, eval metrics, detect metrics).
  """
  before = checkpoint_step(config, run_dir)
  method, state = train_or_resume(config, run_dir)
  if log is not None and before != checkpoint_step(config, run_dir):
    log.append(("train", run_dir))
  outputs = [run_or_reuse(kind, config, method, state,
                          files.join(run_dir, kind), force=force,
                          command=command, log=log)
             for kind in ("eval", "detect")]
  return (method, state, *outputs)


# --- Bootstrap over subjects --------------------------------------------------


def histogram_metrics(hist, threshold, threshold_val=None):
  """The detector's pixel metrics of one ScoreHistogram (None: undefined);
  threshold_val is the one chosen on the validation patients."""
  defined = anomaly._defined  # pylint: disable=protected-access
  return {
      "dice_at_val_threshold": (hist.dice_at(threshold_val)
                                if threshold_val is not None and hist.num_pos
                                else None),
      "auroc": defined(hist.auroc),
      "auprc": defined(hist.auprc),
      "dice_at_threshold": (hist.dice_at(threshold)
                            if threshold is not None and hist.num_pos
                            else None),
      "dice_best": hist.best_dice()[0] if hist.num_pos else None,
  }


def bootstrap_subjects(data, num_resamples=1000, seed=0, level=0.95,
                       resamples=None):
  """Percentile bootstrap of the pixel metrics over test subjects.

  Only TEST subjects are resampled (`load_subject_histograms` keeps the
  validation patients apart); the thresholds stay those of the detector.
  Subjects (with their every pixel) are drawn with replacement, as many as
  there are; each resample's metrics are recomputed from the sum of the
  drawn subjects' histograms, so pixels of one subject stay together (they
  are not independent). A resample without lesion pixels has no AUPRC or
  Dice and is left out of that metric's interval (`n_valid` counts the
  rest).

  Args:
    data: `anomaly.load_subject_histograms`' dict.
    num_resamples: bootstrap resamples.
    seed: numpy seed of the draws.
    level: the central interval's coverage.
    resamples: optional [R, S] subject indices to use instead of random
      draws (for tests).

  Returns:
    {metric: {"value": full-data value, "lo", "hi", "n_valid"}}; "value"
    equals the detector's metrics.json (same histograms, same functions).
  """
  n = len(data["subjects"])
  if resamples is None:
    resamples = subject_resamples(n, num_resamples, seed)
  resamples = np.asarray(resamples, np.int64)
  threshold_val = data.get("threshold_val")
  point = histogram_metrics(anomaly.pooled_histogram(data),
                            data["threshold"], threshold_val)
  values = {k: [] for k in point}
  for rows in resamples:
    for k, v in histogram_metrics(anomaly.pooled_histogram(data, rows),
                                  data["threshold"], threshold_val).items():
      if v is not None:
        values[k].append(v)
  return {k: {"value": v, **percentile_interval(values[k], level)}
          for k, v in point.items()}


def paired_difference(draws, base_draws, value, base_value, level=0.95):
  """value - base_value with a percentile interval of paired draws.

  Args:
    draws, base_draws: [R] bootstrap draws of the two quantities made on the
      SAME resamples of the same subjects (None where undefined).
    value, base_value: the full-data values.

  Returns:
    {"value", "lo", "hi", "n_valid"} (lo/hi None without a valid pair).
  """
  diffs = [a - b for a, b in zip(draws, base_draws)
           if a is not None and b is not None]
  point = (None if value is None or base_value is None
           else float(value - base_value))
  return {"value": point, **percentile_interval(diffs, level)}


def percentile_interval(draws, level=0.95):
  """{"lo", "hi", "n_valid"}: the central percentile interval of bootstrap
  draws (lo/hi None when there are none)."""
  draws = np.asarray(draws, np.float64)
  if not len(draws):
    return {"lo": None, "hi": None, "n_valid": 0}
  tail = 100 * (1 - level) / 2
  return {"lo": float(np.percentile(draws, tail)),
          "hi": float(np.percentile(draws, 100 - tail)),
          "n_valid": int(len(draws))}


def subject_resamples(n, num_resamples=1000, seed=0):
  """[R, n] subject indices drawn with replacement (one bootstrap plan)."""
  return np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))


def metric_draws(data, metric, resamples):
  """The detector's `metric` on each resample of `data`'s subjects."""
  return [histogram_metrics(anomaly.pooled_histogram(data, rows),
                            data["threshold"], data.get("threshold_val"))[
                                metric] for rows in resamples]


def protocol_sentence(metrics):
  """'chosen on validation patients (N subjects), reported on test (M
  subjects)' from a detector's metrics.json."""
  v = metrics.get("lesion_validation") or {}
  if not v.get("source"):
    return ("No validation patients (anomaly.patient_val_fraction=0 or too "
            "few patients): nothing is chosen on validation; reported on "
            f"test ({metrics.get('n_test_subjects')} subjects).")
  source = ("data.val_split" if v["source"] == "val_split" else
            "held out of the eval split")
  return (f"threshold_val (and t) chosen on validation patients "
          f"({len(v['subjects'])} subjects), reported on test "
          f"({metrics.get('n_test_subjects')} subjects); validation "
          f"patients {source}: {', '.join(v['subjects'])}.")


# --- Tables -------------------------------------------------------------------


def fmt(value, digits=4):
  """A table cell: numbers to `digits` decimals, None as 'n/a'."""
  if value is None:
    return "n/a"
  if isinstance(value, (float, np.floating)):
    return f"{float(value):.{digits}f}"
  return str(value)


def write_csv(path, rows, columns):
  """rows: dicts; columns: their keys in order. Floats written in full.

  Written through genjax.files (a local file or gs://...), folders created.
  """
  buffer = io.StringIO(newline="")
  writer = csv.writer(buffer)
  writer.writerow(columns)
  for row in rows:
    writer.writerow(["" if row.get(c) is None else
                     repr(float(row[c])) if isinstance(
                         row[c], (float, np.floating)) else row[c]
                     for c in columns])
  files.write_text(path, buffer.getvalue())
  return path


def read_csv(path):
  """write_csv's file as a list of dicts of strings."""
  return list(csv.DictReader(io.StringIO(files.read_text(path), newline="")))


def markdown_table(rows, columns, headers=None, digits=4):
  """A GitHub markdown table of rows (dicts) in `columns` order."""
  headers = headers or columns
  lines = ["| " + " | ".join(headers) + " |",
           "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(
        row[c] if isinstance(row.get(c), str) else fmt(row.get(c), digits)
        for c in columns) + " |")
  return "\n".join(lines)


def with_interval(value, lo, hi, digits=3):
  """'0.512 [0.430, 0.601]' (the bootstrap interval in brackets)."""
  if value is None:
    return "n/a"
  if lo is None:
    return fmt(value, digits)
  return f"{fmt(value, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def write_text(path, text):
  """`text` (newline-terminated) as file `path`, through genjax.files."""
  files.write_text(path, text if text.endswith("\n") else text + "\n")
  return path


def write_json(path, data):
  return anomaly.write_json(path, data)


def array_digest(*arrays):
  """A short sha256 of arrays' shapes, dtypes and bytes (part of cache keys)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.shape, str(a.dtype))).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def save_figure(fig, path, **kwargs):
  """fig.savefig to `path` through genjax.files (a local file or gs://...;
  folders created); the format is the path's extension. Returns `path`."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format=files.path(path).suffix.lstrip(".") or "png",
              **kwargs)
  files.write_bytes(path, buffer.getvalue())
  return path


def command_line(argv):
  """The command that ran a script, for its report: `python -m
  experiments.ablations.<script> ...` (argv[0] is the script's path)."""
  import shlex  # pylint: disable=g-import-not-at-top
  script = os.path.splitext(os.path.basename(argv[0]))[0]
  head = ["python", "-m", f"experiments.ablations.{script}"]
  return " ".join(shlex.quote(a) for a in head + list(argv[1:]))


def deep_copy(config):
  """An independent copy of a config (overrides on it leave the original)."""
  return copy.deepcopy(config)
