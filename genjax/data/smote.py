"""SMOTE-like synthesis of minority (lesion) slices, on device, per batch.

SMOTE (Chawla et al., 2002) creates minority examples on the segment between
a minority example and a minority neighbour. Here, in each training batch, a
share `smote_config.fraction` of the lesion slices (label == 1) is replaced by

  x = lam * x_i + (1 - lam) * x_j,   lam ~ U(0, 1) per example,

with j another lesion slice of the same batch, drawn uniformly (the batch is
already a random sample of the lesion slices, so "a random lesion partner"
stands in for SMOTE's k nearest neighbours, which would need the whole split).
The slices replaced are chosen uniformly: exactly round(fraction * n_lesion)
of the batch's n_lesion lesion slices (halves round up). Partners and weights
are read from the batch *before* any replacement.

Masks follow the image the way `genjax.data.augment` resamples them: the
binary masks are interpolated with the same lam and thresholded at 1/2,

  mask = [lam * mask_i + (1 - lam) * mask_j >= 1/2]     (and likewise brain)

so a pixel is lesion where the lesion contributes at least half of the
interpolation's weight: the mask of the dominant slice (the one with weight
>= 1/2) is kept whole, plus, where lam = 1/2 exactly, the other's. Hence the
synthetic slice always keeps a non-empty lesion mask and label 1 stays true.

It is a no-op (the batch itself is returned) when `smote_config.enabled` is
False, and leaves the batch unchanged when it holds fewer than 2 lesion
slices. `smote_config` is read in Python (static under jit).
"""

import jax
import jax.numpy as jnp

_MASK_KEYS = ("mask", "brain")


def synthesize(rng: jax.Array, batch: dict, smote_config) -> dict:
  """Replaces a share of a batch's lesion slices by lesion interpolations.

  Args:
    rng: PRNG key; the same key and batch give the same result.
    batch: image float [B, H, W, 1]; label int [B] (1 = lesion); optional mask
      and brain float [B, H, W, 1] in {0, 1}. Other keys pass through.
    smote_config: `config.smote` with `enabled` (bool) and `fraction` in
      [0, 1].

  Returns:
    A dict with the same keys, shapes and dtypes; `batch` itself when
    disabled.

  Raises:
    ValueError: fraction outside [0, 1].
  """
  if not smote_config.enabled:
    return batch
  fraction = float(smote_config.fraction)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"config.smote.fraction={fraction}: must be in [0, 1].")
  label = batch["label"]
  b = label.shape[0]
  is_lesion = label == 1
  n_lesion = jnp.sum(is_lesion)
  k_pick, k_partner, k_lam = jax.random.split(rng, 3)

  # Which lesion slices to replace: the n_replace lowest random scores.
  scores = jnp.where(is_lesion, jax.random.uniform(k_pick, (b,)), 2.0)
  rank = jnp.argsort(jnp.argsort(scores))
  n_replace = jnp.where(n_lesion >= 2,
                        jnp.floor(fraction * n_lesion + 0.5), 0.0)
  replace = is_lesion & (rank < n_replace)

  # A partner for every example: uniform among the *other* lesion slices (the
  # argmax of i.i.d. uniforms over the eligible ones). Rows with no eligible
  # partner are never replaced.
  eligible = is_lesion[None, :] & ~jnp.eye(b, dtype=bool)
  partner = jnp.argmax(
      jnp.where(eligible, jax.random.uniform(k_partner, (b, b)), -1.0), axis=1)
  lam = jax.random.uniform(k_lam, (b,))

  def mix(x):
    lam_x = lam.reshape((b,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    return lam_x * x + (1 - lam_x) * x[partner]

  def where(new, old):
    return jnp.where(replace.reshape((b,) + (1,) * (old.ndim - 1)), new, old)

  out = dict(batch)
  out["image"] = where(mix(batch["image"]), batch["image"])
  for key in _MASK_KEYS:
    if key in batch:
      m = batch[key]
      out[key] = where((mix(m.astype(jnp.float32)) >= 0.5).astype(m.dtype), m)
  return out
