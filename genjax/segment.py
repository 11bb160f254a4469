"""A small supervised lesion segmenter: UNet, soft Dice + BCE, Dice per subject.

Plain functions over numpy arrays, so that a study can train one in a few
lines and the tests can check each part:

  model = make_model(base_channels=16, channel_mult=(1, 2, 4))
  state, losses = train(model, images, masks, steps=500, batch_size=16)
  probs = predict(model, state.params, test_images)          # [N, H, W, 1]
  per_subject = dice_scores(probs, test_masks, test_subjects)  # {id: Dice}

The network is `genjax.nn.unet.UNet` (the DDPM's denoiser) with a constant
timestep 0, so its time embedding is a learned constant bias, and no
attention outside the middle block; it predicts one logit per pixel. Images
are [N, H, W, C] in [-1, 1] (C modalities), masks [N, H, W, 1] in {0, 1}.
The loss is soft Dice (pooled over the batch's pixels, smoothed) plus the
mean pixel binary cross-entropy; the optimiser is Adam (optax), one jitted
update per step. Batches are drawn with replacement (optionally with
per-example probabilities, e.g. to fix the share of real and synthetic
pairs), flipped left-right at random when `flip` is on.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax.nn.unet import UNet


class Segmenter(nn.Module):
  """UNet(image, t=0) -> per-pixel lesion logits [B, H, W, 1].

  Attributes:
    base_channels: channels of the UNet's first level.
    channel_mult: per-level multipliers; H and W must divide by
      2^(len - 1).
    num_res_blocks: residual blocks per encoder level.
    num_groups: GroupNorm groups (must divide every level's channels).
    dtype: activation dtype; logits are float32.
  """
  base_channels: int = 16
  channel_mult: Sequence[int] = (1, 2, 4)
  num_res_blocks: int = 1
  num_groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    """Logits of lesion for images x [B, H, W, C] in [-1, 1]."""
    unet = UNet(base_channels=self.base_channels,
                channel_mult=tuple(self.channel_mult),
                num_res_blocks=self.num_res_blocks, attention_resolutions=(),
                num_groups=self.num_groups, out_channels=1, dtype=self.dtype,
                name="unet")
    t = jnp.zeros((x.shape[0],), jnp.int32)
    return unet(x, t, train)


def make_model(base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
               num_groups=8):
  """A `Segmenter` (unbound Flax module) of the given size."""
  return Segmenter(base_channels=int(base_channels),
                   channel_mult=tuple(int(m) for m in channel_mult),
                   num_res_blocks=int(num_res_blocks),
                   num_groups=int(num_groups))


class State(NamedTuple):
  """The segmenter's training state."""
  step: Any
  params: Any
  opt_state: Any


# --- Losses -------------------------------------------------------------------


def soft_dice_loss(logits, masks, smooth=1.0):
  """1 - soft Dice of sigmoid(logits) and masks, pooled over all pixels.

  soft Dice = (2 sum(p m) + smooth) / (sum p + sum m + smooth), the sums
  over every pixel of the batch (a batch with little lesion is not
  dominated by per-example ratios of tiny numbers).

  Args:
    logits: [B, H, W, 1] lesion logits.
    masks: [B, H, W, 1] targets in {0, 1}.
    smooth: added to numerator and denominator.

  Returns:
    A scalar in [0, 1).
  """
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  m = masks.astype(jnp.float32)
  overlap = jnp.sum(p * m)
  return 1.0 - (2.0 * overlap + smooth) / (jnp.sum(p) + jnp.sum(m) + smooth)


def bce_loss(logits, masks):
  """Mean pixel binary cross-entropy of sigmoid(logits) against masks."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(
      logits.astype(jnp.float32), masks.astype(jnp.float32)))


def loss_fn(logits, masks, dice_weight=1.0, bce_weight=1.0):
  """dice_weight * soft Dice loss + bce_weight * BCE; returns (loss, parts)."""
  dice = soft_dice_loss(logits, masks)
  bce = bce_loss(logits, masks)
  return dice_weight * dice + bce_weight * bce, {"dice_loss": dice,
                                                 "bce": bce}


# --- Training -----------------------------------------------------------------

_INITS = {}


def init(model, rng, image_shape, optimizer):
  """The initial State for images of shape [H, W, C]."""
  if model not in _INITS:  # Jitted: much faster than Flax's eager init.
    _INITS[model] = jax.jit(lambda r, x: model.init(r, x)["params"])
  params = _INITS[model](rng, jnp.zeros((1, *image_shape), jnp.float32))
  return State(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=optimizer.init(params))


def make_train_step(model, optimizer, dice_weight=1.0, bce_weight=1.0):
  """A jitted step(state, images, masks) -> (state, {'loss', ...})."""

  def step(state, images, masks):
    def objective(params):
      logits = model.apply({"params": params}, images, train=True)
      return loss_fn(logits, masks, dice_weight, bce_weight)
    (loss, parts), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)
    return State(state.step + 1, params, opt_state), {"loss": loss, **parts}

  return jax.jit(step, donate_argnums=0)


_TRAIN_STEPS = {}


def _check_pairs(images, masks):
  images = np.asarray(images, np.float32)
  masks = np.asarray(masks, np.float32)
  if images.ndim != 4 or masks.ndim != 4 or masks.shape[-1] != 1:
    raise ValueError(f"images [N, H, W, C] and masks [N, H, W, 1] needed; "
                     f"got {images.shape} and {masks.shape}.")
  if images.shape[:3] != masks.shape[:3]:
    raise ValueError(f"images {images.shape} and masks {masks.shape} differ "
                     "in number or size.")
  if not len(images):
    raise ValueError("No training pairs.")
  return images, masks


def train(model, images, masks, *, steps, batch_size=16, learning_rate=1e-3,
          seed=0, weights=None, flip=True, dice_weight=1.0, bce_weight=1.0,
          log_every=0):
  """Trains `model` on (image, mask) pairs; returns (State, losses).

  Args:
    model: a `Segmenter`.
    images: [N, H, W, C] in [-1, 1].
    masks: [N, H, W, 1] in {0, 1}.
    steps: Adam updates.
    batch_size: examples per update, drawn with replacement.
    learning_rate: Adam's step size (constant).
    seed: the initialisation's and the draws' seed.
    weights: optional [N] non-negative sampling weights (normalised here);
      None: uniform.
    flip: flip each drawn example left-right with probability 1/2.
    dice_weight, bce_weight: the loss's weights.
    log_every: log the loss every this many steps (0: never).

  Returns:
    (State, float32 [steps] losses).
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  images, masks = _check_pairs(images, masks)
  n = len(images)
  if weights is not None:
    weights = np.asarray(weights, np.float64)
    if weights.shape != (n,) or (weights < 0).any() or weights.sum() <= 0:
      raise ValueError(f"weights: [{n}] non-negative, not all zero.")
    weights = weights / weights.sum()
  key = (model, float(learning_rate), float(dice_weight), float(bce_weight))
  if key not in _TRAIN_STEPS:  # One compiled step per setting, reused.
    optimizer = optax.adam(learning_rate)
    _TRAIN_STEPS[key] = (optimizer, make_train_step(
        model, optimizer, dice_weight, bce_weight))
  optimizer, step_fn = _TRAIN_STEPS[key]
  state = init(model, jax.random.key(seed), images.shape[1:], optimizer)
  rng = np.random.default_rng(seed)
  losses = np.zeros(int(steps), np.float32)
  for i in range(int(steps)):
    idx = rng.choice(n, size=batch_size, replace=True, p=weights)
    x, m = images[idx], masks[idx]
    if flip:
      flipped = rng.random(batch_size) < 0.5
      x = np.where(flipped[:, None, None, None], x[:, :, ::-1], x)
      m = np.where(flipped[:, None, None, None], m[:, :, ::-1], m)
    state, metrics = step_fn(state, x, m)
    if log_every and (i + 1) % log_every == 0:
      logging.info("segmenter step %d: loss %.4f", i + 1,
                   float(metrics["loss"]))
    losses[i] = metrics["loss"]
  return state, losses


def predict(model, params, images, batch_size=32):
  """Lesion probabilities [N, H, W, 1] (numpy) of images [N, H, W, C].

  Every call of the network gets a full batch (one compiled shape); the
  padding of the last one is dropped.
  """
  images = np.asarray(images, np.float32)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]),
                                              np.float32)])
    probs = np.asarray(_probabilities(model, params, chunk))
    out.append(probs[:batch_size - pad])
  if not out:
    return np.zeros((0, *images.shape[1:3], 1), np.float32)
  return np.concatenate(out)


def _probabilities(model, params, images):
  return _jitted_apply(model)(params, images)


_JITTED = {}


def _jitted_apply(model):
  """One jitted sigmoid(model.apply) per model (modules are hashable)."""
  if model not in _JITTED:
    _JITTED[model] = jax.jit(
        lambda p, x: jax.nn.sigmoid(model.apply({"params": p}, x)))
  return _JITTED[model]


# --- Dice ---------------------------------------------------------------------


def dice_counts(pred, mask, subjects=None, threshold=0.5):
  """Per-subject overlap counts of thresholded predictions and masks.

  Args:
    pred: [N, H, W, 1] probabilities (or any scores).
    mask: [N, H, W, 1] targets; > 0.5 is lesion.
    subjects: [N] subject ids of the slices; None: all one subject ''.
    threshold: pred > threshold is predicted lesion.

  Returns:
    (ids sorted, int64 [S, 3] rows of (|P & M|, |P|, |M|)).
  """
  pred = np.asarray(pred) > threshold
  mask = np.asarray(mask) > 0.5
  if pred.shape != mask.shape:
    raise ValueError(f"pred {pred.shape} and mask {mask.shape} differ.")
  n = len(pred)
  subjects = (np.full(n, "", object) if subjects is None
              else np.asarray([s.decode() if isinstance(s, bytes) else str(s)
                               for s in subjects], object))
  if len(subjects) != n:
    raise ValueError(f"{len(subjects)} subject ids for {n} slices.")
  per_slice = np.stack([
      (pred & mask).reshape(n, -1).sum(1), pred.reshape(n, -1).sum(1),
      mask.reshape(n, -1).sum(1)], axis=1).astype(np.int64)
  ids = sorted(set(subjects.tolist()))
  table = np.stack([per_slice[subjects == s].sum(0) for s in ids]) if ids \
      else np.zeros((0, 3), np.int64)
  return ids, table


def dice_of_counts(counts):
  """Dice 2|P & M| / (|P| + |M|) of count rows summed (1.0 if both empty)."""
  total = np.asarray(counts, np.int64).reshape(-1, 3).sum(0)
  denominator = total[1] + total[2]
  return 1.0 if denominator == 0 else float(2 * total[0] / denominator)


def dice_scores(pred, mask, subjects=None, threshold=0.5):
  """Dice per subject, over all of its slices' pixels.

  Args:
    pred: [N, H, W, 1] probabilities.
    mask: [N, H, W, 1] targets.
    subjects: [N] subject ids; None: one subject ''.
    threshold: pred > threshold is predicted lesion.

  Returns:
    {subject: Dice}; two empty masks agree (1.0), as
    `genjax.metrics.detection.dice`.
  """
  ids, table = dice_counts(pred, mask, subjects, threshold)
  return {s: dice_of_counts(row) for s, row in zip(ids, table)}

