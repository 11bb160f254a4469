"""The DDPM method's training-noise switch (config.diffusion.noise).

AnoDDPM trains on simplex noise; the switch must reach the training loss
and the sampler, and a Gaussian run must stay exactly what it was.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpm as ddpm_config
from genjax import config as config_lib
from genjax import methods
from genjax.diffusion import losses
from genjax.diffusion import simplex
from genjax.methods import ddpm as ddpm_method


def _config(noise):
  config = ddpm_config.get_config("smoke")
  config.diffusion.noise = noise
  return config


def _batch(config):
  s, b = config.data.image_size, config.train.batch_size
  image = jnp.linspace(-1.0, 1.0, b * s * s).reshape(b, s, s, 1)
  zeros = jnp.zeros_like(image)
  return {"image": image, "mask": zeros, "brain": zeros + 1.0,
          "label": jnp.zeros((b,), jnp.int32)}


def _neighbour_correlation(x):
  """Mean correlation of horizontally adjacent pixels, per image."""
  x = np.asarray(x)[..., 0]
  a, b = x[:, :, :-1].reshape(len(x), -1), x[:, :, 1:].reshape(len(x), -1)
  return float(np.mean([np.corrcoef(u, v)[0, 1] for u, v in zip(a, b)]))


@pytest.mark.parametrize("noise", ["gaussian", "simplex"])
def test_training_loss_uses_the_configured_noise(noise, monkeypatch):
  config = _config(noise)
  seen = []
  real = losses.denoising_loss

  def spy(*args, noise_fn=None, **kwargs):
    seen.append(noise_fn)
    return real(*args, noise_fn=noise_fn, **kwargs)
  monkeypatch.setattr(ddpm_method.losses, "denoising_loss", spy)
  method = methods.get(config)
  batch = _batch(config)
  # Traced only (the noise function is chosen when the step is traced, as
  # the loop's jit traces it); computing the step would add 15 s of
  # compilation and test nothing more.
  state = jax.eval_shape(method.init, jax.random.key(0, impl="rbg"), batch)
  _, metrics = jax.eval_shape(method.train_step, state, batch,
                              jax.random.key(1))
  assert metrics["loss"].shape == ()
  assert seen, "the training step did not call denoising_loss"
  key, shape = jax.random.key(2), (2, 16, 16, 1)
  expected = (simplex.simplex_noise(key, shape) if noise == "simplex"
              else jax.random.normal(key, shape))
  np.testing.assert_array_equal(seen[0](key, shape), expected)


def test_simplex_model_samples_from_simplex_noise(monkeypatch):
  # The prior draw x_T and each step's noise follow the training noise.
  captured = {}

  def fake_sampler(model_fn, schedule, rng, x_start, t_start, *, noise_fn,
                   **kwargs):
    del model_fn, schedule, t_start, kwargs
    captured["x_T"], captured["noise_fn"] = x_start, noise_fn
    captured["step_noise"] = noise_fn(rng, x_start.shape)
    return x_start
  monkeypatch.setattr(ddpm_method.samplers, "get_sampler",
                      lambda name: fake_sampler)
  for noise in ("gaussian", "simplex"):
    config = _config(noise)
    config.data.image_size = 32
    method = methods.get(config)
    # The fake sampler never calls the network: a state of zeros will do
    # (initialising one eagerly takes seconds per op).
    shapes = jax.eval_shape(method.init, jax.random.key(0), _batch(config))
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    method.sample(state, jax.random.key(3), 4)
    rho_start = _neighbour_correlation(captured["x_T"])
    rho_step = _neighbour_correlation(captured["step_noise"])
    if noise == "simplex":  # Correlated (~0.5 at 32 px with 6 octaves).
      assert rho_start > 0.3 and rho_step > 0.3, (rho_start, rho_step)
    else:  # White noise: neighbours uncorrelated (4 x 32 x 31 pairs).
      assert abs(rho_start) < 0.1 and abs(rho_step) < 0.1, (rho_start,
                                                              rho_step)


def test_unknown_training_noise_is_a_config_error():
  config = _config("perlin")
  with pytest.raises(config_lib.ConfigError, match="diffusion.noise='perlin'"):
    config_lib.validate(config)


def test_config_saved_before_the_switch_trains_with_gaussian_noise(
    monkeypatch):
  config = _config("gaussian")
  del config.diffusion["noise"]
  seen = []
  real = losses.denoising_loss
  monkeypatch.setattr(
      ddpm_method.losses, "denoising_loss",
      lambda *a, noise_fn=None, **k: seen.append(noise_fn) or real(
          *a, noise_fn=noise_fn, **k))
  method = methods.get(config)
  batch = _batch(config)
  state = jax.eval_shape(method.init, jax.random.key(0), batch)
  jax.eval_shape(method.train_step, state, batch, jax.random.key(1))
  assert seen[0] is losses.gaussian_noise
