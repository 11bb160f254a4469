"""Shared fixtures: the tiny brain phantom, built once per test session."""

import os
import shutil
import tempfile

import pytest

# Tests run on the CPU; keep TensorFlow and JAX from looking for accelerators.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
  """One persistent XLA compilation cache per test run.

  The suite compiles the same :smoke programs many times (a DDPM train step
  takes ~9 s to compile on a CI core), in-process and in the `experiments.*`
  subprocesses it starts. JAX reads JAX_COMPILATION_CACHE_DIR when imported,
  so set here, in the controller before xdist starts its workers, it reaches
  every worker and subprocess. The cache starts empty (nothing carries over
  between runs) and is deleted at the end; a directory the user set is used
  as is and kept.
  """
  if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  cache = tempfile.mkdtemp(prefix="genjax-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
  config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


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
