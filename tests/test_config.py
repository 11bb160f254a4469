"""Configs: every variant validates, and the variants scale down.

Impossible values, typos and bad overrides are a fault class of their own:
tests/faults/test_bad_config.py.
"""

import pytest

from configs import ddpm
from genjax import config as config_lib


@pytest.mark.parametrize("variant", ["", "cpu", "smoke"])
def test_every_variant_validates(variant):
  config = ddpm.get_config(variant)
  config_lib.validate(config)
  assert config.variant == variant


def test_variants_scale_down():
  research, cpu, smoke = (ddpm.get_config(v) for v in ("", "cpu", "smoke"))
  assert research.data.image_size > cpu.data.image_size > smoke.data.image_size
  assert research.train.num_steps > cpu.train.num_steps > smoke.train.num_steps
