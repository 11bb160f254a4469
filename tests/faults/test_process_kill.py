"""Fault class: the training process is killed. SIGTERM (preemption) and
SIGKILL sent to a real `python -m experiments.main` process."""

import os
import signal
import subprocess
import sys
import threading
import time

from tests.faults.helpers import checkpoint_steps as _steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


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


