"""Pixel and slice scores of the detector (JAX, jittable): one function each.

  residual      mean over `anomaly.num_reconstructions` draws of |x - x̂|
                (or the method hook's own pixel map); today's default;
  mahalanobis   per-pixel Mahalanobis distance of x from the n >= 2 draws:
                sqrt((x - mu)² / (s² + eps)), mu and s² the per-pixel mean
                and unbiased variance (ddof 1) of the draws x̂_1..x̂_n and eps
                `anomaly.mahalanobis_eps` (a diagonal covariance: each pixel
                on its own). A pixel the model reconstructs consistently but
                differently from x scores high; one it cannot decide on
                (large s²) scores low. Its range is [0, 2 / sqrt(eps)] for
                images in [-1, 1], not [0, 2].
Either map is then restricted to the brain (eroded by `anomaly.erode_brain`
pixels, `postprocess.erode`), median filtered and restricted again
(`residual_map`); the slice score is `slice_scores` of it unless the hook
gives one.

Method hook (optional `Method.anomaly_score`):
  anomaly_score(state, images, recon) or (..., recon, rng) -> array or dict
with keys 'pixel' [B, H, W, 1] (used instead of |x - recon|), 'slice' [B]
(used instead of the slice score) and 'reconstruction' [B, H, W, 1] (used
instead of recon, e.g. the mean of a multi-t ensemble whose 'pixel' map is
the mean of its residuals); a bare array is 'slice' if [B], 'pixel' if
[B, H, W, 1]. A hook with an `rng` parameter gets the draw's key, the one
`reconstruct` got. When the hook returns 'reconstruction', `reconstruct`'s
own output is unused and jit removes its computation.
"""

import inspect

from absl import logging
import jax
import jax.numpy as jnp

from genjax.detect import postprocess

SCORES = ("residual", "mahalanobis")


def median_filter(x, size):
  """Median over size x size neighbourhoods of each [H, W] plane.

  Matches `scipy.ndimage.median_filter(x, size=(1, size, size, 1),
  mode='reflect')`: the border is mirrored including the edge pixel
  (numpy's 'symmetric'), so the filter does not shrink the map.

  Args:
    x: [B, H, W, C].
    size: odd window side; 1 returns x.

  Returns:
    [B, H, W, C], x's dtype.
  """
  if size == 1:
    return x
  r = size // 2
  h, w = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
  # size**2 shifted views; a sort of a short axis is cheap next to a model.
  views = [padded[:, i:i + h, j:j + w] for i in range(size)
           for j in range(size)]
  return jnp.median(jnp.stack(views, axis=-1), axis=-1).astype(x.dtype)


def residual_map(images, reconstructions, brain, median_size, pixel=None):
  """The anomaly map of one reconstruction.

  Args:
    images: [B, H, W, 1] inputs in [-1, 1].
    reconstructions: [B, H, W, 1].
    brain: [B, H, W, 1] brain mask in {0, 1}.
    median_size: median filter side (odd; 1 = off).
    pixel: optional [B, H, W, 1] score map to use instead of |x - x_hat|.

  Returns:
    float32 [B, H, W, 1]: brain * median(brain * score); 0 outside the brain.
  """
  score = jnp.abs(images - reconstructions) if pixel is None else pixel
  brain = (brain > 0.5).astype(jnp.float32)
  return brain * median_filter(brain * score.astype(jnp.float32),
                               median_size)


def mahalanobis(images, reconstructions, eps):
  """Per-pixel Mahalanobis distance of the images from n reconstructions.

  Args:
    images: [B, H, W, 1].
    reconstructions: [n, B, H, W, 1], n >= 2 independent draws.
    eps: added to the variance (> 0), bounds the score by 2 / sqrt(eps).

  Returns:
    float32 [B, H, W, 1]: |x - mean| / sqrt(var + eps), var with ddof 1.
  """
  if reconstructions.shape[0] < 2:
    raise ValueError("The Mahalanobis score needs >= 2 reconstructions "
                     "(config.anomaly.num_reconstructions).")
  r = reconstructions.astype(jnp.float32)
  mu = jnp.mean(r, axis=0)
  var = jnp.var(r, axis=0, ddof=1)
  return jnp.abs(images.astype(jnp.float32) - mu) / jnp.sqrt(var + eps)


def slice_scores(residuals, brain, kind, top_k):
  """One score per slice from its residual map.

  Args:
    residuals: [B, H, W, 1] (0 outside the brain).
    brain: [B, H, W, 1] brain mask.
    kind: 'top_k_mean', 'mean' (over brain pixels) or 'sum'.
    top_k: k of 'top_k_mean' (clamped to H * W).

  Returns:
    float32 [B].
  """
  flat = residuals.reshape(residuals.shape[0], -1)
  if kind == "sum":
    return jnp.sum(flat, axis=1)
  if kind == "mean":
    area = jnp.sum(brain.reshape(brain.shape[0], -1) > 0.5, axis=1)
    return jnp.sum(flat, axis=1) / jnp.maximum(area, 1)
  k = min(int(top_k), flat.shape[1])
  return jnp.mean(jax.lax.top_k(flat, k)[0], axis=1)


def _takes_rng(fn):
  try:
    return "rng" in inspect.signature(fn).parameters
  except (TypeError, ValueError):  # Builtins without a signature.
    return False


def make_score_fn(method, opts):
  """The jittable detector: (state, images, brain, rng) -> dict.

  Draw i of the `num_reconstructions` uses key jax.random.split(rng, n)[i]
  for `reconstruct` (and for the hook, if it takes an rng).

  Args:
    method: a `genjax.methods.Method` (reconstruct, optional anomaly_score).
    opts: `anomaly_options(config)`.

  Returns:
    A function whose output holds
      reconstruction [B, H, W, 1]  mean of the reconstructions (for figures),
      residual       [B, H, W, 1]  the anomaly map (see `residual_map`),
      slice_score    [B].
  """
  hook = getattr(method, "anomaly_score", None)
  hook_rng = hook is not None and _takes_rng(hook)
  n, kind = opts["num_reconstructions"], opts.get("score", "residual")
  erode = opts.get("erode_brain", 0)

  def one(state, images, rng):
    recon = method.reconstruct(state, images, rng)
    extra = {}
    if hook is not None:
      extra = (hook(state, images, recon, rng=rng) if hook_rng
               else hook(state, images, recon))
    if not isinstance(extra, dict):
      # A bare array: [B] is an image-level score, [B, H, W, 1] a pixel map.
      extra = {"slice" if jnp.ndim(extra) == 1 else "pixel": extra}
    recon = extra.get("reconstruction", recon)
    pixel = extra.get("pixel")
    score = jnp.abs(images - recon) if pixel is None else pixel
    out = {"reconstruction": recon.astype(jnp.float32),
           "score": score.astype(jnp.float32)}
    if "slice" in extra:
      out["slice"] = extra["slice"].astype(jnp.float32)
    if kind == "mahalanobis" and pixel is not None:
      logging.warning("config.anomaly.score='mahalanobis' scores the "
                      "reconstructions; the method's own pixel map is not "
                      "used.")
    return out

  def score_fn(state, images, brain, rng):
    keys = jax.random.split(rng, n)
    draws = jax.lax.map(lambda key: one(state, images, key), keys)
    outs = jax.tree.map(lambda x: jnp.mean(x, axis=0), draws)
    if kind == "mahalanobis":
      pixel = mahalanobis(images, draws["reconstruction"],
                          opts["mahalanobis_eps"])
    else:  # The mean |x - x'| (or the hook's pixel map).
      pixel = outs["score"]
    if erode:
      brain = postprocess.erode(brain, erode)
    residual = residual_map(images, None, brain, opts["median_filter"],
                            pixel=pixel)
    if "slice" in outs:
      scores = outs["slice"]
    else:
      scores = slice_scores(residual, brain, opts["slice_score"],
                            opts["slice_top_k"])
    return {"reconstruction": outs["reconstruction"], "residual": residual,
            "slice_score": scores}

  return score_fn


def network_calls(method, opts):
  """Network evaluations per slice of the detector's score function.

  A method states the cost of one reconstruction draw (its `reconstruct`
  with its hook, as the detector runs them) as an attribute
  `reconstruct.network_calls`; without it one draw counts as one forward
  pass of the method's model (VAE: encoder and decoder; GAN: encoder and
  generator).

  Returns:
    (calls per slice, how they were counted).
  """
  per_draw = getattr(method.reconstruct, "network_calls", None)
  how = "stated by the method's reconstruct"
  if per_draw is None:
    per_draw, how = 1, "one forward pass of the method's model per draw"
  return int(per_draw) * opts["num_reconstructions"], how
