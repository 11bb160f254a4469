"""Fault class: non-finite updates. A DDPM whose parameters turn into NaN
from a given step: the run stops before checkpointing them, or, with
train.skip_nonfinite, drops and counts the bad updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import methods
from genjax import train
from tests.faults.helpers import checkpoint_steps as _steps
from tests.faults.helpers import train_for as _train

_GET_METHOD = methods.get  # The real one, before tests monkeypatch it.


def _poisoned_ddpm(config, bad_from_step):
  """The DDPM whose updates turn the parameters into NaN from a step on."""
  method = _GET_METHOD(config)

  def train_step(state, batch, rng):
    new_state, metrics = method.train_step(state, batch, rng)
    poison = jnp.where(state.step >= bad_from_step, jnp.nan, 1.0)
    params = jax.tree.map(lambda p: p * poison, new_state.params)
    metrics = dict(metrics, param_norm=metrics["param_norm"] * poison)
    return new_state.replace(params=params), metrics
  return method._replace(train_step=train_step)


def test_nonfinite_update_stops_before_checkpointing(smoke_config, tmp_path,
                                                     monkeypatch):
  config = smoke_config()
  workdir = str(tmp_path)
  monkeypatch.setattr(train.methods, "get",
                      lambda c: _poisoned_ddpm(c, bad_from_step=2))
  with pytest.raises(train.NonFiniteError, match="param_norm at step 3"):
    _train(config, workdir, steps=6, ckpt_every=1)
  assert _steps(workdir) == [1, 2]  # The last good checkpoint stays.


def test_skip_nonfinite_drops_and_counts_bad_updates(smoke_config, tmp_path,
                                                     monkeypatch):
  config = smoke_config()
  config.train.skip_nonfinite = True
  monkeypatch.setattr(train.methods, "get",
                      lambda c: _poisoned_ddpm(c, bad_from_step=1))
  state = _train(config, str(tmp_path), steps=3, ckpt_every=3)
  # Step 1 applied; steps 2 and 3 were dropped, so state.step stays at 1.
  assert int(state.step) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  from genjax.train import read_scalars  # pylint: disable=g-import-not-at-top
  skipped = dict(read_scalars(str(tmp_path), "skipped"))
  assert skipped == {1: 0.0, 2: 1.0, 3: 1.0}
