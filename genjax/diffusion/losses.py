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

"""The denoising (score-matching) training loss of a discrete-time DDPM."""

from typing import Callable

import jax
import jax.numpy as jnp

from genjax.diffusion import schedules as sch

Array = jax.Array
# apply_fn(x_t [B, H, W, C], t [B] int) -> prediction [B, H, W, C]; bound to
# params (and, in training, to a 'dropout' rng).
ApplyFn = Callable[[Array, Array], Array]
# noise_fn(rng, shape) -> standard noise of that shape (zero mean, unit variance).
NoiseFn = Callable[[jax.Array, tuple[int, ...]], Array]

WEIGHTINGS = ('none', 'min_snr')


def gaussian_noise(rng: jax.Array, shape: tuple[int, ...]) -> Array:
  """The default `noise_fn`: standard normal float32 noise."""
  return jax.random.normal(rng, shape, jnp.float32)


def loss_weight(prediction: str, snr: Array, weighting: str, min_snr_gamma: float) -> Array:
  """Per-example weight of the squared error of a `prediction` network.

  Args:
    prediction: 'eps', 'x0' or 'v'.
    snr: [B] signal-to-noise ratio alpha² / sigma² of x_t.
    weighting: 'none' (uniform, DDPM's L_simple for eps) or 'min_snr'
      (Hang et al., 2023: the x0-space weight min(snr, gamma), expressed in the
      network's own target space).
    min_snr_gamma: gamma of 'min_snr'.

  Returns:
    [B] weights.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f'weighting={weighting!r} must be one of {WEIGHTINGS}.')
  if weighting == 'none':
    return jnp.ones_like(snr)
  clipped = jnp.minimum(snr, min_snr_gamma)
  # ||eps err||² = snr ||x0 err||² and ||v err||² = (snr + 1) ||x0 err||².
  return {'eps': clipped / snr, 'v': clipped / (snr + 1.0), 'x0': clipped}[prediction]


def denoising_loss(apply_fn: ApplyFn, schedule: sch.Schedule, x0: Array, rng: jax.Array,
                   prediction: str = 'eps', weighting: str = 'none',
                   min_snr_gamma: float = 5.0, t: Array | None = None,
                   noise_fn: NoiseFn | None = None, region: Array | None = None) -> Array:
  """Per-example denoising loss E_eps ||f(x_t, t) - target||² / (H W C).

  With prediction='eps' and weighting='none' this is DDPM's L_simple, i.e.
  denoising score matching with weight sigma_t² (score = -eps / sigma_t).
  Its minimum over networks, reached by f = E[eps | x_t], is
  E ||eps - E[eps | x_t]||² / (H W C), not 0.

  Args:
    apply_fn: the network, `apply_fn(x_t, t) -> prediction`.
    schedule: the noise schedule.
    x0: [B, H, W, C] clean images.
    rng: key for t (if not given) and the noise.
    prediction: what the network predicts: 'eps', 'x0' or 'v'.
    weighting: 'none' or 'min_snr' (see `loss_weight`).
    min_snr_gamma: gamma of 'min_snr'.
    t: optional [B] int timestep indices; uniform on {0, …, T-1} if None.
    noise_fn: noise for the forward process (default Gaussian; e.g.
      `simplex.simplex_noise_fn()` for AnoDDPM).
    region: optional [B, H, W, C] (or broadcastable) mask in {0, 1}: only
      these pixels are noised (x_t = x0 elsewhere, the clean context of
      pDDPM's patches) and only they are scored (the squared error is
      averaged over the region). None: the whole image.

  Returns:
    [B] float32 loss per example (average it for the training objective).
  """
  sch._check_prediction(prediction)
  t_rng, noise_rng = jax.random.split(rng)
  if t is None:
    t = jax.random.randint(t_rng, (x0.shape[0],), 0, schedule.num_timesteps)
  noise = (noise_fn or gaussian_noise)(noise_rng, x0.shape)
  x_t = sch.q_sample(schedule, x0, t, noise)
  if region is not None:
    region = jnp.broadcast_to(region, x0.shape).astype(jnp.float32)
    x_t = region * x_t + (1.0 - region) * x0
  alpha, sigma = sch.alpha_sigma(schedule, t)
  out = apply_fn(x_t, t)
  tgt = sch.target(prediction, x0, noise, alpha, sigma)
  se = jnp.square(out.astype(jnp.float32) - tgt)
  axes = tuple(range(1, x0.ndim))
  if region is None:
    mse = jnp.mean(se, axis=axes)
  else:
    mse = jnp.sum(se * region, axis=axes) / jnp.maximum(jnp.sum(region, axis=axes), 1.0)
  return mse * loss_weight(prediction, (alpha / sigma) ** 2, weighting, min_snr_gamma)
