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

"""A time-conditioned UNet for 2D slices (the DDPM's denoiser).

The layout mirrors MONAI's `DiffusionModelUNet` (itself the DDPM/ADM UNet), so
that genjax and MONAI models of the same configuration have the same levels,
residual blocks, attention placement and parameter count; the benchmark
compares the two block for block:

```
conv_in ─ down_0 … down_{L-1} ─ mid (res, attn, res) ─ up_{L-1} … up_0 ─ out
          │ num_res_blocks[l] × (res [+ attn])          num_res_blocks[l]+1 ×
          │ + downsample (not on the last level)        (concat skip, res [+attn])
          └───────────── skip connections ────────────> + upsample (not on level 0)
```

Levels are counted from the input resolution: level 0 runs at H×W, level l at
H/2^l × W/2^l. `attention_resolutions` holds *level indices* (MONAI's
`attention_levels` as indices, not pixel sizes), so a config does not change
meaning when the image size does. The middle block always has attention, as in
MONAI and ADM.

To build the equivalent of
`DiffusionModelUNet(channels=(32, 64, 64, 64), attention_levels=(F, F, T, T),
num_res_blocks=2, num_head_channels=8, norm_num_groups=32)` use
`unet_from_monai_config` below. Differences from MONAI that do not change the
parameter count: channels-last layout, optional dropout inside the residual
blocks (ADM style; MONAI has none), zero-initialised attention output
projections (ADM style), Flax's default (LeCun-normal) kernel initialisation.
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.nn.norm import GroupNorm

Array = jax.Array
Dtype = Any


def param_count(params) -> int:
  """Number of scalars in a parameter pytree.

  Args:
    params: any pytree of arrays (e.g. `variables['params']`).

  Returns:
    The total number of elements over all leaves, as a Python int.
  """
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding of (possibly fractional) timesteps.

  Same frequencies and [cos, sin] order as MONAI's `get_timestep_embedding` and
  DDPM, so equal integer timesteps give equal embeddings in both.

  Args:
    t: [B] timesteps, integer or float (fractional timesteps come from the
      continuous-time samplers).
    dim: embedding width.
    max_period: controls the lowest frequency.

  Returns:
    [B, dim] float32 embedding.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1,
          zero_init: bool = False) -> nn.Conv:
  # Explicit symmetric padding: 'SAME' pads a stride-2 conv (0, 1) on even sizes,
  # which would shift the grid relative to PyTorch's padding=1.
  pad = kernel // 2
  kwargs = dict(kernel_init=nn.initializers.zeros) if zero_init else {}
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), dtype=dtype, name=name, **kwargs)


def _upsample_nearest(x: Array) -> Array:
  """[B, H, W, C] -> [B, 2H, 2W, C] by repetition (= nearest interpolation)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avg_pool(x: Array) -> Array:
  """[B, H, W, C] -> [B, H/2, W/2, C], 2×2 average."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
  """GroupNorm–SiLU–conv residual block with time-embedding injection.

  Attributes:
    out_channels: output channels; a 1×1 conv maps the skip path when they
      differ from the input's.
    num_groups: GroupNorm groups.
    dropout: dropout rate before the second conv (ADM); 0 disables it.
    up: upsample 2× inside the block (resblock_updown).
    down: downsample 2× inside the block (resblock_updown).
    dtype: compute dtype.
  """
  out_channels: int
  num_groups: int = 32
  dropout: float = 0.0
  up: bool = False
  down: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, temb: Array, train: bool) -> Array:
    """Applies the block.

    Args:
      x: [B, H, W, C_in] features.
      temb: [B, D] time embedding.
      train: enables dropout (needs a 'dropout' rng).

    Returns:
      [B, H', W', out_channels], H' = 2H (up), H/2 (down) or H.
    """
    h = nn.silu(GroupNorm(self.num_groups, dtype=self.dtype, name='norm1')(x))
    if self.up:
      x, h = _upsample_nearest(x), _upsample_nearest(h)
    elif self.down:
      x, h = _avg_pool(x), _avg_pool(h)
    h = _conv(self.out_channels, 3, self.dtype, 'conv1')(h)
    # Scale-free additive conditioning, as in DDPM and MONAI.
    h = h + nn.Dense(self.out_channels, dtype=self.dtype, name='time_proj')(
        nn.silu(temb))[:, None, None, :]
    h = nn.silu(GroupNorm(self.num_groups, dtype=self.dtype, name='norm2')(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    # Zero init makes every block start as the identity map (MONAI, ADM).
    h = _conv(self.out_channels, 3, self.dtype, 'conv2', zero_init=True)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, 'skip')(x)
    return x + h


class AttentionBlock(nn.Module):
  """Pre-norm multi-head self-attention over all pixels, with a residual.

  Attributes:
    num_heads: heads, used when `head_channels` is None.
    head_channels: channels per head; when set, heads = C // head_channels
      (MONAI's `num_head_channels`).
    num_groups: GroupNorm groups.
    dtype: compute dtype.
  """
  num_heads: int = 1
  head_channels: int | None = None
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the block.

    Args:
      x: [B, H, W, C] features.

    Returns:
      [B, H, W, C].
    """
    b, hgt, wid, c = x.shape
    heads = c // self.head_channels if self.head_channels else self.num_heads
    if c % (self.head_channels or heads):
      raise ValueError(f'AttentionBlock: {c} channels do not split into heads of '
                       f'{self.head_channels or c / heads} channels.')
    h = GroupNorm(self.num_groups, dtype=self.dtype, name='norm')(x)
    h = h.reshape(b, hgt * wid, c)
    # Separate q/k/v projections with bias, like MONAI's SABlock (same count).
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h).reshape(b, hgt * wid, heads, c // heads)
               for n in ('query', 'key', 'value'))
    # jax.nn.dot_product_attention may use a fused kernel (cuDNN) on GPU.
    h = jax.nn.dot_product_attention(q, k, v).reshape(b, hgt * wid, c)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name='out')(h)
    return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
  """Time-conditioned UNet: [B, H, W, C] × [B] timesteps -> [B, H, W, out_channels].

  Attributes:
    base_channels: channels of level 0 (MONAI `channels[0]`); the time
      embedding is 4× this wide.
    channel_mult: per-level multipliers of `base_channels`; its length is the
      number of resolution levels (L). H and W must be divisible by 2^(L-1).
    num_res_blocks: residual blocks per level in the encoder (an int or one per
      level); decoder levels get one more, as in MONAI/DDPM.
    attention_resolutions: *level indices* (0 = full resolution) that get a
      self-attention block after every residual block, e.g. (2, 3) for
      MONAI's attention_levels=(False, False, True, True).
    num_heads: attention heads when `head_channels` is None.
    head_channels: channels per attention head (MONAI `num_head_channels`);
      overrides `num_heads`.
    dropout: dropout rate inside residual blocks (needs a 'dropout' rng when
      train=True and dropout > 0).
    num_groups: GroupNorm groups; every level's channels must divide by it.
    out_channels: output channels (the prediction: eps, x0 or v).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32 and the
      output is returned in float32.
    resblock_updown: resample with residual blocks (avg-pool / nearest inside a
      ResBlock) instead of a strided conv / nearest+conv.
  """
  base_channels: int = 64
  channel_mult: Sequence[int] = (1, 2, 4)
  num_res_blocks: int | Sequence[int] = 2
  attention_resolutions: Sequence[int] = (2,)
  num_heads: int = 1
  head_channels: int | None = None
  dropout: float = 0.0
  num_groups: int = 32
  out_channels: int = 1
  dtype: Dtype = jnp.float32
  resblock_updown: bool = False

  def _check(self, x: Array) -> tuple[list[int], list[int]]:
    levels = len(self.channel_mult)
    chans = [int(round(self.base_channels * m)) for m in self.channel_mult]
    n_res = ([self.num_res_blocks] * levels if isinstance(self.num_res_blocks, int)
             else list(self.num_res_blocks))
    if len(n_res) != levels:
      raise ValueError(f'UNet: num_res_blocks={self.num_res_blocks} needs one entry per level '
                       f'of channel_mult={self.channel_mult}.')
    bad = [a for a in self.attention_resolutions if not 0 <= a < levels]
    if bad:
      raise ValueError(f'UNet: attention_resolutions={tuple(self.attention_resolutions)} are '
                       f'level indices in [0, {levels}) (not pixel sizes); got {bad}.')
    if any(c % self.num_groups for c in chans):
      raise ValueError(f'UNet: channels {chans} must all be divisible by num_groups='
                       f'{self.num_groups}.')
    if x.ndim != 4:
      raise ValueError(f'UNet expects [B, H, W, C] images, got shape {x.shape}.')
    factor = 2 ** (levels - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f'UNet: image size {x.shape[1:3]} must be divisible by {factor} for '
                       f'{levels} levels (channel_mult={self.channel_mult}).')
    return chans, n_res

  @nn.compact
  def __call__(self, x: Array, t: Array, train: bool = False,
               cond: Array | None = None) -> Array:
    """Predicts eps / x0 / v for noisy images.

    Args:
      x: [B, H, W, C] noisy images. Image-shaped conditioning (a mask, a
        second contrast) is concatenated here as extra channels: `conv_in`
        takes whatever C is.
      t: [B] (or scalar) timesteps, int or float; the sinusoidal embedding
        takes them as they are (genjax uses timestep indices 0..T-1).
      train: enables dropout.
      cond: optional [B, D] conditioning vector (cDDPM's image encoding, a
        class or guidance embedding): projected by a Dense layer
        ('cond_dense') and added to the time embedding, so every residual
        block sees it. A model initialised with cond must always get one
        (zeros are a valid "no condition").

    Returns:
      [B, H, W, out_channels] float32.
    """
    chans, n_res = self._check(x)
    levels = len(chans)
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
    res = lambda ch, name, **kw: ResBlock(ch, self.num_groups, self.dropout, dtype=self.dtype,
                                          name=name, **kw)
    attn = lambda name: AttentionBlock(self.num_heads, self.head_channels, self.num_groups,
                                       self.dtype, name=name)

    temb_dim = 4 * chans[0]
    temb = timestep_embedding(t, chans[0]).astype(self.dtype)
    temb = nn.Dense(temb_dim, dtype=self.dtype, name='time_dense0')(temb)
    temb = nn.Dense(temb_dim, dtype=self.dtype, name='time_dense1')(nn.silu(temb))
    if cond is not None:
      if cond.ndim != 2 or cond.shape[0] != x.shape[0]:
        raise ValueError(f'UNet: cond must be [B, D] with B = {x.shape[0]}, got {cond.shape}.')
      temb = temb + nn.Dense(temb_dim, dtype=self.dtype, name='cond_dense')(
          cond.astype(self.dtype))

    h = _conv(chans[0], 3, self.dtype, 'conv_in')(x.astype(self.dtype))
    skips = [h]
    for lvl in range(levels):
      for j in range(n_res[lvl]):
        h = res(chans[lvl], f'down{lvl}_res{j}')(h, temb, train)
        if lvl in self.attention_resolutions:
          h = attn(f'down{lvl}_attn{j}')(h)
        skips.append(h)
      if lvl < levels - 1:
        if self.resblock_updown:
          h = res(chans[lvl], f'down{lvl}_downsample', down=True)(h, temb, train)
        else:
          h = _conv(chans[lvl], 3, self.dtype, f'down{lvl}_downsample', stride=2)(h)
        skips.append(h)

    h = res(chans[-1], 'mid_res0')(h, temb, train)
    h = attn('mid_attn')(h)
    h = res(chans[-1], 'mid_res1')(h, temb, train)

    for lvl in reversed(range(levels)):
      for j in range(n_res[lvl] + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res(chans[lvl], f'up{lvl}_res{j}')(h, temb, train)
        if lvl in self.attention_resolutions:
          h = attn(f'up{lvl}_attn{j}')(h)
      if lvl > 0:
        if self.resblock_updown:
          h = res(chans[lvl], f'up{lvl}_upsample', up=True)(h, temb, train)
        else:
          h = _conv(chans[lvl], 3, self.dtype, f'up{lvl}_upsample')(_upsample_nearest(h))
    assert not skips, 'UNet: every skip connection must be used once.'

    h = nn.silu(GroupNorm(self.num_groups, dtype=self.dtype, name='out_norm')(h))
    # Zero init: the untrained model predicts 0 (the mean of eps), a stable start.
    h = _conv(self.out_channels, 3, self.dtype, 'conv_out', zero_init=True)(h)
    return h.astype(jnp.float32)


def unet_from_monai_config(channels: Sequence[int] = (32, 64, 64, 64),
                           attention_levels: Sequence[bool] = (False, False, True, True),
                           num_res_blocks: int | Sequence[int] = (2, 2, 2, 2),
                           num_head_channels: int = 8,
                           norm_num_groups: int = 32,
                           out_channels: int = 1,
                           resblock_updown: bool = False,
                           **kwargs) -> UNet:
  """The genjax UNet equivalent to a MONAI `DiffusionModelUNet` (2D, no conditioning).

  Defaults are MONAI's. MONAI's `channels` was called `num_channels` before
  MONAI 1.4; both mean the per-level widths.

  Args:
    channels: per-level channels; each must be a multiple of channels[0].
    attention_levels: per-level booleans.
    num_res_blocks: encoder residual blocks per level.
    num_head_channels: channels per attention head (one value for all levels).
    norm_num_groups: GroupNorm groups.
    out_channels: output channels.
    resblock_updown: resample with residual blocks.
    **kwargs: other `UNet` fields (dropout, dtype).

  Returns:
    An unbound `UNet`.
  """
  if len(channels) != len(attention_levels):
    raise ValueError(f'channels={channels} and attention_levels={attention_levels} '
                     'differ in length.')
  base = channels[0]
  if any(c % base for c in channels):
    raise ValueError(f'channels={channels}: each must be a multiple of channels[0]={base}.')
  return UNet(base_channels=base, channel_mult=tuple(c // base for c in channels),
              num_res_blocks=(num_res_blocks if isinstance(num_res_blocks, int)
                              else tuple(num_res_blocks)),
              attention_resolutions=tuple(i for i, a in enumerate(attention_levels) if a),
              head_channels=num_head_channels, num_groups=norm_num_groups,
              out_channels=out_channels, resblock_updown=resblock_updown, **kwargs)
