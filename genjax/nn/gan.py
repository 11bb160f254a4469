"""The GAN's networks: generator, discriminator and f-AnoGAN encoder (Linen).

Two architectures, picked by `arch`:

  'dcgan'   plain conv stacks: the generator upsamples 2x (nearest, then a 3x3
            conv; no transposed convs, whose overlap makes checkerboard
            artifacts) with GroupNorm-ReLU; the discriminator downsamples with
            4x4 stride-2 convs and LeakyReLU(0.2).
  'resnet'  SNGAN/BigGAN-style residual blocks (pre-activation, 1x1 skip
            convs, nearest upsampling / average-pool downsampling).

Both are sized from the image: `levels = log2(image_size) - 2` resolution
levels between the image and a 4x4 bottleneck; level l (resolution
image_size / 2^l) has `min(base_channels * 2^l, max_channels)` channels.

The discriminator returns logits *and* the features of its last hidden layer,
which f-AnoGAN uses twice: in the encoder's training loss and in the anomaly
score (the discriminator-feature residual).

Spectral normalisation (`spectral_norm=True`, discriminator only) wraps every
conv/dense kernel in `flax.linen.SpectralNorm`, whose power-iteration state
(`u`, `sigma`) lives in the 'batch_stats' collection: pass
`update_stats=True, mutable=['batch_stats']` in the discriminator's training
step, and `update_stats=False` everywhere else.

`dtype` is the compute dtype (jnp.bfloat16 for mixed precision): parameters
and the spectral-norm statistics stay float32 (the power iteration runs on the
float32 kernels), GroupNorm computes its statistics in float32, and images,
logits, features and latent codes are returned in float32.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.nn.norm import GroupNorm

Array = jax.Array
Dtype = Any

ARCHS = ("dcgan", "resnet")


def num_levels(image_size: int) -> int:
  """Resolution levels between an image_size x image_size image and 4x4.

  Raises:
    ValueError: image_size is not a power of two >= 8.
  """
  if image_size < 8 or image_size & (image_size - 1):
    raise ValueError(
        f"The GAN needs config.data.image_size to be a power of two >= 8 "
        f"(it halves the image down to 4x4); got {image_size}.")
  return int(math.log2(image_size)) - 2


def level_channels(base_channels: int, max_channels: int, levels: int):
  """Channels of levels 0 (full resolution) .. levels (the 4x4 bottleneck)."""
  return tuple(min(base_channels * 2**l, max_channels)
               for l in range(levels + 1))


def _check_arch(arch):
  if arch not in ARCHS:
    raise ValueError(f"config.model.arch={arch!r}: use one of "
                     f"{', '.join(ARCHS)}.")


def _conv(features, kernel, stride=1, name=None, dtype=jnp.float32):
  # Symmetric explicit padding: 'SAME' pads stride-2 convs (0, 1) on even
  # sizes, shifting the grid by half a pixel at every level.
  pad = (kernel - stride + 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), dtype=dtype, name=name)


def _upsample(x: Array) -> Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], nearest neighbour."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _downsample(x: Array) -> Array:
  """[B, H, W, C] -> [B, H/2, W/2, C], 2x2 average."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _group_norm(num_groups, channels, name=None, dtype=jnp.float32):
  # gcd: any channel count works, whatever num_groups the config asks for.
  return GroupNorm(num_groups=math.gcd(num_groups, channels), dtype=dtype,
                   name=name)


class Generator(nn.Module):
  """z -> image.

  Attributes:
    image_size: output height = width, a power of two >= 8.
    base_channels: channels at full resolution (level 0).
    max_channels: cap on the channels of any level.
    arch: 'dcgan' or 'resnet'.
    norm: 'group' (GroupNorm before each ReLU) or 'none'. GroupNorm rather
      than the classic BatchNorm: it keeps the generator a pure function of
      (params, z), so the EMA generator needs no running statistics.
    num_groups: GroupNorm groups (reduced to a divisor of the channels).
    dtype: compute dtype; images are returned in float32.
  """
  image_size: int
  base_channels: int = 32
  max_channels: int = 256
  arch: str = "dcgan"
  norm: str = "group"
  num_groups: int = 8
  dtype: Dtype = jnp.float32

  def _norm(self, x, name):
    if self.norm == "none":
      return x
    if self.norm != "group":
      raise ValueError(f"config.model.g_norm={self.norm!r}: use 'group' or "
                       "'none'.")
    return _group_norm(self.num_groups, x.shape[-1], name, self.dtype)(x)

  @nn.compact
  def __call__(self, z: Array) -> Array:
    """Generates images.

    Args:
      z: [B, Z] latent codes.

    Returns:
      [B, image_size, image_size, 1] in (-1, 1) (tanh).
    """
    _check_arch(self.arch)
    levels = num_levels(self.image_size)
    channels = level_channels(self.base_channels, self.max_channels, levels)
    dt = self.dtype
    x = nn.Dense(4 * 4 * channels[levels], dtype=dt, name="proj")(z)
    x = x.reshape(z.shape[0], 4, 4, channels[levels])
    for l in reversed(range(levels)):  # 8x8 (level levels-1) up to level 0.
      c = channels[l]
      if self.arch == "dcgan":
        x = nn.relu(self._norm(x, f"norm_{l}"))
        x = _conv(c, 3, name=f"conv_{l}", dtype=dt)(_upsample(x))
      else:
        h = nn.relu(self._norm(x, f"norm_{l}a"))
        h = _conv(c, 3, name=f"conv_{l}a", dtype=dt)(_upsample(h))
        h = nn.relu(self._norm(h, f"norm_{l}b"))
        h = _conv(c, 3, name=f"conv_{l}b", dtype=dt)(h)
        x = _conv(c, 1, name=f"skip_{l}", dtype=dt)(_upsample(x)) + h
    x = nn.relu(self._norm(x, "norm_out"))
    out = _conv(1, 3, name="conv_out", dtype=dt)(x)
    return jnp.tanh(out.astype(jnp.float32))


class _DownStack(nn.Module):
  """Image -> flat features: the body shared by discriminator and encoder."""
  image_size: int
  base_channels: int = 32
  max_channels: int = 256
  arch: str = "dcgan"
  spectral_norm: bool = False
  dtype: Dtype = jnp.float32

  def _layer(self, layer, x, update_stats):
    if self.spectral_norm:
      return nn.SpectralNorm(layer)(x, update_stats=update_stats)
    return layer(x)

  @nn.compact
  def __call__(self, x: Array, update_stats: bool = False) -> Array:
    _check_arch(self.arch)
    levels = num_levels(self.image_size)
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"Expected {self.image_size}x{self.image_size} images, "
                       f"got shape {x.shape}.")
    channels = level_channels(self.base_channels, self.max_channels, levels)
    dt = self.dtype
    for l in range(levels):  # Level l: resolution image_size / 2^l -> half.
      c = channels[l + 1]
      if self.arch == "dcgan":
        x = self._layer(_conv(c, 4, stride=2, name=f"conv_{l}", dtype=dt), x,
                        update_stats)
        x = nn.leaky_relu(x, 0.2)
      else:
        # The first block sees the image itself: no activation before it
        # (SNGAN's 'optimized' block).
        h = x if l == 0 else nn.relu(x)
        h = self._layer(_conv(c, 3, name=f"conv_{l}a", dtype=dt), h,
                        update_stats)
        h = self._layer(_conv(c, 3, name=f"conv_{l}b", dtype=dt), nn.relu(h),
                        update_stats)
        skip = self._layer(_conv(c, 1, name=f"skip_{l}", dtype=dt), x,
                           update_stats)
        x = _downsample(skip) + _downsample(h)
    if self.arch == "resnet":
      x = nn.relu(x)
    return x.reshape(x.shape[0], -1)  # [B, 4 * 4 * channels[levels]]


class Discriminator(nn.Module):
  """image -> (logit, features).

  Attributes:
    image_size: input height = width, a power of two >= 8.
    base_channels: channels after the first downsampling.
    max_channels: cap on the channels of any level.
    arch: 'dcgan' or 'resnet'.
    spectral_norm: spectrally normalise every kernel (state in 'batch_stats').
    dtype: compute dtype; logits and features are returned in float32.
  """
  image_size: int
  base_channels: int = 32
  max_channels: int = 256
  arch: str = "dcgan"
  spectral_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool = False):
    """Scores images; each example independently (no batch statistics).

    Args:
      x: [B, H, W, 1] images in [-1, 1].
      update_stats: advance the spectral-norm power iteration (training only;
        needs mutable=['batch_stats']).

    Returns:
      logits [B] (higher = more real) and features [B, F], the last hidden
      layer (F = 16 * channels of the 4x4 level).
    """
    features = _DownStack(self.image_size, self.base_channels,
                          self.max_channels, self.arch, self.spectral_norm,
                          self.dtype, name="body")(x, update_stats)
    dense = nn.Dense(1, dtype=self.dtype, name="logit")
    if self.spectral_norm:
      logits = nn.SpectralNorm(dense)(features, update_stats=update_stats)
    else:
      logits = dense(features)
    return logits[:, 0].astype(jnp.float32), features.astype(jnp.float32)


class Encoder(nn.Module):
  """image -> z (f-AnoGAN's encoder; the discriminator's body, no SN).

  Attributes:
    image_size: input height = width, a power of two >= 8.
    z_dim: latent size (the generator's input).
    base_channels: channels after the first downsampling.
    max_channels: cap on the channels of any level.
    arch: 'dcgan' or 'resnet'.
    dtype: compute dtype; codes are returned in float32.
  """
  image_size: int
  z_dim: int
  base_channels: int = 32
  max_channels: int = 256
  arch: str = "dcgan"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Encodes images.

    Args:
      x: [B, H, W, 1] images in [-1, 1].

    Returns:
      [B, z_dim] latent codes (unbounded, like the Gaussian prior).
    """
    h = _DownStack(self.image_size, self.base_channels, self.max_channels,
                   self.arch, spectral_norm=False, dtype=self.dtype,
                   name="body")(x)
    out = nn.Dense(self.z_dim, dtype=self.dtype, name="out")(h)
    return out.astype(jnp.float32)
