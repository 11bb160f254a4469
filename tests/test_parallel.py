"""Data parallelism: 8 simulated CPU devices give what 1 device gives.

XLA's device count is fixed when JAX starts, so the check runs in a fresh
Python process with --xla_force_host_platform_device_count=8.
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from configs import {method} as cfg
    from genjax import train

    def run(workdir, devices, batch_size):
      config = cfg.get_config("smoke")
      config.data.data_dir = sys.argv[1]
      config.train.batch_size = batch_size
      config.train.num_steps = 3
      config.train.ckpt_every = 3
      config.train.sample_every = 1000
      return train.train_and_evaluate(config, workdir, devices=devices)

    assert len(jax.devices()) == 8, jax.devices()
    out = sys.argv[2]
    many = run(out + "/eight", jax.devices(), 8)
    one = run(out + "/one", jax.devices()[:1], 8)
    leaves = lambda s: jax.tree.leaves(jax.device_get(s))
    worst = max(float(np.max(np.abs(a - b))) for a, b in
                zip(leaves(many), leaves(one)) if np.asarray(a).dtype.kind == "f")
    print("max |8 devices - 1 device| =", worst)
    assert worst < 1e-4, worst
    try:
      run(out + "/bad", jax.devices(), 12)
    except ValueError as e:
      assert "divisible by the number of devices (8)" in str(e), e
      print("batch 12 on 8 devices:", e)
    else:
      raise AssertionError("batch 12 on 8 devices was accepted")
    print("OK")
""")


@pytest.mark.parametrize("method", ["ddpm"])
def test_eight_devices_match_one(method, phantom_data_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-c", _SCRIPT.format(method=method), phantom_data_dir,
       str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=1200)
  assert result.returncode == 0 and "OK" in result.stdout, (
      result.stdout[-2000:] + result.stderr[-4000:])
