"""Gradient accumulation (config.train.grad_accum_steps) for every method.

k micro-batches of B / k examples must give the update of one batch of B:
the losses are means of per-example terms, so the mean of the micro-batch
gradients is the full-batch gradient. The random draws cannot match (a
micro-batch draws its own noise), so the method-level checks run the real
train steps under a PRNG whose every draw is the same constant: then the
objective is a deterministic per-example mean and only the batching differs.
"""

import importlib

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from genjax import config as config_lib
from genjax import methods
from genjax import optim
from genjax import parallel

# Every key is the same key and every random bit pattern the same constant.
_CONSTANT_PRNG = jex_random.define_prng_impl(
    key_shape=(1,), seed=lambda seed: jnp.zeros((1,), jnp.uint32),
    split=lambda key, shape: jnp.broadcast_to(key, (*shape, 1)),
    random_bits=lambda key, bit_width, shape: jnp.full(
        shape, 0x9E3779B97F4A7C15 >> (64 - bit_width),
        jnp.dtype(f"uint{bit_width}")),
    fold_in=lambda key, data: key, name="constant")


def test_micro_batches_are_strided():
  batch = {"image": jnp.arange(8.0)[:, None], "label": jnp.arange(8)}
  micro = optim.micro_batches(batch, 2)
  np.testing.assert_array_equal(micro["label"], [[0, 2, 4, 6], [1, 3, 5, 7]])
  assert micro["image"].shape == (2, 4, 1)
  with pytest.raises(ValueError, match="grad_accum_steps"):
    optim.micro_batches(batch, 3)


def test_mean_of_micro_batch_gradients_is_the_batch_gradient():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3,)), jnp.float32)

  def grad_fn(batch, key):
    del key
    loss = lambda w: jnp.mean(jnp.tanh(batch @ w) ** 2)
    return jax.value_and_grad(loss)(w), jnp.float32(batch.shape[0])

  (loss1, g1), _ = optim.accumulate_gradients(grad_fn, x, jax.random.key(0), 1)
  (loss3, g3), last = jax.jit(
      lambda x: optim.accumulate_gradients(grad_fn, x, jax.random.key(0), 3))(x)
  np.testing.assert_allclose(loss3, loss1, rtol=1e-6)
  np.testing.assert_allclose(g3, g1, rtol=1e-5, atol=1e-7)
  assert float(last) == 4.0  # The last micro-batch's `last_part`.


def _config(name, accum_steps, batch_size=4):
  config = importlib.import_module(f"configs.{name}").get_config("smoke")
  config.train.batch_size = batch_size
  config.train.grad_accum_steps = accum_steps
  if name == "gan":
    config.gan.gan_steps = 1  # Step 0: D and G; step 1: the encoder.
    # A conv bias followed by GroupNorm has a gradient of exactly 0, in
    # float32 rounding noise of 1e-9, which Adam scales up to +-lr: that
    # noise, not the accumulation, would differ. Without G's norms every
    # gradient is a real one.
    config.model.g_norm = "none"
  return config


def _batch(seed, size=4):
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1, 1, (size, 32, 32, 1)).astype(np.float32)
  return {"image": jnp.asarray(image),
          "mask": jnp.asarray((image > 0.8).astype(np.float32)),
          "brain": jnp.ones((size, 32, 32, 1), jnp.float32),
          "label": jnp.zeros((size,), jnp.int32)}


def _trainer(config):
  """Runs the method's jitted train_step over batches, under the constant PRNG."""
  method = methods.get(config)
  state0 = jax.jit(method.init)(jax.random.key(0), _batch(0))
  step = jax.jit(method.train_step)
  key = jax.random.key(0, impl=_CONSTANT_PRNG)

  def run(batches):
    state, losses = state0, []
    for batch in batches:
      state, metrics = step(state, batch, key)
      losses.append({k: float(v) for k, v in metrics.items()})
    return jax.device_get(state), losses
  return run


def _assert_close(a, b, rtol):
  """Leaf by leaf |a - b| <= rtol * max(1, max |a|)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    np.testing.assert_allclose(y, x, rtol=0,
                               atol=rtol * max(1.0, float(np.max(np.abs(x)))))


@pytest.mark.parametrize("name", ["ddpm", "vae", "gan"])
def test_two_micro_batches_update_as_one_batch(name):
  batches = [_batch(1), _batch(2)]
  one, losses_one = _trainer(_config(name, 1))(batches)
  run_two = _trainer(_config(name, 2))
  two, losses_two = run_two(batches)
  assert int(two.step) == int(one.step) == 2  # One step per update.
  for a, b in zip(losses_one, losses_two):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5,
                                 err_msg=key)
  _assert_close(one.params if name != "gan" else
                (one.g_params, one.d_params, one.e_params),
                two.params if name != "gan" else
                (two.g_params, two.d_params, two.e_params), 1e-5)
  _assert_close(one, two, 1e-4)  # Also optimiser states, EMA, SN statistics.
  # The check can fail: if micro-batch 1 is a copy of micro-batch 0 (the
  # strided split: examples 0, 2 and 1, 3), the update is micro-batch 0's
  # alone, which is what an accumulator that dropped the others would give.
  copies = [jax.tree.map(lambda x: jnp.repeat(x[::2], 2, axis=0), b)
            for b in batches]
  first_only, _ = run_two(copies)
  with pytest.raises(AssertionError):
    _assert_close(one, first_only, 1e-4)


def test_accumulation_config_errors():
  config = _config("ddpm", 3)
  with pytest.raises(config_lib.ConfigError,
                     match=r"batch_size=4 .* divisible by grad_accum_steps=3"):
    config_lib.validate_train(config.train)
  config.train.grad_accum_steps = 0
  with pytest.raises(config_lib.ConfigError, match="grad_accum_steps"):
    config_lib.validate_train(config.train)
  # Devices x micro-batches: 1 device, k = 4 does not divide a batch of 6.
  mesh = parallel.make_mesh(jax.devices()[:1])
  parallel.check_batch_size(8, mesh, 4)
  with pytest.raises(ValueError, match=r"grad_accum_steps \(4\).*multiple "
                     "of 4"):
    parallel.check_batch_size(6, mesh, 4)


def test_defaults_are_one_step_and_float32():
  train = base.get_base_config("smoke").train
  assert train.grad_accum_steps == 1 and train.compute_dtype == "float32"
