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


def _saved_without(workdir, field):
  """Rewrites workdir/config.json as a genjax from before `field` wrote it."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  section, name = field.split(".")
  del saved[section][name]
  with open(path, "w") as f:
    json.dump(saved, f)


def test_field_added_since_counts_only_away_from_its_default(smoke_config,
                                                             tmp_path):
  # A run saved before diffusion.noise existed trained with Gaussian noise:
  # resuming it at the default is the same run; asking for simplex is not.
  config = smoke_config()
  workdir = str(tmp_path)
  train.check_workdir_config(config, workdir)
  _saved_without(workdir, "diffusion.noise")
  train.check_workdir_config(config, workdir)  # The default: accepted.
  _saved_without(workdir, "diffusion.noise")
  config.diffusion.noise = "simplex"
  with pytest.raises(train.WorkdirMismatchError,
                     match=r"diffusion.noise: not in the workdir's config"):
    train.check_workdir_config(config, workdir)
