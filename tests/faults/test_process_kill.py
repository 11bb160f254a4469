"""Faults injected for real: signals to a training process, damaged
checkpoints, checkpoints of another architecture, NaN updates."""

import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import methods
from genjax import parallel
from genjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Run:
  """`python -m experiments.main` in the background, its log collected."""

  def __init__(self, workdir, data_dir, *overrides):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.main",
         "--config=configs/ddpm.py:smoke", f"--workdir={workdir}",
         f"--config.data.data_dir={data_dir}", "--config.train.log_every=1",
         "--config.train.sample_every=100000", *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append(line)

  @property
  def log(self):
    return "".join(self.lines)

  def wait_for(self, predicate, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
      if predicate():
        return
      if self.proc.poll() is not None:
        break
      time.sleep(0.2)
    raise AssertionError(f"condition not reached; log:\n{self.log[-3000:]}")

  def finish(self, timeout=900):
    self.proc.wait(timeout=timeout)
    self._reader.join(timeout=10)
    return self.proc.returncode


def _steps(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def _logged_step(run, step):
  return any(f"[{step}] " in line and "loss=" in line for line in run.lines)


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(phantom_data_dir,
                                                          tmp_path):
  workdir = str(tmp_path)
  run = _Run(workdir, phantom_data_dir, "--config.train.num_steps=100000",
             "--config.train.ckpt_every=100000")
  run.wait_for(lambda: _logged_step(run, 3))
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == 0, run.log[-3000:]
  assert "Preempted: saved step" in run.log
  (stopped_at,) = _steps(workdir)
  assert 3 <= stopped_at < 100000

  rerun = _Run(workdir, phantom_data_dir,
               f"--config.train.num_steps={stopped_at + 2}",
               "--config.train.ckpt_every=100000")
  assert rerun.finish() == 0, rerun.log[-3000:]
  assert f"Restoring checkpoint of step {stopped_at}" in rerun.log
  assert _steps(workdir)[-1] == stopped_at + 2


def test_sigkill_loses_nothing_before_the_last_checkpoint(phantom_data_dir,
                                                          tmp_path):
  workdir = str(tmp_path)
  run = _Run(workdir, phantom_data_dir, "--config.train.num_steps=100000",
             "--config.train.ckpt_every=2")
  run.wait_for(lambda: len([s for s in _steps(workdir) if s >= 4]) > 0
               if os.path.isdir(os.path.join(workdir, "checkpoints")) else
               False)
  run.proc.kill()
  run.finish()
  complete = _steps(workdir)
  assert complete and complete[-1] >= 4

  rerun = _Run(workdir, phantom_data_dir,
               f"--config.train.num_steps={complete[-1] + 1}",
               "--config.train.ckpt_every=2")
  assert rerun.finish() == 0, rerun.log[-3000:]
  assert f"Restoring checkpoint of step {complete[-1]}" in rerun.log


def _train(config, workdir, steps, ckpt_every):
  config.train.num_steps = steps
  config.train.ckpt_every = ckpt_every
  config.train.sample_every = 100000
  return train.train_and_evaluate(config, workdir)


def test_corrupted_latest_checkpoint_falls_back_to_the_one_before(
    smoke_config, tmp_path):
  config = smoke_config()
  workdir = str(tmp_path)
  _train(config, workdir, steps=4, ckpt_every=2)
  # Truncate every data file of the latest checkpoint.
  latest = os.path.join(workdir, "checkpoints", "4")
  damaged = 0
  for folder, _, files in os.walk(latest):
    for name in files:
      path = os.path.join(folder, name)
      if os.path.getsize(path) > 64 and "ocdbt" in folder + name:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 3)
        damaged += 1
  assert damaged

  method = methods.get(config)
  manager = train.checkpoint_manager(config, workdir)
  state, step = train.restore_or_init(method, config, manager,
                                      parallel.make_mesh(), None)
  assert step == 2 and int(state.step) == 2
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "unreadable_4"))
  # Training continues from step 2 and writes a good step 4 again.
  state = _train(config, workdir, steps=4, ckpt_every=2)
  assert int(state.step) == 4 and _steps(workdir)[-1] == 4


def test_checkpoint_of_another_architecture_lists_the_shapes(smoke_config,
                                                             tmp_path):
  config = smoke_config()
  workdir = str(tmp_path)
  _train(config, workdir, steps=1, ckpt_every=1)
  config.model.base_channels = 16  # Another architecture.
  manager = train.checkpoint_manager(config, workdir)
  with pytest.raises(train.CheckpointMismatchError) as error:
    train.restore_or_init(methods.get(config), config, manager,
                          parallel.make_mesh(), None)
  message = str(error.value)
  assert ("ema_params/conv_in/kernel: (3, 3, 1, 8) in the checkpoint, "
          "(3, 3, 1, 16) in the model") in message
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "1"))  # Kept.


_GET_METHOD = methods.get  # The real one, before tests monkeypatch it.


def _poisoned_ddpm(config, bad_from_step):
  """The DDPM whose updates turn the parameters into NaN from a step on."""
  method = _GET_METHOD(config)

  def train_step(state, batch, rng):
    new_state, metrics = method.train_step(state, batch, rng)
    poison = jnp.where(state.step >= bad_from_step, jnp.nan, 1.0)
    params = jax.tree.map(lambda p: p * poison, new_state.params)
    metrics = dict(metrics, param_norm=metrics["param_norm"] * poison)
    return new_state.replace(params=params), metrics
  return method._replace(train_step=train_step)


def test_nonfinite_update_stops_before_checkpointing(smoke_config, tmp_path,
                                                     monkeypatch):
  config = smoke_config()
  workdir = str(tmp_path)
  monkeypatch.setattr(train.methods, "get",
                      lambda c: _poisoned_ddpm(c, bad_from_step=2))
  with pytest.raises(train.NonFiniteError, match="param_norm at step 3"):
    _train(config, workdir, steps=6, ckpt_every=1)
  assert _steps(workdir) == [1, 2]  # The last good checkpoint stays.


def test_skip_nonfinite_drops_and_counts_bad_updates(smoke_config, tmp_path,
                                                     monkeypatch):
  config = smoke_config()
  config.train.skip_nonfinite = True
  monkeypatch.setattr(train.methods, "get",
                      lambda c: _poisoned_ddpm(c, bad_from_step=1))
  state = _train(config, str(tmp_path), steps=3, ckpt_every=3)
  # Step 1 applied; steps 2 and 3 were dropped, so state.step stays at 1.
  assert int(state.step) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  from genjax.train import read_scalars  # pylint: disable=g-import-not-at-top
  skipped = dict(read_scalars(str(tmp_path), "skipped"))
  assert skipped == {1: 0.0, 2: 1.0, 3: 1.0}
