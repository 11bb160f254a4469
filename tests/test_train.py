"""The generic training loop on `configs/ddpm.py:smoke`: resume, logs, samples."""

import os

import jax
import numpy as np

from genjax.train import read_scalars
from genjax import train


def _params(state):
  return jax.tree.leaves(jax.device_get(state.params))


def test_restart_continues_exactly(smoke_config, tmp_path):
  config = smoke_config()
  config.train.num_steps = 4
  config.train.ckpt_every = 2
  config.train.sample_every = 100
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))

  # The same run, stopped after 2 steps and started again.
  config.train.num_steps = 2
  first = train.train_and_evaluate(config, str(tmp_path / "b"))
  assert int(first.step) == 2
  config.train.num_steps = 4
  resumed = train.train_and_evaluate(config, str(tmp_path / "b"))
  assert int(resumed.step) == 4
  for a, b in zip(_params(uninterrupted), _params(resumed)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  # ... and the restart really resumed rather than starting over.
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == [
      "2", "4", "checksums"]
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints" / "checksums")) == [
      "2.json", "4.json"]
  changed = any(not np.allclose(a, b) for a, b in
                zip(_params(first), _params(resumed)))
  assert changed


def test_loss_decreases_and_is_logged(smoke_config, tmp_path):
  config = smoke_config()
  config.train.num_steps = 60
  config.train.log_every = 5
  config.train.ckpt_every = 60
  config.train.sample_every = 60
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  losses = read_scalars(workdir, "loss")
  assert [s for s, _ in losses] == list(range(5, 61, 5))
  first, last = losses[0][1], np.mean([v for _, v in losses[-3:]])
  assert last < 0.6 * first, losses
  assert {"grad_norm", "param_norm"} <= {
      tag for tag in ("grad_norm", "param_norm")
      if read_scalars(workdir, tag)}
  assert os.path.exists(os.path.join(workdir, "samples", "step_0000060.png"))

  # --mode=sample from the final checkpoint.
  images = train.sample_mode(config, workdir)
  assert images.shape == (config.sample.num_samples, 32, 32, 1)
  assert np.all(np.abs(images) <= 1.0)
  assert os.path.exists(os.path.join(workdir, "sample", "grid.png"))
  saved = np.load(os.path.join(workdir, "sample", "samples.npy"))
  np.testing.assert_array_equal(saved, images)


def test_mean_metrics_average_only_the_steps_that_report_them():
  history = [{"a": 1.0, "b": 0.0, "skipped": 0.0},
             {"a": 3.0, "b": 0.0, "skipped": 0.0},
             {"a": 0.0, "b": 10.0, "skipped": 0.0},
             {"a": 0.0, "b": 20.0, "skipped": 1.0}]
  reported = lambda step, name: (name == "a") == (step < 12)  # Steps 10..13.
  means, _, _ = train._mean_metrics(history, False, 10, reported)
  assert means == {"a": 2.0, "b": 15.0}
  means, _, _ = train._mean_metrics(history, True, 10, reported)
  assert means == {"a": 2.0, "b": 10.0, "skipped": 1.0}
  # A window in which no step reports 'b': it is not logged at all.
  means, _, _ = train._mean_metrics(history[:2], False, 10, reported)
  assert means == {"a": 2.0}
  # Without `reported`, every metric over every (kept) step, as before.
  means, _, _ = train._mean_metrics(history, True)
  assert means == {"a": 4 / 3, "b": 10 / 3, "skipped": 1.0}
