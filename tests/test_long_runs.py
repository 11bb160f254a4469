"""Long sampling and detection: progress with an ETA, SIGTERM between chunks."""

import logging
import os
import signal
import threading
import time

import jax
import numpy as np
import pytest

from genjax import checkpoints
from genjax import methods
from genjax import train
from genjax.detect import loop


@pytest.fixture
def ddpm(smoke_config, monkeypatch):
  """An untrained :smoke DDPM sampling in 8 DDIM steps; a line per chunk."""
  config = smoke_config()
  config.sample.num_steps = 8
  method = methods.get(config)
  state = jax.jit(method.init)(jax.random.key(config.seed, impl="rbg"),
                               checkpoints.example_batch(config))
  monkeypatch.setattr(train, "PROGRESS_EVERY_S", 0.0)
  return config, method, state


def _sigterm_at(monkeypatch, when):
  """Sends this process SIGTERM from the first progress report where
  when(what, done) holds; returns the (what, done) reports seen."""
  assert threading.current_thread() is threading.main_thread()
  seen = []
  report = train.Progress.__call__

  def call(self, done, total=None, final=False):
    seen.append((self.what, done))
    if when(self.what, done) and not any(s == "sent" for s in seen):
      seen.append("sent")
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.3)  # The main thread's handler sets the flag meanwhile.
    return report(self, done, total, final)
  monkeypatch.setattr(train.Progress, "__call__", call)
  return seen


def test_chunked_sampling_equals_unchunked_and_logs_an_eta(ddpm, caplog):
  config, method, state = ddpm
  rng = jax.random.key(3)
  plain = np.asarray(jax.jit(method.sample, static_argnums=2)(state, rng, 4))
  caplog.set_level(logging.INFO)
  chunked = train.draw_samples(train.make_sample_fn(method, chunk_steps=3),
                               state, rng, 4)
  np.testing.assert_array_equal(chunked, plain)  # Bit-identical.
  lines = [r.getMessage() for r in caplog.records
           if r.getMessage().startswith("Sampling 4 samples")]
  # 8 steps in chunks of 2 (the largest divisor of 8 not above 3).
  assert [l.split(": ")[1].split(" ")[0] for l in lines] == [
      "2/8", "4/8", "6/8", "8/8"], lines
  assert "ETA" in lines[1] and "steps/s" in lines[1]
  assert "ETA" not in lines[-1]


def test_sigterm_mid_sampling_writes_nothing_and_a_rerun_does(
    ddpm, tmp_path, monkeypatch):
  config, method, state = ddpm
  rng = jax.random.key(4)
  chunked = method._replace(sample=train.make_sample_fn(method, chunk_steps=1))
  path = tmp_path / "sample" / "grid.png"
  seen = _sigterm_at(monkeypatch, lambda what, done: done == 2)
  with train.Preemption() as preemption:
    with pytest.raises(train.Preempted, match="nothing was written"):
      train.write_samples(chunked, state, rng, 4, str(path),
                          preemption=preemption)
  steps = [d for s in seen if s != "sent" for d in [s[1]]]
  assert steps[:2] == [1, 2] and max(steps) <= 3, steps  # Of 8.
  assert not path.exists() and not path.parent.exists()
  assert signal.getsignal(signal.SIGTERM) is not preemption._handle  # pylint: disable=protected-access

  monkeypatch.undo()
  with train.Preemption() as preemption:
    images = train.write_samples(chunked, state, rng, 4, str(path),
                                 preemption=preemption)
  assert path.exists()
  np.testing.assert_array_equal(
      images, np.asarray(jax.jit(method.sample, static_argnums=2)(
          state, rng, 4)))


def test_sigterm_during_detection_writes_no_results(ddpm, tmp_path,
                                                    monkeypatch, caplog):
  config, method, state = ddpm
  out_dir = tmp_path / "detect"
  caplog.set_level(logging.INFO)
  seen = _sigterm_at(monkeypatch,
                     lambda what, done: what.startswith("Detection"))
  with pytest.raises(train.Preempted, match="SIGTERM"):
    loop.detect(config, method, state, str(out_dir))
  assert "sent" in seen
  for name in ("metrics.json", "report.md", "subject_histograms.npz"):
    assert not (out_dir / name).exists()
  assert any("Detection, healthy threshold" in r.getMessage()
             and "slices" in r.getMessage() for r in caplog.records)

  monkeypatch.undo()
  metrics = loop.detect(config, method, state, str(out_dir))
  assert (out_dir / "metrics.json").exists() and metrics["step"] == 0
