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

"""Multi-octave 2D simplex noise in JAX, for AnoDDPM (Wyatt et al., 2022).

AnoDDPM replaces the Gaussian noise of the forward process (and of the
sampler's steps) by spatially correlated simplex noise, so that the model
learns to remove blob-sized structures such as lesions, not only pixel noise.
`simplex_noise` draws such noise, normalised per image and channel to zero
mean and unit variance so that it is a drop-in `noise_fn` for
`losses.denoising_loss`, `schedules.q_sample` and the samplers.

Each draw uses a fresh random permutation table, random gradient directions
and a random offset of the lattice, so noise fields are independent across
examples and calls.
"""

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array

_F2 = 0.5 * (math.sqrt(3.0) - 1.0)  # Skews (x, y) onto the simplex lattice.
_G2 = (3.0 - math.sqrt(3.0)) / 6.0  # Unskews it.


def _simplex2d(x: Array, y: Array, perm: Array, angles: Array) -> Array:
  """Gustavson's 2D simplex noise at points (x, y), roughly in [-1, 1].

  Args:
    x: [...] coordinates.
    y: [...] coordinates.
    perm: [512] int permutation table (a permutation of 0..255, twice).
    angles: [256] gradient directions (radians), looked up by hash.

  Returns:
    [...] noise.
  """
  skew = (x + y) * _F2
  i, j = jnp.floor(x + skew), jnp.floor(y + skew)
  unskew = (i + j) * _G2
  x0, y0 = x - (i - unskew), y - (j - unskew)
  # Which of the two triangles of the skewed cell (x, y) lies in.
  i1 = (x0 > y0).astype(x.dtype)
  j1 = 1.0 - i1
  ii = i.astype(jnp.int32) & 255
  jj = j.astype(jnp.int32) & 255
  i1n, j1n = i1.astype(jnp.int32), j1.astype(jnp.int32)

  def corner(dx, dy, di, dj):
    g = angles[perm[ii + di + perm[jj + dj]]]
    falloff = jnp.maximum(0.5 - dx * dx - dy * dy, 0.0)
    return falloff ** 4 * (jnp.cos(g) * dx + jnp.sin(g) * dy)

  n = (corner(x0, y0, 0, 0)
       + corner(x0 - i1 + _G2, y0 - j1 + _G2, i1n, j1n)
       + corner(x0 - 1.0 + 2.0 * _G2, y0 - 1.0 + 2.0 * _G2, 1, 1))
  return 70.0 * n


def _one_field(rng: Array, height: int, width: int, octaves: int, persistence: float,
               frequency: float) -> Array:
  """[H, W] unnormalised octave sum with its own random lattice."""
  k_perm, k_angle, k_off = jax.random.split(rng, 3)
  perm = jax.random.permutation(k_perm, 256)
  perm = jnp.concatenate([perm, perm])
  angles = jax.random.uniform(k_angle, (256,), maxval=2 * math.pi)
  offset = jax.random.uniform(k_off, (2,), maxval=256.0)
  yy, xx = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing='ij')
  total = jnp.zeros((height, width), jnp.float32)
  # Octaves with a period under 2 px alias to white noise; skip them (with
  # AnoDDPM's settings at 256 px the finest octave has exactly 2 px).
  octaves = max(1, min(octaves, int(math.floor(math.log2(frequency / 2.0))) + 1))
  for o in range(octaves):  # Static, small: unrolled.
    scale = (2.0 ** o) / frequency
    total = total + persistence ** o * _simplex2d(
        xx * scale + offset[0], yy * scale + offset[1], perm, angles)
  return total


def simplex_noise(rng: jax.Array, shape: tuple[int, ...], octaves: int = 6,
                  persistence: float = 0.8, frequency: float | None = None) -> Array:
  """Normalised multi-octave simplex noise (AnoDDPM's defaults: 6 octaves, 0.8).

  Args:
    rng: key.
    shape: [B, H, W, C] output shape; every (example, channel) gets its own
      independent field.
    octaves: number of octaves; octave o has 2^o times the base frequency and
      amplitude persistence^o. Octaves whose period would fall below 2 px
      are dropped (they would only add aliased white noise).
    persistence: amplitude ratio between successive octaves.
    frequency: lattice period in pixels of the coarsest octave (AnoDDPM's
      `frequency`, 64 for 256-px images); None uses H / 4, the same ratio.

  Returns:
    [B, H, W, C] float32 noise with zero mean and unit variance over each
    image and channel.
  """
  if len(shape) != 4:
    raise ValueError(f'simplex_noise needs a [B, H, W, C] shape, got {shape}.')
  b, h, w, c = shape
  frequency = h / 4.0 if frequency is None else float(frequency)
  keys = jax.random.split(rng, b * c)
  field = jax.vmap(lambda k: _one_field(k, h, w, octaves, persistence, frequency))(keys)
  field = field - field.mean(axis=(1, 2), keepdims=True)
  field = field / jnp.sqrt(jnp.mean(field ** 2, axis=(1, 2), keepdims=True) + 1e-12)
  return field.reshape(b, c, h, w).transpose(0, 2, 3, 1)


def simplex_noise_fn(octaves: int = 6, persistence: float = 0.8,
                     frequency: float | None = None):
  """A `noise_fn(rng, shape)` drawing `simplex_noise` with these settings."""
  return functools.partial(simplex_noise, octaves=octaves, persistence=persistence,
                           frequency=frequency)
