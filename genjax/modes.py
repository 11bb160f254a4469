"""What `experiments.main --mode=...` runs; each mode is one function."""

from absl import logging

MODES = ("data", "train", "sample", "eval", "detect")


def run(mode, config, workdir, allow_start_over=False):
  """Runs `mode` with a validated `config`, writing under `workdir`.

  allow_start_over (train only): start from step 0 if every checkpoint of
  the run is damaged, rather than stop (checkpoints.restore_or_init).

  `workdir` may be a local folder or any etils.epath URL (gs://bucket/run).
  A SIGTERM during sample or detect is a clean stop, as it is in training:
  a warning, nothing half-written, and the same command redoes the work.
  """
  # pylint: disable=g-import-not-at-top
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}.")
  if mode == "data":
    from genjax.data import report
    return report.write_data_report(config, workdir)
  from genjax import train
  if mode == "train":
    return train.train_and_evaluate(config, workdir,
                                    allow_start_over=allow_start_over)
  try:
    if mode == "sample":
      return train.sample_mode(config, workdir)
    if mode == "eval":
      from genjax import evaluate
      return evaluate.eval_mode(config, workdir)
    from genjax import anomaly
    return anomaly.detect_mode(config, workdir)
  except train.Preempted as e:
    logging.warning("%s", e)
    return None
