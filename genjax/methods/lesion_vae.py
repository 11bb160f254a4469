"""Mask-conditioned VAE: the classic comparison for lesion synthesis.

A conditional VAE (Sohn et al., 2015) whose encoder q(z | x, c) and decoder
p(x | z, c) both see the condition c as extra image channels, the same four
as lesion_ddpm's denoiser (`lesion_ddpm.make_condition` and
`condition_channels`, imported, not copied):

  mask          the lesion mask m [B, H, W, 1] in {0, 1}
  mask flag     1 everywhere (always given here: see guidance below)
  context       the healthy context x (1 - m): the slice with zeros inside
                the mask (for painting a lesion into a given slice)
  context flag  1 where a context is given, 0 where it is not

The encoder takes them concatenated to x at its input. The decoder takes
them at every scale: after each of its upsamplings the condition, average-
pooled to that resolution, is concatenated to the features
(genjax/nn/vae.py). Concatenating only at the decoder input would hand the
mask to the 8x8 bottleneck of the 64 px :cpu model (dense latent: a vector),
where a lesion of a few pixels is a fraction of one cell; at every scale the
last convolutions see the mask and the context at full resolution, so a
generated lesion can follow the mask's outline to the pixel and a painted
one can match the context at the mask's border.

The model trains on slices with and without lesions
(config.data.train_split='train_mixed', lesion slices oversampled to
config.data.lesion_fraction), minimising genjax/methods/vae.py's objective
(the same config.vae switches) with z ~ q(z | x, c). The context is dropped
(zeros, flag 0) for a fraction config.model.context_dropout of the
examples, so that one network both generates a whole slice around a mask
and paints into a given one:

  generate(state, rng, {'mask': m})                  z ~ N(0, I) (or the
                                                     aggregate posterior,
                                                     config.sample.prior)
                                                     decoded given m
  generate(state, rng, {'mask': m, 'image': x},
           known=(x, 1 - m))                         the same given m and
                                                     x (1 - m), composited:
                                                     keep x + (1 - keep) x̂

so a painted slice equals x exactly outside the mask
(`lesion_ddpm.paint` and experiments/synthesize.py call it as they call the
lesion DDPM). `sample` decodes under an empty mask without context (a
healthy slice), and `reconstruct`, the anomaly detector's, encodes and
decodes under that same "no lesion" condition: a pseudo-healthy
reconstruction.

Guidance: the guidance scale must be 1 (anything else is a ValueError).
Classifier-free guidance extrapolates scores; the VAE has none, and
u + s (c - u) on decoder means would need an unconditional decoder trained
by whole-condition dropout for an image-space extrapolation with no
probabilistic meaning. The comparison with lesion_ddpm is therefore at its
guidance 1 (or at its best guidance, against the VAE's only setting).
"""

from typing import Any

import jax
import jax.numpy as jnp

from genjax.config import ConfigError
from genjax.methods import lesion_ddpm
from genjax.methods import vae

# The condition channels: mask, mask flag, context, context flag.
CONDITION_CHANNELS = lesion_ddpm.CONDITION_CHANNELS


def condition_of_batch(batch, rng=None, context_dropout=0.0):
  """The [B, H, W, 4] condition channels of a batch dict.

  Args:
    batch: a dict with 'mask' [B, H, W, 1] (> 0.5 is lesion) and optionally
      'image' [B, H, W, 1] in [-1, 1], whose x (1 - m) is the context.
    rng: None: the context is given whenever the batch has an 'image';
      a PRNG key (training): each example's context is dropped with
      probability `context_dropout`.
    context_dropout: the probability above.

  Returns:
    [B, H, W, 4] float32: mask, mask flag (1), context, context flag.

  Raises:
    ValueError: the batch has no 'mask'.
  """
  if "mask" not in batch:
    raise ValueError(
        "lesion_vae conditions on batch['mask'] ([B, H, W, 1] lesion "
        f"masks); the batch has only {sorted(batch)}.")
  mask, image = batch["mask"], batch.get("image")
  keep_context = None
  if rng is not None and image is not None:
    keep_context = jax.random.bernoulli(rng, 1.0 - context_dropout,
                                        (mask.shape[0],))
  condition = lesion_ddpm.make_condition(mask, image,
                                         keep_context=keep_context)
  return lesion_ddpm.condition_channels(condition, mask.shape)


def make_conditioning(config):
  """The `vae.Conditioning` of config: the batch's mask and context, the
  context dropped with probability config.model.context_dropout in training;
  by default an empty mask without context (a healthy slice)."""
  size = config.data.image_size
  context_dropout = config.model.context_dropout

  def of_batch(batch, rng):
    return condition_of_batch(batch, rng, context_dropout)

  def default(n):
    return condition_of_batch({"mask": jnp.zeros((n, size, size, 1),
                                                 jnp.float32)})

  return vae.Conditioning(of_batch=of_batch, default=default)


def validate(config):
  """The VAE's checks, then the conditioning's; raises ConfigError."""
  vae.check_config(config)
  dropout = config.model.context_dropout
  if not 0.0 <= dropout < 1.0:
    raise ConfigError(
        f"config.model.context_dropout={dropout}: a probability in [0, 1) "
        "(1: the painting model, mask and context, is never trained).")
  scale = config.sample.guidance_scale
  if isinstance(scale, bool) or scale != 1:
    raise ConfigError(
        f"config.sample.guidance_scale={scale!r}: the conditional VAE has "
        "no classifier-free guidance; it must be 1.0.")
  if config.data.train_split == "train":
    raise ConfigError(
        "config.data.train_split='train' holds healthy slices only (empty "
        "masks): the model would never see a lesion. Use 'train_mixed'.")


def make(config) -> Any:
  """The mask-conditioned VAE as a `Method` with `generate`."""
  validate(config)
  return vae.make(config, make_conditioning(config))
