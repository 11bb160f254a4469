"""Lesion-conditioned DDPM: synthesise pathology where a mask says.

The denoiser sees, besides x_t, four image-shaped condition channels (the
UNet's `conv_in` takes any number of channels):

  mask          the lesion mask m [B, H, W, 1] in {0, 1}
  mask flag     1 everywhere when a mask is given, 0 when it is dropped
  context       the healthy context c = x (1 - m): the slice with zeros
                inside the mask (for painting a lesion into a given slice)
  context flag  1 everywhere when a context is given

A dropped part is zeros with its flag 0, so "no condition" (flags 0) differs
from "an empty mask" (a healthy slice, mask flag 1). The model trains on
slices with and without lesions (config.data.train_split='train_mixed',
lesion slices oversampled to config.data.lesion_fraction) with condition
dropout: the whole condition is dropped for a fraction
config.model.cond_dropout of the examples (the unconditional model that
classifier-free guidance needs), and the context alone for a fraction
config.model.context_dropout of the others (the mask-only model that
generates a whole slice). One network thus serves three uses:

  sample(state, rng, n)                            unconditional slices
  generate(state, rng, {'mask': m}, s)             a slice with a lesion at m
  generate(state, rng, {'mask': m, 'image': x}, s,
           known=(x, 1 - m))                       a lesion painted into x
                                                   at m, x kept outside

with guidance u + s (c - u) (genjax/methods/ddpm.py); `paint` below is the
third. Painting is RePaint's known-region replacement
(`genjax.diffusion.samplers`, one pass, no resampling jumps) with the
network also conditioned on the mask and the context, so the output equals
x exactly outside the mask. `reconstruct` (the anomaly detector's) runs the
unconditional model, as the plain DDPM's.

Everything else (loss, EMA, samplers) is `genjax.methods.ddpm`'s, through
`ddpm.Variant(condition=...)`. experiments/synthesize.py is the command line.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.methods import ddpm

# Condition channels after x_t: mask, mask flag, context, context flag.
CONDITION_CHANNELS = 4


def make_condition(mask, image=None, keep_mask=None, keep_context=None):
  """The condition pytree of masks (and the slices around them).

  Args:
    mask: [B, H, W, 1] lesion masks; > 0.5 is lesion.
    image: optional [B, H, W, 1] slices in [-1, 1] whose healthy context
      x (1 - m) the network sees; None: no context.
    keep_mask: optional [B] in {0, 1}; 0 drops an example's whole condition.
    keep_context: optional [B] in {0, 1}; 0 drops an example's context.

  Returns:
    {'mask', 'context': [B, H, W, 1] float32 (zeros where dropped),
     'mask_on', 'context_on': [B] float32 flags}.
  """
  m = (jnp.asarray(mask) > 0.5).astype(jnp.float32)
  b = m.shape[0]
  mask_on = (jnp.ones((b,), jnp.float32) if keep_mask is None
             else jnp.asarray(keep_mask, jnp.float32))
  if image is None:
    context, context_on = jnp.zeros_like(m), jnp.zeros((b,), jnp.float32)
  else:
    context = jnp.asarray(image, jnp.float32) * (1.0 - m)
    context_on = (jnp.ones((b,), jnp.float32) if keep_context is None
                  else jnp.asarray(keep_context, jnp.float32))
  # A context never comes without its mask (its zeros would reveal it).
  context_on = context_on * mask_on
  per_pixel = lambda v: v[:, None, None, None]
  return {"mask": m * per_pixel(mask_on), "mask_on": mask_on,
          "context": context * per_pixel(context_on),
          "context_on": context_on}


def condition_channels(condition, shape, dtype=jnp.float32):
  """[B, H, W, 4] network input channels of a condition (None: all zeros)."""
  if condition is None:
    return jnp.zeros((*shape[:3], CONDITION_CHANNELS), dtype)
  flag = lambda v: jnp.broadcast_to(v[:, None, None, None], (*shape[:3], 1))
  return jnp.concatenate(
      [condition["mask"], flag(condition["mask_on"]),
       condition["context"], flag(condition["context_on"])],
      axis=-1).astype(dtype)


class LesionUNet(nn.Module):
  """UNet([x_t, condition channels], t); condition None = unconditional."""
  unet: nn.Module

  def __call__(self, x, t, train=False, condition=None):
    channels = condition_channels(condition, x.shape, x.dtype)
    return self.unet(jnp.concatenate([x, channels], axis=-1), t, train)


def make_model(config):
  return LesionUNet(unet=ddpm.make_model(config))


def batch_condition(config):
  """`ddpm.Variant.condition`: a batch's condition, dropped out in training.

  With an rng (training), every example keeps its condition with
  probability 1 - config.model.cond_dropout and, if kept, its context with
  probability 1 - config.model.context_dropout. Without one (`generate`),
  the mask is kept and the context is given when the batch has an 'image'.
  """
  cond_dropout = config.model.cond_dropout
  context_dropout = config.model.context_dropout

  def condition(batch, rng):
    if "mask" not in batch:
      raise ValueError(
          "lesion_ddpm conditions on batch['mask'] ([B, H, W, 1] lesion "
          f"masks); the batch has only {sorted(batch)}.")
    mask, image = batch["mask"], batch.get("image")
    if rng is None:
      return make_condition(mask, image)
    b = mask.shape[0]
    mask_rng, context_rng = jax.random.split(rng)
    keep_mask = jax.random.bernoulli(mask_rng, 1.0 - cond_dropout, (b,))
    keep_context = jax.random.bernoulli(context_rng, 1.0 - context_dropout,
                                        (b,))
    return make_condition(mask, image, keep_mask, keep_context)

  return condition


def paint(method, state, rng, images, masks, guidance_scale=1.0):
  """A lesion painted into each slice where its mask is; the rest kept.

  Args:
    method: the lesion_ddpm Method.
    state: its state.
    rng: a PRNG key.
    images: [n, H, W, 1] healthy slices in [-1, 1].
    masks: [n, H, W, 1] lesion masks (> 0.5 is lesion).
    guidance_scale: classifier-free guidance scale s.

  Returns:
    [n, H, W, 1]: equal to `images` exactly where the mask is 0.
  """
  m = (jnp.asarray(masks) > 0.5).astype(jnp.float32)
  return method.generate(state, rng, {"mask": m, "image": images},
                         guidance_scale, known=(images, 1.0 - m))


def validate(config):
  """The DDPM's checks, then the condition dropouts'; raises ConfigError."""
  from genjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  ddpm.validate(config)
  m = config.model
  if not 0.0 < m.cond_dropout < 1.0:
    raise ConfigError(
        f"config.model.cond_dropout={m.cond_dropout}: a probability in (0, 1)"
        "; classifier-free guidance needs the unconditional model it trains.")
  if not 0.0 <= m.context_dropout < 1.0:
    raise ConfigError(
        f"config.model.context_dropout={m.context_dropout}: a probability in "
        "[0, 1) (0: the mask-only model used by `generate` is never trained).")
  scale = config.sample.guidance_scale
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or (
      scale < 0):
    raise ConfigError(f"config.sample.guidance_scale={scale!r}: a number "
                      ">= 0 (1 = the conditional model, 0 = unconditional).")


def make(config) -> Any:
  """The lesion-conditioned DDPM as a `Method` with `generate`."""
  return ddpm.make(config, ddpm.Variant(model=make_model(config),
                                        condition=batch_condition(config)))
