"""Helpers shared by the fault tests (fixtures are in tests/conftest.py)."""

import os

from genjax import train


def checkpoint_steps(workdir):
  """The steps of the complete checkpoints in WORKDIR/checkpoints, sorted."""
  ckpt = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def train_for(config, workdir, steps, ckpt_every):
  """Trains `config` in-process to `steps`, checkpointing every ckpt_every."""
  config.train.num_steps = steps
  config.train.ckpt_every = ckpt_every
  config.train.sample_every = 100000
  return train.train_and_evaluate(config, workdir)
