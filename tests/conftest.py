"""Shared fixtures: the tiny brain phantom, built once per test session."""

import os

import pytest

# Tests run on the CPU; keep TensorFlow and JAX from looking for accelerators.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def phantom_data_dir(tmp_path_factory):
  """A data_dir holding the prepared `brain_phantom/tiny` dataset."""
  from configs import ddpm  # pylint: disable=g-import-not-at-top
  from genjax.data import builders  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  config = ddpm.get_config("smoke")
  config.data.data_dir = data_dir
  builders.load_split(config.data, "train")  # Builds all splits.
  return data_dir


@pytest.fixture
def smoke_config(phantom_data_dir):
  """A fresh `configs/ddpm.py:smoke` reading the session's tiny phantom."""
  from configs import ddpm  # pylint: disable=g-import-not-at-top

  def make(module=ddpm):
    config = module.get_config("smoke")
    config.data.data_dir = phantom_data_dir
    return config
  return make
