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

"""Group normalisation shared by genjax's networks (UNet, VAE, GAN)."""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any


class GroupNorm(nn.Module):
  """Group normalisation; the same parameters ('scale', 'bias') and results
  as `flax.linen.GroupNorm` (float32 statistics, E[x²] - E[x]² variance).

  The statistics are reduced in two stages: per-channel sums over the pixels
  (a reduction over the major axes with channels contiguous), then the sums
  of each group's channels. XLA's CPU backend reduces Flax's single
  reduction over [B, H, W, G, C/G] far more slowly when C/G is small:
  measured with one thread, forward + backward at 16×64×64×16 with 8 groups,
  22 ms (Flax) vs 2.4 ms (this), 9× faster also at 32×32×32.

  Attributes:
    num_groups: groups; must divide the channels.
    epsilon: added to the variance.
    dtype: output dtype.
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, ..., C] -> [B, ..., C], normalised over (..., C / num_groups)."""
    c = x.shape[-1]
    per = c // self.num_groups
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    xf = x.astype(jnp.float32)
    pixel_axes = tuple(range(1, x.ndim - 1))
    count = math.prod(x.shape[1:-1]) * per
    group_sum = lambda v: jnp.sum(v, pixel_axes).reshape(
        -1, self.num_groups, per).sum(-1)
    mean = group_sum(xf) / count
    var = jnp.maximum(group_sum(jnp.square(xf)) / count - jnp.square(mean), 0.0)
    mul = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), per, axis=-1) * scale
    add = bias - jnp.repeat(mean, per, axis=-1) * mul
    bcast = (x.shape[0],) + (1,) * (x.ndim - 2) + (c,)
    return (xf * mul.reshape(bcast) + add.reshape(bcast)).astype(self.dtype)
