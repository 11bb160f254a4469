"""cDDPM: the denoiser conditioned on the image it reconstructs.

Behrendt et al., "Guided reconstruction with conditioned diffusion models for
unsupervised anomaly detection in brain MRIs" (arXiv 2312.04215): a plain
DDPM reconstructs a noised slice from what it learnt of healthy anatomy in
general, so it drifts from the subject (intensity, ventricle size, shape).
cDDPM encodes the *input* slice into a vector c and conditions every residual
block of the UNet on it (added to the time embedding, `UNet(cond=)`), so the
reconstruction keeps the subject's appearance while the noising still removes
lesion-sized detail: a global vector cannot carry a lesion's position, and
the network learnt from healthy slices only. Reconstruction defaults to the
paper's one-step x0 estimates from t = 250, 500, 750, averaged (3 network
calls per slice).

What genjax does differently from the paper, on purpose:
  * the encoder is trained jointly with the denoiser from scratch (the paper
    pre-trains it self-supervised on the healthy slices and then freezes
    it); nothing is downloaded or pre-trained here;
  * the condition is dropped (set to 0) for a fraction
    `config.model.cond_dropout` of training examples, so the same network
    also denoises unconditionally: `sample` draws from noise with c = 0
    (there is no input image to condition on), as classifier-free guidance
    trains it.

Everything else (loss, EMA, samplers, the multi-t ensemble, the detector
hook) is `genjax.methods.ddpm`'s, through the builder's one conditioning
hook, `ddpm.Variant(condition=..., condition_reconstruct=True)`: the
condition is {'image', 'keep'}, the clean image (with the dropout flags) in
training, the image being reconstructed in `reconstruct`, None when sampling
from noise.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax import config as genjax_config
from genjax.methods import ddpm
from genjax.nn.norm import GroupNorm


class ImageEncoder(nn.Module):
  """A slice -> a [B, latent_dim] vector: strided convs, global mean, Dense.

  Each level halves the resolution (3×3 conv, stride 2, GroupNorm, SiLU); the
  global average pool makes the vector independent of where things are.
  """
  channels: Sequence[int] = (16, 32, 64)
  latent_dim: int = 64
  num_groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image):
    h = image.astype(self.dtype)
    for i, ch in enumerate(self.channels):
      h = nn.Conv(ch, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
                  name=f"conv{i}")(h)
      h = nn.silu(GroupNorm(min(self.num_groups, ch), dtype=self.dtype,
                            name=f"norm{i}")(h))
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.latent_dim, dtype=self.dtype, name="latent")(h)


class ConditionedUNet(nn.Module):
  """UNet(x_t, t, cond = keep · encoder(image)); cond = 0 without a condition.

  `condition` is None or {'image': [B, H, W, 1], 'keep': [B] in {0, 1} or
  None (keep all)}.
  """
  unet: nn.Module
  encoder: nn.Module

  def __call__(self, x, t, train=False, condition=None):
    if condition is None:
      cond = jnp.zeros((x.shape[0], self.encoder.latent_dim), jnp.float32)
    else:
      cond = self.encoder(condition["image"]).astype(jnp.float32)
      if condition.get("keep") is not None:
        cond = cond * condition["keep"][:, None]
    return self.unet(x, t, train, cond=cond)


def condition_fn(config):
  """Variant.condition: the batch's image, its condition dropped for a
  fraction config.model.cond_dropout of examples when given an rng."""
  rate = config.model.cond_dropout

  def condition(batch, rng):
    images = batch["image"]
    keep = None
    if rng is not None:
      keep = jax.random.bernoulli(rng, 1.0 - rate,
                                  (images.shape[0],)).astype(jnp.float32)
    return {"image": images, "keep": keep}
  return condition


def make_model(config):
  m = config.model
  dtype = genjax_config.compute_dtype(config)
  return ConditionedUNet(
      unet=ddpm.make_model(config),
      encoder=ImageEncoder(channels=tuple(m.encoder_channels),
                           latent_dim=m.latent_dim, num_groups=m.num_groups,
                           dtype=dtype))


def validate(config):
  """The DDPM's checks, then the encoder's; raises ConfigError."""
  from genjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  ddpm.validate(config)
  m = config.model
  if not (isinstance(m.latent_dim, int) and m.latent_dim >= 1):
    raise ConfigError(f"config.model.latent_dim={m.latent_dim!r}: an integer "
                      ">= 1 (the width of the image encoding).")
  channels = tuple(m.encoder_channels)
  if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
    raise ConfigError(f"config.model.encoder_channels={channels!r}: a "
                      "non-empty tuple of positive channel counts.")
  if 2 ** len(channels) > config.data.image_size:
    raise ConfigError(
        f"config.model.encoder_channels has {len(channels)} levels, each "
        f"halving the image; {config.data.image_size} px cannot be halved "
        "that often.")
  bad = [c for c in channels if c % min(m.num_groups, c)]
  if bad:
    raise ConfigError(f"config.model.encoder_channels {bad} are not divisible "
                      f"by config.model.num_groups={m.num_groups}.")
  if not 0.0 <= m.cond_dropout < 1.0:
    raise ConfigError(f"config.model.cond_dropout={m.cond_dropout}: a "
                      "probability in [0, 1).")


def make(config):
  """cDDPM as a `Method` (see genjax.methods and genjax.methods.ddpm)."""
  return ddpm.make(config, ddpm.Variant(
      model=make_model(config), condition=condition_fn(config),
      condition_reconstruct=True))

