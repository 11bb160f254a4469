# Copyright 2025 The genjax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Discrete-time noise schedules, the forward process and parameterisations.

Timestep convention (used everywhere in genjax.diffusion)
---------------------------------------------------------
A schedule has T steps (default 1000) and arrays of length T indexed by the
*timestep index* t ∈ {0, …, T-1}. Index t means **t+1 noising steps**:

  x_t = sqrt(alphas_cumprod[t]) x_0 + sqrt(1 - alphas_cumprod[t]) eps,
  alphas_cumprod[t] = prod_{i<=t} (1 - betas[i]).

This is the DDPM paper's x_{t+1} and the convention of MONAI's and diffusers'
schedulers. The model is conditioned on the index t (0..T-1). The clean image
is "index -1" (alphas_cumprod = 1). A *noise level* of n steps (e.g.
`anomaly.noise_level = 200` in the AnoDDPM set-up) is index n - 1, i.e.
alphas_cumprod[n - 1]; `noise_level_to_index` does this conversion.

Parameterisations
-----------------
With x_t = alpha x_0 + sigma eps (alpha = sqrt(alphas_cumprod[t]), sigma =
sqrt(1 - alphas_cumprod[t]); for a VE process alpha = 1) a network may predict
'eps', 'x0' or 'v' = alpha eps - sigma x_0 (Salimans & Ho, 2022). The
conversions below are exact for any (alpha, sigma), not only alpha² + sigma² = 1.
"""

import math
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

PREDICTIONS = ('eps', 'x0', 'v')


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """DDPM's linear schedule (Ho et al., 2020), rescaled for T != 1000.

  The endpoints are multiplied by 1000 / T (as in Nichol & Dhariwal's
  `get_named_beta_schedule`), so that a short schedule (e.g. T = 100 in a smoke
  config) still ends near pure noise; at T = 1000 it is exactly DDPM's.

  Args:
    num_timesteps: T.
    beta_start: beta of the first step at T = 1000.
    beta_end: beta of the last step at T = 1000.

  Returns:
    [T] float64 betas.
  """
  scale = 1000.0 / num_timesteps
  return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def cosine_alphas_cumprod_fn(s: float = 0.008) -> Callable[[np.ndarray], np.ndarray]:
  """Nichol & Dhariwal (2021) eq. 17: u ∈ [0, 1] -> f(u) / f(0).

  f(u) = cos²(π/2 · (u + s) / (1 + s)).

  Args:
    s: small offset that keeps betas near u = 0 from being too small.

  Returns:
    A numpy function of u.
  """
  f = lambda u: np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  return lambda u: f(u) / f(0.0)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008,
                 max_beta: float = 0.999) -> np.ndarray:
  """Cosine schedule: betas[t] = 1 - abar((t+1)/T) / abar(t/T), clipped.

  Args:
    num_timesteps: T.
    s: offset of eq. 17.
    max_beta: clip, as in the paper, against the singularity at u = 1.

  Returns:
    [T] float64 betas.
  """
  abar = cosine_alphas_cumprod_fn(s)
  u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  return np.minimum(1.0 - abar(u[1:]) / abar(u[:-1]), max_beta)


@flax.struct.dataclass
class Schedule:
  """A discrete noise schedule and the terms the forward/reverse steps use.

  All array fields are [T] float32, indexed by the timestep index t (see the
  module docstring: index t = t+1 noising steps). A `Schedule` is a pytree, so
  it can be passed into jitted functions.
  """
  betas: Array
  alphas: Array
  alphas_cumprod: Array
  alphas_cumprod_prev: Array  # alphas_cumprod[t-1], with 1 at t = 0.
  sqrt_alphas_cumprod: Array
  sqrt_one_minus_alphas_cumprod: Array
  sqrt_recip_alphas_cumprod: Array
  sqrt_recipm1_alphas_cumprod: Array
  # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance).
  posterior_variance: Array
  posterior_log_variance_clipped: Array
  posterior_mean_coef1: Array
  posterior_mean_coef2: Array
  kind: str = flax.struct.field(pytree_node=False, default='custom')

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def schedule_from_betas(betas: np.ndarray, kind: str = 'custom') -> Schedule:
  """Builds a `Schedule` from betas (computed in float64, stored in float32).

  Args:
    betas: [T] betas in (0, 1).
    kind: a name kept for printing.

  Returns:
    The `Schedule`.
  """
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
    raise ValueError(f'betas must be a 1-D array in (0, 1); got shape {betas.shape}, '
                     f'range [{betas.min()}, {betas.max()}].')
  alphas = 1.0 - betas
  ac = np.cumprod(alphas)
  ac_prev = np.append(1.0, ac[:-1])
  post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Schedule(
      betas=f32(betas), alphas=f32(alphas), alphas_cumprod=f32(ac),
      alphas_cumprod_prev=f32(ac_prev), sqrt_alphas_cumprod=f32(np.sqrt(ac)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac)),
      sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / ac)),
      sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / ac - 1.0)),
      posterior_variance=f32(post_var),
      # The posterior variance is 0 at t = 0; DDPM clips its log to the t = 1 value.
      posterior_log_variance_clipped=f32(np.log(np.append(post_var[1], post_var[1:]))),
      posterior_mean_coef1=f32(betas * np.sqrt(ac_prev) / (1.0 - ac)),
      posterior_mean_coef2=f32((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)),
      kind=kind)


def make_schedule(kind: str = 'linear', num_timesteps: int = 1000, **kwargs) -> Schedule:
  """Builds a named schedule.

  Args:
    kind: 'linear' (DDPM) or 'cosine' (Nichol & Dhariwal).
    num_timesteps: T.
    **kwargs: passed to `linear_betas` (beta_start, beta_end) or
      `cosine_betas` (s, max_beta).

  Returns:
    The `Schedule`.
  """
  makers = {'linear': linear_betas, 'cosine': cosine_betas}
  if kind not in makers:
    raise ValueError(f'Unknown schedule {kind!r}; use one of {sorted(makers)}.')
  return schedule_from_betas(makers[kind](num_timesteps, **kwargs), kind)


def noise_level_to_index(noise_level: int, num_timesteps: int) -> int:
  """A number of noising steps n ∈ [1, T] -> the timestep index n - 1.

  Args:
    noise_level: n, e.g. 200 for AnoDDPM's "t = 200".
    num_timesteps: T.

  Returns:
    The index (a Python int) for `q_sample` and the samplers' `t_start`.
  """
  if not 1 <= noise_level <= num_timesteps:
    raise ValueError(f'noise_level={noise_level} must be in [1, {num_timesteps}] '
                     f'(a number of noising steps of a T={num_timesteps} schedule).')
  return int(noise_level) - 1


def bcast(c: Array, x: Array) -> Array:
  """Reshapes a scalar or [B] coefficient to broadcast against [B, ...] x."""
  c = jnp.asarray(c)
  return c if c.ndim == 0 else c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def alpha_bar(schedule: Schedule, t: Array) -> Array:
  """alphas_cumprod[t] for int indices t ∈ {-1, …, T-1}; 1 at the clean index -1."""
  t = jnp.asarray(t)
  return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def alpha_sigma(schedule: Schedule, t: Array) -> tuple[Array, Array]:
  """Signal and noise scales of x_t; index -1 (clean) gives (1, 0).

  Args:
    schedule: the schedule.
    t: int timestep indices in {-1, …, T-1}, any shape.

  Returns:
    (alpha, sigma) = (sqrt(abar_t), sqrt(1 - abar_t)), shaped like t.
  """
  abar = alpha_bar(schedule, t)
  return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


def q_sample(schedule: Schedule, x0: Array, t: Array, noise: Array) -> Array:
  """Samples the forward process q(x_t | x_0) (t = index: t+1 noising steps).

  Args:
    schedule: the schedule.
    x0: [B, H, W, C] clean images.
    t: [B] int timestep indices in {0, …, T-1}.
    noise: [B, H, W, C] standard noise (Gaussian, or normalised simplex noise).

  Returns:
    [B, H, W, C] x_t.
  """
  return (bcast(schedule.sqrt_alphas_cumprod[t], x0) * x0
          + bcast(schedule.sqrt_one_minus_alphas_cumprod[t], x0) * noise)


def q_posterior(schedule: Schedule, x0: Array, x_t: Array, t: Array) -> tuple[Array, Array]:
  """Mean and variance of q(x_{t-1} | x_t, x_0) (index t to index t-1).

  Args:
    schedule: the schedule.
    x0: [B, H, W, C] (predicted) clean images.
    x_t: [B, H, W, C] noisy images at index t.
    t: [B] int indices in {0, …, T-1}; t = 0 gives the clean image (variance 0).

  Returns:
    (mean [B, H, W, C], variance [B, 1, 1, 1]).
  """
  mean = (bcast(schedule.posterior_mean_coef1[t], x0) * x0
          + bcast(schedule.posterior_mean_coef2[t], x0) * x_t)
  return mean, bcast(schedule.posterior_variance[t], x0)


def posterior_coefficients(abar_t: Array, abar_s: Array) -> tuple[Array, Array, Array]:
  """q(x_s | x_t, x_0) = N(c_x0 x_0 + c_xt x_t, var) between any two levels.

  For consecutive indices (s = t - 1) these are the schedule's
  posterior_mean_coef1/2 and posterior_variance; for s < t - 1 they are the
  respaced posterior (beta = 1 - abar_t / abar_s) that strided samplers use.

  Args:
    abar_t: alphas_cumprod of the noisier level (scalar or [B]).
    abar_s: alphas_cumprod of the cleaner level, 1 for the clean image.

  Returns:
    (c_x0, c_xt, var), shaped like the inputs.
  """
  beta = 1.0 - abar_t / abar_s
  c_x0 = jnp.sqrt(abar_s) * beta / (1.0 - abar_t)
  c_xt = jnp.sqrt(1.0 - beta) * (1.0 - abar_s) / (1.0 - abar_t)
  return c_x0, c_xt, beta * (1.0 - abar_s) / (1.0 - abar_t)


# --- Parameterisations -------------------------------------------------------


def x0_from_eps(x_t: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
  """x_0 = (x_t - sigma eps) / alpha.  alpha, sigma: scalars or [B]."""
  return (x_t - bcast(sigma, x_t) * eps) / bcast(alpha, x_t)


def eps_from_x0(x_t: Array, x0: Array, alpha: Array, sigma: Array) -> Array:
  """eps = (x_t - alpha x_0) / sigma.  alpha, sigma: scalars or [B]."""
  return (x_t - bcast(alpha, x_t) * x0) / bcast(sigma, x_t)


def v_from_x0_eps(x0: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
  """The v target: v = alpha eps - sigma x_0."""
  return bcast(alpha, x0) * eps - bcast(sigma, x0) * x0


def x0_from_v(x_t: Array, v: Array, alpha: Array, sigma: Array) -> Array:
  """x_0 = (alpha x_t - sigma v) / (alpha² + sigma²)."""
  a, s = bcast(alpha, x_t), bcast(sigma, x_t)
  return (a * x_t - s * v) / (a * a + s * s)


def eps_from_v(x_t: Array, v: Array, alpha: Array, sigma: Array) -> Array:
  """eps = (sigma x_t + alpha v) / (alpha² + sigma²)."""
  a, s = bcast(alpha, x_t), bcast(sigma, x_t)
  return (s * x_t + a * v) / (a * a + s * s)


def _check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f'prediction={prediction!r} must be one of {PREDICTIONS}.')


def to_x0_eps(output: Array, prediction: str, x_t: Array, alpha: Array,
              sigma: Array, clip_x0: float | None = None) -> tuple[Array, Array]:
  """Converts a network output to (x0, eps) predictions.

  Args:
    output: [B, H, W, C] network output.
    prediction: what the network predicts: 'eps', 'x0' or 'v'.
    x_t: [B, H, W, C] its input.
    alpha: scalar or [B] signal scale of x_t.
    sigma: scalar or [B] noise scale of x_t.
    clip_x0: if set, x0 is clipped to [-clip_x0, clip_x0] (data range) and
      eps recomputed from the clipped x0, as DDPM does when sampling.

  Returns:
    (x0 [B, H, W, C], eps [B, H, W, C]).
  """
  _check_prediction(prediction)
  if prediction == 'eps':
    eps = output
    x0 = x0_from_eps(x_t, eps, alpha, sigma)
  elif prediction == 'x0':
    x0 = output
    eps = eps_from_x0(x_t, x0, alpha, sigma)
  else:
    x0, eps = x0_from_v(x_t, output, alpha, sigma), eps_from_v(x_t, output, alpha, sigma)
  if clip_x0 is not None:
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
    eps = eps_from_x0(x_t, x0, alpha, sigma)
  return x0, eps


def target(prediction: str, x0: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
  """The regression target of a network that predicts `prediction`.

  Args:
    prediction: 'eps', 'x0' or 'v'.
    x0: [B, H, W, C] clean images.
    eps: [B, H, W, C] the noise used to make x_t.
    alpha: scalar or [B].
    sigma: scalar or [B].

  Returns:
    [B, H, W, C] target.
  """
  _check_prediction(prediction)
  if prediction == 'eps':
    return eps
  if prediction == 'x0':
    return x0
  return v_from_x0_eps(x0, eps, alpha, sigma)
