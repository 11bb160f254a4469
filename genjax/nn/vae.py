"""A convolutional VAE encoder/decoder for 2D slices (Flax Linen).

```
x [B, S, S, 1] ─ conv_in ─ level 0 … level L-1 ─┬─ dense:   flatten ─ Dense(2·latent_dim)
                 each level: blocks_per_level ×  └─ spatial: 1×1 conv (2·latent_dim)
                 (conv–GroupNorm–SiLU), then a                ─> (mu, logvar)
                 stride-2 conv (S -> S/2)
z ─ dense: Dense(s·s·C) | spatial: 3×3 conv ─ level L-1 … level 0 ─ conv_out ─> x̂ [B, S, S, 1]
                 each level: nearest 2× upsample, max(blocks_per_level, 1) ×
                 (conv–GroupNorm–SiLU)
```

`channels[l]` is the width of level l; there are L = len(channels) levels and
the bottleneck is s = S / 2^L pixels wide. The *dense* latent is a vector of
`latent_dim` numbers (samples from the prior have global structure); the
*spatial* latent is an s×s×`latent_dim` map (sharper reconstructions, better
for anomaly detection, but prior samples lack global layout). The decoder
outputs the mean of p(x|z), unbounded (the method clips samples to [-1, 1]);
upsampling is nearest + conv rather than transposed convs, which avoids
checkerboard artefacts.

The posterior heads are zero-initialised, so training starts at mu = 0,
logvar = 0 (q = the prior, KL = 0) instead of with a random, possibly huge KL.

An optional *condition* (a conditional VAE, genjax.methods.lesion_vae) is a
[B, S, S, C] map of extra channels: the encoder sees it beside x (its
`conv_in` takes any number of channels), and the decoder at every scale, the
map average-pooled to each level's resolution and concatenated to the
features after each upsampling. Without one the modules and their
parameters are exactly the unconditional VAE's.

`dtype` is the compute dtype (jnp.bfloat16 for mixed precision): parameters
stay float32 (`param_dtype`), GroupNorm computes its statistics in float32,
and mu, logvar and x̂ are returned in float32, so the ELBO is float32.
Modules only: the ELBO and training live in `genjax.methods.vae`.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.nn.norm import GroupNorm

Array = jax.Array
Dtype = Any
LATENTS = ("dense", "spatial")


def reparameterize(rng: Array, mu: Array, logvar: Array) -> Array:
  """z = mu + sigma * eps, eps ~ N(0, I): a differentiable draw from q(z|x).

  Args:
    rng: PRNG key; the same key gives the same z.
    mu: [B, ...] posterior means.
    logvar: [B, ...] posterior log-variances (same shape).

  Returns:
    z, shaped like mu.
  """
  eps = jax.random.normal(rng, mu.shape, mu.dtype)
  return mu + jnp.exp(0.5 * logvar) * eps


def latent_shape(image_size: int, channels: Sequence[int], latent: str,
                 latent_dim: int) -> tuple[int, ...]:
  """Shape of one example's z: (latent_dim,) or (s, s, latent_dim)."""
  if latent == "dense":
    return (latent_dim,)
  s = image_size // 2 ** len(channels)
  return (s, s, latent_dim)


def check_architecture(image_size: int, channels: Sequence[int], latent: str,
                       num_groups: int, prefix: str = "config.model"):
  """Raises ValueError, naming the config field, for impossible shapes."""
  if latent not in LATENTS:
    raise ValueError(f"{prefix}.latent={latent!r}: use one of {LATENTS}.")
  if not channels:
    raise ValueError(f"{prefix}.channels is empty: give one width per level.")
  factor = 2 ** len(channels)
  if image_size % factor:
    raise ValueError(
        f"{prefix}.channels has {len(channels)} levels, so the image size must "
        f"be divisible by {factor}; config.data.image_size={image_size}. Use "
        "fewer levels or another image size.")
  bad = [c for c in channels if c % num_groups]
  if bad:
    raise ValueError(f"{prefix}.num_groups={num_groups} does not divide the "
                     f"widths {bad} of {prefix}.channels.")


class ConvBlock(nn.Module):
  """3×3 conv, GroupNorm, SiLU."""
  features: int
  num_groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype)(x)
    return nn.silu(GroupNorm(self.num_groups, dtype=self.dtype)(x))


class Encoder(nn.Module):
  """x -> (mu, logvar) of q(z|x).

  Attributes:
    channels: width of each level; each level halves the resolution.
    latent: 'dense' or 'spatial'.
    latent_dim: size of z (dense) or channels of z per position (spatial).
    blocks_per_level: conv blocks per level before downsampling.
    num_groups: GroupNorm groups (must divide every width).
    dtype: compute dtype; mu and logvar are returned in float32.
  """
  channels: Sequence[int]
  latent: str = "dense"
  latent_dim: int = 64
  blocks_per_level: int = 1
  num_groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    """Encodes a batch.

    Args:
      x: [B, S, S, 1] images in [-1, 1] (with a condition's channels
        concatenated after them: [B, S, S, 1 + C]).

    Returns:
      (mu, logvar), each [B, latent_dim] (dense) or [B, s, s, latent_dim]
      (spatial), s = S / 2^len(channels).
    """
    h = nn.Conv(self.channels[0], (3, 3), padding=1, dtype=self.dtype,
                name="conv_in")(x)
    for level, width in enumerate(self.channels):
      for i in range(self.blocks_per_level):
        h = ConvBlock(width, self.num_groups, self.dtype,
                      name=f"down{level}_block{i}")(h)
      h = nn.Conv(width, (3, 3), strides=(2, 2), padding=1, dtype=self.dtype,
                  name=f"down{level}_pool")(h)
      h = nn.silu(h)
    zeros = nn.initializers.zeros
    if self.latent == "dense":
      h = h.reshape(h.shape[0], -1)
      stats = nn.Dense(2 * self.latent_dim, kernel_init=zeros,
                       dtype=self.dtype, name="head")(h)
    else:
      stats = nn.Conv(2 * self.latent_dim, (1, 1), kernel_init=zeros,
                      dtype=self.dtype, name="head")(h)
    mu, logvar = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
    return mu, logvar


class Decoder(nn.Module):
  """z -> mean of p(x|z).

  Attributes:
    channels: the encoder's widths (level 0 first); decoded in reverse.
    image_size: S, the output side.
    latent: 'dense' or 'spatial'.
    blocks_per_level: conv blocks per level after upsampling (at least 1:
      the first maps the width).
    num_groups: GroupNorm groups.
    dtype: compute dtype; x̂ is returned in float32.
  """
  channels: Sequence[int]
  image_size: int
  latent: str = "dense"
  blocks_per_level: int = 1
  num_groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array, condition: Array | None = None) -> Array:
    """Decodes a batch of latents.

    Args:
      z: [B, latent_dim] (dense) or [B, s, s, latent_dim] (spatial).
      condition: optional [B, S, S, C] condition channels, concatenated
        (average-pooled to the level's resolution) to the features after
        each upsampling; None: the unconditional decoder.

    Returns:
      [B, S, S, 1] image means (unbounded; data lie in [-1, 1]).
    """
    s = self.image_size // 2 ** len(self.channels)
    width = self.channels[-1]
    if self.latent == "dense":
      h = nn.Dense(s * s * width, dtype=self.dtype, name="dense_in")(z)
      h = h.reshape(z.shape[0], s, s, width)
    else:
      h = nn.Conv(width, (3, 3), padding=1, dtype=self.dtype,
                  name="conv_in")(z)
    h = nn.silu(h)
    for level in reversed(range(len(self.channels))):
      width = self.channels[level]
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
      if condition is not None:
        f = self.image_size // h.shape[1]
        c = nn.avg_pool(condition, (f, f), strides=(f, f)) if f > 1 else (
            condition)
        h = jnp.concatenate([h, c.astype(h.dtype)], axis=-1)
      # The first block also maps the width to this level's.
      for i in range(max(self.blocks_per_level, 1)):
        h = ConvBlock(width, self.num_groups, self.dtype,
                      name=f"up{level}_block{i}")(h)
    out = nn.Conv(1, (3, 3), padding=1, dtype=self.dtype, name="conv_out")(h)
    return out.astype(jnp.float32)


class VAE(nn.Module):
  """Encoder and decoder under one parameter tree ('encoder', 'decoder').

  Use `apply(..., method=VAE.encode)` / `method=VAE.decode` for the parts;
  `__call__` runs the whole pass (and is what `init` traces).
  """
  channels: Sequence[int]
  image_size: int
  latent: str = "dense"
  latent_dim: int = 64
  blocks_per_level: int = 1
  num_groups: int = 8
  dtype: Dtype = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.channels, self.latent, self.latent_dim,
                           self.blocks_per_level, self.num_groups, self.dtype)
    self.decoder = Decoder(self.channels, self.image_size, self.latent,
                           self.blocks_per_level, self.num_groups, self.dtype)

  def encode(self, x: Array,
             condition: Array | None = None) -> tuple[Array, Array]:
    """[B, S, S, 1] (and [B, S, S, C] condition) -> (mu, logvar); see
    `Encoder`."""
    if condition is not None:
      x = jnp.concatenate([x, condition.astype(x.dtype)], axis=-1)
    return self.encoder(x)

  def decode(self, z: Array, condition: Array | None = None) -> Array:
    """z (and [B, S, S, C] condition) -> [B, S, S, 1] image means; see
    `Decoder`."""
    return self.decoder(z, condition)

  def __call__(self, x: Array, rng: Array,
               condition: Array | None = None) -> tuple[Array, Array, Array]:
    """Encodes, draws z with `rng` (reparameterised), decodes.

    Args:
      x: [B, S, S, 1] images.
      rng: PRNG key of the draw of z.
      condition: optional [B, S, S, C] condition channels, seen by the
        encoder and the decoder (see the module docstring).

    Returns:
      (x_hat [B, S, S, 1], mu, logvar).
    """
    mu, logvar = self.encode(x, condition)
    return (self.decode(reparameterize(rng, mu, logvar), condition), mu,
            logvar)
