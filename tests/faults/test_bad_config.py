"""Fault class: bad configs. Typos, wrong types, impossible values and
sizes the networks or the devices cannot split: each is a one-line error
naming the field, before any data is built or code compiled."""

import os
import subprocess
import sys

import pytest

from configs import base
from configs import ddpm
from configs import gan
from configs import vae
from genjax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _main(*args, timeout=120):
  """Runs `python -m experiments.main ARGS` from the repo root."""
  return subprocess.run(
      [sys.executable, "-m", "experiments.main", *args], cwd=ROOT,
      capture_output=True, text=True, timeout=timeout)


def test_unknown_variant_is_rejected():
  with pytest.raises(ValueError, match="Unknown config variant 'gpu'"):
    base.get_base_config("gpu")


@pytest.mark.parametrize("field,value,match", [
    ("data.image_size", 4, "data.image_size"),
    ("data.clip_percentiles", (0.5, 97.0), "data.clip_percentiles"),
    ("data.clip_percentiles", (99.0, 1.0), "data.clip_percentiles"),
    ("data.slice_range", (40, 10), "data.slice_range"),
    ("data.lesion_fraction", 1.5, "data.lesion_fraction"),
    ("data.dataset", "mnist", "data.dataset"),
    ("data.min_brain_fraction", 1.0, "data.min_brain_fraction"),
    ("augment.gamma_range", (1.5, 0.7), "augment.gamma_range"),
    ("augment.crop_scale", (0.5, 1.5), "augment.crop_scale"),
    ("train.batch_size", 0, "train.batch_size"),
    ("train.num_steps", -1, "train.num_steps"),
    ("train.compute_dtype", "float16", "train.compute_dtype"),
    ("train.grad_accum_steps", 0, "train.grad_accum_steps"),
    ("train.grad_accum_steps", 3, "divisible by grad_accum_steps=3"),
    ("data.image_size", 33, "not divisible by 2"),  # :smoke UNet: 2 levels.
    ("anomaly.noise_level", 0, "config.anomaly.noise_level"),
    ("anomaly.noise_level", 1001, "config.anomaly.noise_level"),
    ("model.num_groups", 3, "config.model.num_groups"),
    ("model.attention_resolutions", (5,), "attention_resolutions"),
    ("sample.sampler", "euler", "config.sample"),
    ("method", "diffusion", "config.method"),
])
def test_impossible_values_name_the_field(field, value, match):
  config = ddpm.get_config("smoke")
  with config.unlocked():
    if "." in field:
      section, name = field.split(".")
      config[section][name] = value
    else:
      config[field] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(config)


def test_command_line_rejects_unknown_field():
  result = _main("--config=configs/ddpm.py:smoke", "--workdir=/tmp/unused",
                 "--mode=data", "--config.data.imagesize=64")
  assert result.returncode != 0
  assert "Config error: no field 'imagesize'" in result.stderr
  assert "image_size" in result.stderr  # The suggestion.
  assert "Traceback" not in result.stderr


def test_command_line_rejects_wrong_type_and_bad_mode():
  result = _main("--config=configs/ddpm.py:smoke", "--workdir=/tmp/unused",
                 "--config.data.image_size=big")
  assert result.returncode != 0 and "image_size" in result.stderr
  assert "Traceback" not in result.stderr
  result = _main("--config=configs/ddpm.py:smoke", "--workdir=/tmp/unused",
                 "--mode=detct")
  assert result.returncode != 0 and "detect" in result.stderr
  assert "Traceback" not in result.stderr


def test_command_line_rejects_impossible_value_before_building():
  result = _main("--config=configs/ddpm.py:smoke", "--workdir=/tmp/unused",
                 "--mode=data", "--config.data.clip_percentiles=(3.0,99.0)")
  assert result.returncode != 0
  assert "config.data.clip_percentiles" in result.stderr
  assert "Traceback" not in result.stderr


def test_slice_pattern_is_checked_for_slice_folders():
  config = ddpm.get_config("smoke")
  config.data.dataset = "slice_folder"
  config.data.builder_config = "custom"
  config_lib.validate(config)  # The default pattern.
  config.data.slice_pattern = "(?P<slice>[0-9]+)"  # No subject group.
  with pytest.raises(config_lib.ConfigError, match="config.data.slice_pattern"):
    config_lib.validate(config)
  config.data.slice_pattern = "(unclosed"
  with pytest.raises(config_lib.ConfigError, match="config.data.slice_pattern"):
    config_lib.validate(config)


@pytest.mark.parametrize("module,variant,size,match", [
    (ddpm, "cpu", 36, "36 is not divisible by 8, which the UNet's 4 levels"),
    (vae, "cpu", 36, "3 levels, so the image size must be divisible by 8"),
    (gan, "cpu", 48, "power of two"),
])
def test_image_size_the_network_cannot_downsample(module, variant, size,
                                                  match):
  config = module.get_config(variant)
  config.data.image_size = size
  with pytest.raises(config_lib.ConfigError, match=match) as error:
    config_lib.validate(config)
  assert "config.data.image_size" in str(error.value)


def test_unknown_builder_config_names_the_choices():
  config = ddpm.get_config("smoke")
  config.data.builder_config = "res256"
  with pytest.raises(config_lib.ConfigError,
                     match="config.data.builder_config: 'res256'.*tiny, res64"):
    config_lib.validate(config)


def test_batch_size_not_divisible_by_the_devices(tmp_path):
  """On 4 (simulated) devices a batch of 6 stops before any data is built."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  data_dir = tmp_path / "tfds"
  for field, size in (("train", 6), ("eval", 2)):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.main",
         "--config=configs/ddpm.py:smoke", f"--workdir={tmp_path / 'run'}",
         f"--config.data.data_dir={data_dir}", "--config.train.batch_size=8",
         f"--config.{field}.batch_size={size}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    # train's message comes from parallel.check_batch_size (also the loop's).
    assert f"Config error: config.{field}.batch_size" in result.stderr
    assert f"{size} is not divisible" in result.stderr or (
        f"batch_size={size} must be divisible") in result.stderr
    assert "by the number of devices (4)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()  # Nothing was built.
