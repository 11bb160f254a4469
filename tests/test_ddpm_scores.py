"""The DDPM's detector variants: one-step x0, multi-t ensemble, aggregate.

One-step and aggregate are checked with the exact Gaussian denoiser of
tests/test_diffusion.py, whose x0 estimate E[x0 | x_t] is known in closed
form; the ensemble against separate single-t detector calls of the DDPM.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpm as ddpm_config
from genjax import anomaly
from genjax import methods
from genjax.diffusion import samplers
from genjax.diffusion import schedules as sch
from tests.test_diffusion import discrete_alpha_sigma
from tests.test_diffusion import exact_denoiser
from tests.test_diffusion import MU
from tests.test_diffusion import SD

T = 1000


@pytest.fixture(scope="module")
def linear():
  return sch.make_schedule("linear", T)


def _posterior_mean(schedule, x_t, t):
  """E[x0 | x_t] for x0 ~ N(MU, SD²), by hand."""
  a2 = float(schedule.alphas_cumprod[t])
  a, s2 = np.sqrt(a2), 1.0 - a2
  return MU + a * SD ** 2 / (a2 * SD ** 2 + s2) * (x_t - a * MU)


def _x_t(schedule, rng, x0, t):
  """x_t as noise_and_denoise draws it: noise from split(rng)[0]."""
  noise = jax.random.normal(jax.random.split(rng)[0], x0.shape)
  a2 = float(schedule.alphas_cumprod[t])
  return np.sqrt(a2) * x0 + np.sqrt(1.0 - a2) * noise


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_one_step_x0_is_the_exact_posterior_mean(linear, prediction):
  model = exact_denoiser(discrete_alpha_sigma(linear), prediction)
  x0 = MU + SD * jax.random.normal(jax.random.key(0), (8, 4, 4, 1))
  rng = jax.random.key(1)
  for level in (50, 400):
    got = samplers.one_step_x0(model, linear, rng, x0, level,
                               prediction=prediction)
    want = _posterior_mean(linear, _x_t(linear, rng, x0, level - 1),
                           level - 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_one_step_starts_from_the_same_x_t_as_noise_and_denoise(linear):
  # DDIM with a single step (stride t + 1) from index t to the clean image
  # returns its one x0 prediction: the same number from the same x_t.
  model = exact_denoiser(discrete_alpha_sigma(linear))
  x0 = MU + SD * jax.random.normal(jax.random.key(2), (4, 4, 4, 1))
  rng = jax.random.key(3)
  one = samplers.one_step_x0(model, linear, rng, x0, 300)
  ddim = samplers.noise_and_denoise(model, linear, rng, x0, 300,
                                    sampler="ddim", stride=300)
  np.testing.assert_allclose(one, ddim, rtol=1e-5, atol=1e-6)


def test_aggregate_is_the_mean_one_step_error_over_levels(linear):
  model = exact_denoiser(discrete_alpha_sigma(linear))
  x0 = MU + SD * jax.random.normal(jax.random.key(4), (4, 4, 4, 1))
  rng, levels = jax.random.key(5), (100, 250, 400)
  recon, error = jax.jit(lambda x: samplers.aggregate_x0_error(
      model, linear, rng, x, levels))(x0)
  hats = [_posterior_mean(linear, _x_t(linear, k, x0, n - 1), n - 1)
          for k, n in zip(jax.random.split(rng, 3), levels)]
  np.testing.assert_allclose(recon, np.mean(hats, 0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(error, np.mean([np.abs(h - x0) for h in hats],
                                            0), rtol=1e-4, atol=1e-5)


def _counting_model(counter):
  def bump(n):
    counter[0] += int(n)
  def model_fn(x, t):
    jax.debug.callback(bump, 1, ordered=True)
    return jnp.zeros_like(x) + 0.0 * t.reshape((-1,) + (1,) * (x.ndim - 1))
  return model_fn


@pytest.mark.parametrize("sampler,t_start,options", [
    ("ddpm", 29, {}), ("ddpm", 29, {"num_steps": 20}),
    ("ddim", 40, {"stride": 7}), ("ddim", 9, {"num_steps": 3}),
    ("pc", 19, {"num_steps": 10, "n_corrector_steps": 2}),
    ("ode", 19, {"num_steps": 10, "method": "rk4"}),
])
def test_network_calls_match_the_calls_made(sampler, t_start, options):
  schedule = sch.make_schedule("linear", 50)
  counter = [0]
  x = jnp.zeros((1, 2, 2, 1))
  jax.block_until_ready(samplers.get_sampler(sampler)(
      _counting_model(counter), schedule, jax.random.key(0), x, t_start,
      **options))
  jax.effects_barrier()
  assert counter[0] == samplers.network_calls(sampler, 50, t_start,
                                              **options)


def _small_config():
  """`:smoke` with the smallest UNet: one level, one residual block, 4
  channels (the middle block keeps its attention).

  The ensemble test compares the DDPM detector with itself (an ensemble
  against its single-t calls), which holds for any network; a smaller one
  only compiles faster (4 compilations: init, the ensemble, two levels).
  """
  config = ddpm_config.get_config("smoke")
  config.model.update(dict(base_channels=4, channel_mult=(1,),
                           num_res_blocks=1, attention_resolutions=(),
                           num_groups=1, head_channels=4))
  return config


@pytest.fixture(scope="module")
def ddpm_state():
  config = _small_config()
  s = config.data.image_size
  batch = {"image": jnp.zeros((2, s, s, 1))}
  method = methods.get(config)
  state = jax.jit(method.init)(jax.random.key(0, impl="rbg"), batch)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, s, s, 1)).astype(np.float32)
  brain = np.zeros_like(images)
  brain[:, 4:-4, 5:-5] = 1.0
  return state, images, brain


def _detector(state, images, brain, **anomaly_fields):
  config = _small_config()
  config.anomaly.update(dict(median_filter=1, num_reconstructions=2,
                             **anomaly_fields))
  method = methods.get(config)
  opts = anomaly.anomaly_options(config)
  out = jax.jit(anomaly.make_score_fn(method, opts))(
      state, images, brain, jax.random.key(11))
  return out, anomaly.network_calls(method, opts)[0]


def test_ensemble_is_the_mean_of_single_t_detector_calls(ddpm_state):
  # DDIM, 1 and 2 steps at these levels; 'one_step' goes the same way.
  state, images, brain = ddpm_state
  sampler, levels = "ddim", (100, 600)
  ens, ens_calls = _detector(state, images, brain, sampler=sampler,
                             noise_levels=levels)
  singles = [_detector(state, images, brain, sampler=sampler, noise_level=n)
             for n in levels]
  np.testing.assert_allclose(
      ens["residual"], np.mean([o["residual"] for o, _ in singles], 0),
      atol=2e-6)
  np.testing.assert_allclose(
      ens["reconstruction"],
      np.mean([o["reconstruction"] for o, _ in singles], 0), atol=2e-6)
  assert ens_calls == sum(c for _, c in singles)
  # The residual of the mean reconstruction is another (smaller) map.
  assert not np.allclose(ens["residual"],
                         brain * np.abs(images - ens["reconstruction"]),
                         atol=1e-3)
