"""What `experiments.main --mode=...` runs; each mode is one function."""

MODES = ("data", "train", "sample", "eval", "detect")


def run(mode, config, workdir):
  """Runs `mode` with a validated `config`, writing under `workdir`."""
  # pylint: disable=g-import-not-at-top
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}.")
  if mode == "data":
    from genjax.data import report
    return report.write_data_report(config, workdir)
  if mode == "train":
    from genjax import train
    return train.train_and_evaluate(config, workdir)
  if mode == "sample":
    from genjax import train
    return train.sample_mode(config, workdir)
  if mode == "eval":
    from genjax import evaluate
    return evaluate.eval_mode(config, workdir)
  if mode == "detect":
    from genjax import anomaly
    return anomaly.detect_mode(config, workdir)
