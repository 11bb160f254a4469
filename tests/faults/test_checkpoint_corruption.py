"""Fault class: damaged or foreign checkpoints. The latest checkpoint
truncated on disk, and a checkpoint of another architecture (more kinds of
damage, and read errors that must not count as damage, are in
test_restore_errors.py)."""

import os

import pytest

from genjax import checkpoints
from genjax import methods
from genjax import parallel
from tests.faults.helpers import checkpoint_steps as _steps
from tests.faults.helpers import train_for as _train


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
  manager = checkpoints.checkpoint_manager(config, workdir)
  state, step = checkpoints.restore_or_init(method, config, manager,
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
  manager = checkpoints.checkpoint_manager(config, workdir)
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    checkpoints.restore_or_init(methods.get(config), config, manager,
                          parallel.make_mesh(), None)
  message = str(error.value)
  assert ("ema_params/conv_in/kernel: (3, 3, 1, 8) in the checkpoint, "
          "(3, 3, 1, 16) in the model") in message
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "1"))  # Kept.
