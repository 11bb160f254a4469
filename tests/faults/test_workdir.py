"""Fault class: the wrong workdir. One made with another config (training
into it would mix two runs), and one without a checkpoint."""

import pytest

from genjax import train


def test_workdir_of_another_config_is_refused(smoke_config, tmp_path):
  config = smoke_config()
  config.train.num_steps = 1
  config.train.sample_every = 100
  train.train_and_evaluate(config, str(tmp_path))
  config.model.base_channels = 16
  with pytest.raises(train.WorkdirMismatchError, match="model.base_channels"):
    train.train_and_evaluate(config, str(tmp_path))


def test_sample_without_checkpoint_is_a_clear_error(smoke_config, tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    train.sample_mode(smoke_config(), str(tmp_path))
