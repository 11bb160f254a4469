r"""Resume latency of the input pipeline: call to first batch at a start step.

A run restarted from a checkpoint of step k calls
`pipeline.train_iterator(..., start_step=k)` and waits for its first batch;
this times exactly that, at several k, on the `:smoke` data (the tiny brain
phantom, built into a temporary data_dir unless --data_dir names one).

  python -m experiments.resume_latency --steps=2000,200000,2000000

Prints a markdown table (median and all runs per start step) and, with
--out, writes the same as JSON. A start step is skipped (reported as such)
once a smaller one took longer than --max_seconds per call, so the probe can
run against a pipeline whose resume time grows with k.
"""

import json
import statistics
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

from configs import ddpm
from genjax.data import builders
from genjax.data import pipeline

_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Where brain_phantom/tiny is (built there if missing); "
    "default a temporary directory.")
_STEPS = flags.DEFINE_list("steps", ["2000", "200000", "2000000"],
                           "Start steps to time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per start step.")
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds", 300.0, "Skip larger start steps once one call took longer.")
_SPLIT = flags.DEFINE_string("train_split", "train", "config.data.train_split.")
_LESION_FRACTION = flags.DEFINE_float(
    "lesion_fraction", None, "config.data.lesion_fraction (oversampling).")
_OUT = flags.DEFINE_string("out", None, "Write the results here as JSON.")


def first_batch_seconds(data_config, batch_size, start_step, seed=0):
  """Seconds from train_iterator(start_step=...) to its first batch."""
  t = time.perf_counter()
  batch = next(pipeline.train_iterator(data_config, batch_size, seed=seed,
                                       start_step=start_step))
  seconds = time.perf_counter() - t
  assert batch["image"].shape[0] == batch_size
  return seconds


def measure(data_config, batch_size, steps, repeats, max_seconds):
  """{start_step: [seconds per call] or None (skipped)}."""
  # One untimed call: builds TF's kernels and reads the dataset files once,
  # which every real resume pays too but is not what grows with k.
  first_batch_seconds(data_config, batch_size, 0)
  results, too_slow = {}, False
  for step in steps:
    if too_slow:
      results[step] = None
      continue
    times = []
    for _ in range(repeats):
      times.append(first_batch_seconds(data_config, batch_size, step))
      logging.info("start_step=%d: %.3f s", step, times[-1])
      if times[-1] > max_seconds:
        too_slow = True
        break
    results[step] = times
  return results


def markdown(results, batch_size):
  lines = [f"| start_step | examples before it (batch {batch_size}) | "
           "median s to first batch | runs (s) |", "|---|---|---|---|"]
  for step, times in results.items():
    if times is None:
      lines.append(f"| {step:,} | {step * batch_size:,} | skipped (slower "
                   "step before it) | |")
    else:
      runs = ", ".join(f"{t:.3f}" for t in times)
      lines.append(f"| {step:,} | {step * batch_size:,} | "
                   f"{statistics.median(times):.3f} | {runs} |")
  return "\n".join(lines)


def main(argv):
  del argv
  config = ddpm.get_config("smoke")
  config.data.data_dir = _DATA_DIR.value or tempfile.mkdtemp(
      prefix="genjax-resume-latency-")
  config.data.train_split = _SPLIT.value
  if _LESION_FRACTION.value is not None:
    config.data.lesion_fraction = _LESION_FRACTION.value
  builders.load_split(config.data, config.data.train_split)  # Builds it.
  batch_size = config.train.batch_size
  steps = [int(s) for s in _STEPS.value]
  results = measure(config.data, batch_size, steps, _REPEATS.value,
                    _MAX_SECONDS.value)
  print(markdown(results, batch_size))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"batch_size": batch_size, "train_split": _SPLIT.value,
                 "lesion_fraction": _LESION_FRACTION.value,
                 "seconds": {str(k): v for k, v in results.items()}}, f,
                indent=2)


if __name__ == "__main__":
  app.run(main)
