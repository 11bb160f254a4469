r"""One table of several `--mode=detect` runs, with intervals over test subjects.

  python -m experiments.detect_table --runs=floor=runs/floor,ddpm=runs/ddpm \
      [--bootstrap=1000] [--out=table.md]

Each run is NAME=DIR: a workdir (its DIR/detect/ from `--mode=detect`) or
a detector output folder itself (one holding metrics.json, e.g. an
ablation's `ablations/noise_level/gaussian_t0500/`). The
table has, per run: the network evaluations and seconds per slice the
detector recorded, pixel AUROC and AUPRC, the three Dice numbers (healthy
threshold, validation-patient threshold, the oracle best), slice AUROC, and
lesion-wise detection by size; pixel metrics carry a 95 % percentile
bootstrap over test subjects (`experiments.ablations.common.
bootstrap_subjects`: subjects resampled with replacement, thresholds fixed
at the detector's), and the sentence saying where thresholds were chosen.
Nothing is recomputed from images: the numbers are those the detector
wrote (metrics.json, subject_histograms.npz).
"""

import sys

from absl import app
from absl import flags

from experiments.ablations import common
from genjax import anomaly
from genjax import files


def define_flags():
  """The command-line flags (defined only when run as a script, so that this
  module imports beside the benchmark and the ablations)."""
  flags.DEFINE_list("runs", None,
                    "NAME=DIR of each detect run (a workdir or a detect "
                    "folder).")
  flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples.")
  flags.DEFINE_string("out", None, "Also write the table here (.md).")

PIXEL = ("auroc", "auprc", "dice_at_threshold", "dice_at_val_threshold",
         "dice_best")


def _size_cell(lesions):
  """'small 3/5, medium 2/2, large 1/1' (detected/count per size bin)."""
  if not lesions or not lesions.get("bins"):
    return "n/a"
  parts = [f"{b['name']} {b['n_detected']}/{b['n_lesions']}"
           for b in lesions["bins"] if b.get("n_lesions")]
  return ", ".join(parts) or "none"


def detect_folder(path):
  """The folder with metrics.json: `path` itself or `path`/detect; None."""
  for folder in (path, files.join(path, "detect")):
    if files.path(files.join(folder, "metrics.json")).is_file():
      return folder
  return None


def row(name, path, num_resamples):
  """One table row (dict of cells) of the detect run in `path`."""
  folder = detect_folder(path)
  m = files.read_json(files.join(folder, "metrics.json"))
  data = anomaly.load_subject_histograms(
      files.join(folder, "subject_histograms.npz"))
  intervals = common.bootstrap_subjects(data, num_resamples)
  cells = {"run": name, "method": m["method"],
           "subjects": f"{m['n_test_subjects']}",
           "slice_auroc": m.get("slice_auroc"),
           "calls_per_slice": m.get("network_calls_per_slice", "n/a"),
           "seconds_per_slice": m["seconds"] / max(m["n_test_slices"], 1),
           "lesions_detected": _size_cell(m.get("lesions")),
           "protocol": common.protocol_sentence(m)}
  for key in PIXEL:
    b = intervals[key]
    cells[key] = common.with_interval(m.get(key), b["lo"], b["hi"])
  return cells


def table(runs, num_resamples=1000):
  """Markdown: the runs' table, then where each chose its thresholds."""
  rows = [row(name, workdir, num_resamples) for name, workdir in runs]
  columns = ["run", "method", "subjects", *PIXEL, "slice_auroc",
             "lesions_detected", "calls_per_slice", "seconds_per_slice"]
  lines = [common.markdown_table(rows, columns, digits=3), ""]
  lines += [f"- {r['run']}: {r['protocol']}" for r in rows]
  lines += ["", "Brackets: 95% bootstrap intervals over test subjects "
            f"({num_resamples} resamples, thresholds fixed). "
            "lesions_detected: detected/count per lesion size (any voxel "
            "flagged at the validation-patient threshold)."]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.runs:
    sys.exit("Give --runs=NAME=DIR,...")
  runs = []
  for item in f.runs:
    name, sep, path = item.partition("=")
    if not sep or detect_folder(path) is None:
      sys.exit(f"--runs: {item!r} is not NAME=DIR with a metrics.json in "
               "DIR or DIR/detect (run --mode=detect there first).")
    runs.append((name, path))
  text = table(runs, f.bootstrap)
  print(text)
  if f.out:
    common.write_text(f.out, text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
