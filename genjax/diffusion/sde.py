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

"""Continuous-time view of diffusion: SDEs (after score_sde's `sde_lib`).

Time s ∈ [0, 1]. A discrete schedule of T steps sits on the grid s = (t+1)/T
for the timestep index t (t+1 noising steps; see `schedules`), so the clean
image is s = 0 and index T-1 is s = 1. Networks are conditioned on the
*label* s T - 1, i.e. the (fractional) timestep index, so one network trained
with the discrete loss serves the discrete and the continuous samplers.

`VPSDE.from_schedule(schedule)` reproduces a discrete schedule exactly: its
log alphā(s) interpolates log alphas_cumprod linearly between grid points
(beta(s) is piecewise constant, beta(s) ≈ T betas[t]). `VPSDE.linear()` is
score_sde's closed form beta(s) = beta_min + s (beta_max - beta_min), the
continuous limit of DDPM's linear schedule (beta_min = 0.1 = T betas[0],
beta_max = 20 = T betas[-1]). `VESDE` is the variance-exploding SDE (SMLD).

Each SDE has `sde` (drift, diffusion), `marginal_prob`, `alpha_sigma`,
`prior_sampling`, `prior_logp`, `discretize` and `reverse(score_fn,
probability_flow)`; times are scalars or [B] arrays.
"""

import math
from typing import Callable

import flax
import jax
import jax.numpy as jnp

from genjax.diffusion import schedules as sch

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]  # (x [B, ...], s) -> score [B, ...]
bcast = sch.bcast


class _SDEBase:
  """What the VP and VE SDEs share (mixed into flax struct dataclasses)."""

  def time_to_label(self, s: Array) -> Array:
    """Time s -> the network's timestep label s T - 1 (the timestep index)."""
    return jnp.asarray(s, jnp.float32) * self.num_timesteps - 1.0

  def index_to_time(self, t: Array) -> Array:
    """Timestep index t (t+1 noising steps) -> time s = (t+1) / T."""
    return (jnp.asarray(t, jnp.float32) + 1.0) / self.num_timesteps

  def marginal_prob(self, x0: Array, s: Array) -> tuple[Array, Array]:
    """Mean and std of p_s(x | x0).

    Args:
      x0: [B, ...] clean data.
      s: scalar or [B] times.

    Returns:
      (mean [B, ...], std, scalar or [B, 1, ...]).
    """
    alpha, sigma = self.alpha_sigma(s)
    return bcast(alpha, x0) * x0, bcast(sigma, x0)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> 'ReverseSDE':
    """The reverse-time SDE (or probability-flow ODE) given a score function."""
    return ReverseSDE(self, score_fn, probability_flow)


@flax.struct.dataclass
class VPSDE(_SDEBase):
  """Variance-preserving SDE dx = -½ beta(s) x ds + sqrt(beta(s)) dW.

  Attributes:
    log_alphas_cumprod: [T] log alphas_cumprod of a discrete schedule (then
      beta(s) is piecewise constant and the marginals match the schedule at
      s = (t+1)/T), or None for the linear closed form.
    beta_min: beta(0) of the closed form.
    beta_max: beta(1) of the closed form.
    num_timesteps: T, for labels and the time grid.
  """
  log_alphas_cumprod: Array | None = None
  beta_min: float = flax.struct.field(pytree_node=False, default=0.1)
  beta_max: float = flax.struct.field(pytree_node=False, default=20.0)
  num_timesteps: int = flax.struct.field(pytree_node=False, default=1000)

  @classmethod
  def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0,
             num_timesteps: int = 1000) -> 'VPSDE':
    """score_sde's VP SDE with linear beta(s)."""
    return cls(None, beta_min, beta_max, num_timesteps)

  @classmethod
  def from_schedule(cls, schedule: sch.Schedule) -> 'VPSDE':
    """The VP SDE whose marginals equal `schedule`'s on its grid."""
    # jnp, not np: the schedule may be a traced argument of a jitted sampler.
    return cls(jnp.log(schedule.alphas_cumprod), num_timesteps=schedule.num_timesteps)

  def _table(self) -> Array:
    return jnp.concatenate([jnp.zeros((1,), jnp.float32), self.log_alphas_cumprod])

  def log_alpha_bar(self, s: Array) -> Array:
    """log alphā(s), alphā = alpha²: the signal fraction at time s."""
    s = jnp.asarray(s, jnp.float32)
    if self.log_alphas_cumprod is None:
      return -0.5 * s ** 2 * (self.beta_max - self.beta_min) - s * self.beta_min
    n = self.num_timesteps
    return jnp.interp(s * n, jnp.arange(n + 1, dtype=jnp.float32), self._table())

  def beta(self, s: Array) -> Array:
    """beta(s) = -d log alphā / ds."""
    s = jnp.asarray(s, jnp.float32)
    if self.log_alphas_cumprod is None:
      return self.beta_min + s * (self.beta_max - self.beta_min)
    n = self.num_timesteps
    betas = -n * jnp.diff(self._table())
    # The segment just below s: reverse-time integrators step down from s. The
    # small margin keeps a grid point from falling into the segment above by
    # float32 rounding.
    idx = jnp.clip(jnp.ceil(s * n - 1e-3).astype(jnp.int32) - 1, 0, n - 1)
    return betas[idx]

  def alpha_sigma(self, s: Array) -> tuple[Array, Array]:
    """(alpha, sigma) = (sqrt(alphā(s)), sqrt(1 - alphā(s))), shaped like s."""
    abar = jnp.exp(self.log_alpha_bar(s))
    return jnp.sqrt(abar), jnp.sqrt(-jnp.expm1(self.log_alpha_bar(s)))

  def sde(self, x: Array, s: Array) -> tuple[Array, Array]:
    """Drift [B, ...] and diffusion (scalar or [B]) of the forward SDE."""
    beta = self.beta(s)
    return -0.5 * bcast(beta, x) * x, jnp.sqrt(beta)

  def discretize(self, x: Array, s: Array, ds: Array) -> tuple[Array, Array]:
    """The exact Gaussian transition from s - ds to s, written as x + f + G z.

    DDPM's step: x_s = sqrt(1 - b) x_{s-ds} + sqrt(b) z with
    b = 1 - alphā(s) / alphā(s - ds); for ds = 1/T on the grid of
    `from_schedule` b is exactly betas[t].

    Args:
      x: [B, ...] state.
      s: scalar or [B] time.
      ds: scalar or [B] step (> 0).

    Returns:
      (f [B, ...], G scalar or [B]).
    """
    b = -jnp.expm1(self.log_alpha_bar(s) - self.log_alpha_bar(s - ds))
    return bcast(jnp.sqrt(1.0 - b) - 1.0, x) * x, jnp.sqrt(b)

  def langevin_alpha(self, s: Array) -> Array:
    """One-step alpha (1 - beta) that scales score_sde's Langevin step size."""
    return jnp.exp(self.log_alpha_bar(s) - self.log_alpha_bar(s - 1.0 / self.num_timesteps))

  def prior_sampling(self, rng: jax.Array, shape: tuple[int, ...]) -> Array:
    """x_1 ~ N(0, I)."""
    return jax.random.normal(rng, shape, jnp.float32)

  def prior_logp(self, z: Array) -> Array:
    """[B] log N(z; 0, I)."""
    n = math.prod(z.shape[1:])
    return -0.5 * n * math.log(2 * math.pi) - 0.5 * jnp.sum(z.reshape(z.shape[0], -1) ** 2, -1)


@flax.struct.dataclass
class VESDE(_SDEBase):
  """Variance-exploding SDE dx = sqrt(d sigma²(s)/ds) dW (SMLD / NCSN).

  sigma(s) = sigma_min (sigma_max / sigma_min)^s; x_s = x_0 + sigma(s) eps.

  Attributes:
    sigma_min: noise std at s = 0.
    sigma_max: noise std at s = 1 (≥ the data's largest pairwise distance).
    num_timesteps: T, for labels and the time grid.
  """
  sigma_min: float = flax.struct.field(pytree_node=False, default=0.01)
  sigma_max: float = flax.struct.field(pytree_node=False, default=50.0)
  num_timesteps: int = flax.struct.field(pytree_node=False, default=1000)

  def sigma(self, s: Array) -> Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** jnp.asarray(s, jnp.float32)

  def alpha_sigma(self, s: Array) -> tuple[Array, Array]:
    """(1, sigma(s)), shaped like s."""
    sigma = self.sigma(s)
    return jnp.ones_like(sigma), sigma

  def sde(self, x: Array, s: Array) -> tuple[Array, Array]:
    """Zero drift and diffusion sigma(s) sqrt(2 log(sigma_max / sigma_min))."""
    rate = math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
    return jnp.zeros_like(x), self.sigma(s) * rate

  def discretize(self, x: Array, s: Array, ds: Array) -> tuple[Array, Array]:
    """SMLD's step: f = 0, G = sqrt(sigma(s)² - sigma(s - ds)²)."""
    g2 = self.sigma(s) ** 2 - self.sigma(s - ds) ** 2
    return jnp.zeros_like(x), jnp.sqrt(g2)

  def langevin_alpha(self, s: Array) -> Array:
    return jnp.ones_like(jnp.asarray(s, jnp.float32))

  def prior_sampling(self, rng: jax.Array, shape: tuple[int, ...]) -> Array:
    """x_1 ~ N(0, sigma_max² I)."""
    return self.sigma_max * jax.random.normal(rng, shape, jnp.float32)

  def prior_logp(self, z: Array) -> Array:
    """[B] log N(z; 0, sigma_max² I)."""
    n = math.prod(z.shape[1:])
    return (-0.5 * n * math.log(2 * math.pi * self.sigma_max ** 2)
            - 0.5 * jnp.sum(z.reshape(z.shape[0], -1) ** 2, -1) / self.sigma_max ** 2)


SDE = VPSDE | VESDE


class ReverseSDE:
  """The reverse-time SDE, or with probability_flow the probability-flow ODE.

  dx = [f(x, s) - c g(s)² score(x, s)] ds + [g(s) dW̄ if not probability_flow],
  with c = 1 (SDE) or ½ (ODE), integrated from s = 1 down to 0.
  """

  def __init__(self, sde: SDE, score_fn: ScoreFn, probability_flow: bool = False):
    self.forward_sde = sde
    self.score_fn = score_fn
    self.probability_flow = probability_flow

  def sde(self, x: Array, s: Array) -> tuple[Array, Array]:
    """(drift [B, ...], diffusion) of the reverse process at time s."""
    drift, diffusion = self.forward_sde.sde(x, s)
    coef = 0.5 if self.probability_flow else 1.0
    drift = drift - coef * bcast(diffusion ** 2, x) * self.score_fn(x, s)
    return drift, (jnp.zeros_like(diffusion) if self.probability_flow else diffusion)

  def discretize(self, x: Array, s: Array, ds: Array) -> tuple[Array, Array]:
    """Reverse step from s to s - ds: x_{s-ds} = x - f_rev + G_rev z."""
    f, g = self.forward_sde.discretize(x, s, ds)
    coef = 0.5 if self.probability_flow else 1.0
    f = f - coef * bcast(g ** 2, x) * self.score_fn(x, s)
    return f, (jnp.zeros_like(g) if self.probability_flow else g)


def model_x0_eps(model_fn: Callable[[Array, Array], Array], sde: SDE, prediction: str,
                 x: Array, s: Array, clip_x0: float | None = None) -> tuple[Array, Array]:
  """Evaluates a network at time s and returns its (x0, eps) predictions.

  Args:
    model_fn: `model_fn(x [B, ...], label [B]) -> prediction`, label = s T - 1.
    sde: the SDE that defines alpha(s), sigma(s) and the labels.
    prediction: 'eps', 'x0' or 'v'.
    x: [B, ...] x_s.
    s: scalar time.
    clip_x0: optional clip of the x0 prediction.

  Returns:
    (x0 [B, ...], eps [B, ...]).
  """
  label = jnp.broadcast_to(sde.time_to_label(s), (x.shape[0],))
  alpha, sigma = sde.alpha_sigma(s)
  return sch.to_x0_eps(model_fn(x, label), prediction, x, alpha, sigma, clip_x0)


def score_fn_from_model(model_fn: Callable[[Array, Array], Array], sde: SDE,
                        prediction: str = 'eps', clip_x0: float | None = None) -> ScoreFn:
  """The score ∇ log p_s(x) = -eps / sigma(s) of an eps/x0/v network.

  Args:
    model_fn: `model_fn(x, label [B]) -> prediction`.
    sde: the SDE.
    prediction: 'eps', 'x0' or 'v'.
    clip_x0: optional clip of the x0 prediction.

  Returns:
    score_fn(x [B, ...], s scalar) -> [B, ...].
  """
  def score_fn(x, s):
    _, eps = model_x0_eps(model_fn, sde, prediction, x, s, clip_x0)
    return -eps / bcast(sde.alpha_sigma(s)[1], x)
  return score_fn
