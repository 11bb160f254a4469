"""AutoDDPM: mask, stitch and re-sample (Bercea et al., 2023) on a plain DDPM.

"Mask, Stitch, and Re-Sample: Enhancing Robustness and Generalizability in
Anomaly Detection through Automatic Diffusion Models" (ICML IMLH 2023)
changes only how a DDPM reconstructs; the network, its training and its
sampling from noise are the plain DDPM's (genjax/methods/ddpm.py, built
through `ddpm.make(config, Variant(...))`), and so is the state: a DDPM
checkpoint restores here unchanged (same `ddpm.State`, same parameter
tree). Training this config trains exactly the plain DDPM. (The workdir
check refuses a workdir whose saved config.method is 'ddpm'; copy that
run's checkpoints/ into a new workdir to detect with AutoDDPM.)

One draw of a reconstruction at noise level t (`reconstruct_at`):

  1. Mask. AnoDDPM's reconstruction x_hat from t with config.anomaly's
     sampler and options (`ddpm.Denoiser.anoddpm`), clipped to [-1, 1]; the
     residual r = |x - x_hat|; the mask m = dilate(r > threshold), a binary
     dilation by a (2 dilation + 1)² square, restricted to the image
     (`anomaly_mask`).
  2. Stitch. x_s = m x_hat + (1 - m) x (`stitch`): the candidate anomalies
     replaced by their pseudo-healthy reconstruction, the rest untouched.
  3. Re-sample. x_s noised to config.autoddpm.resample_level (lower than the
     masking t, so the stitched content is harmonised, not redrawn) and
     denoised with config.autoddpm.resample_sampler ('ddpm' or 'ddim', with
     config.anomaly's num_steps / eta / clip_x0) under RePaint-style known-
     region replacement, `known=(x, 1 - m)` (`samplers._with_known`): the
     result equals x exactly outside m and is regenerated, consistent with
     its surroundings, inside m.

Keys: one draw's rng is split in two, `mask_rng, resample_rng =
jax.random.split(rng)`; pass 1 runs on mask_rng exactly as the plain DDPM's
reconstruction would run on it, pass 2 on resample_rng.

What differs from the paper:
  - The paper's mask thresholds the residual combined with a perceptual
    (LPIPS) map. genjax has no LPIPS that works without downloading
    pretrained weights, so the mask here uses the residual ONLY.
  - The official code thresholds images in [0, 1] (masking_threshold 0.13
    there); genjax's residuals are in [0, 2] for images in [-1, 1], so
    thresholds are twice as large for the same intensity difference.
  - The mask is not restricted to the brain (`reconstruct` does not see the
    brain mask); the detector masks the final residual as for every method.
  - One re-sampling pass (RePaint's resampling jumps are not taken).

The multi-t ensemble (config.anomaly.noise_levels) averages `reconstruct_at`
over the levels as for the plain DDPM (each level masks at its own t and
re-samples at resample_level); 'aggregate' has no single reconstruction to
stitch and is refused. `reconstruct.network_calls` counts both passes.
"""

import jax
import jax.numpy as jnp

from genjax.diffusion import samplers
from genjax.diffusion import schedules
from genjax.methods import ddpm

RESAMPLERS = ("ddpm", "ddim")


def anomaly_mask(residual, threshold, dilation):
  """The binary mask of candidate anomalies: dilate(residual > threshold).

  Args:
    residual: [B, H, W, C] residual map, e.g. |x - x_hat|.
    threshold: pixels strictly above it are marked.
    dilation: radius in pixels of the square structuring element (side
      2 dilation + 1); 0 is no dilation. The dilation stays within the
      image (pixels outside it count as unmarked).

  Returns:
    [B, H, W, C] float32 mask in {0, 1}.
  """
  dilation = int(dilation)
  if dilation < 0:
    raise ValueError(f"dilation={dilation} must be >= 0.")
  if residual.ndim != 4:
    raise ValueError(f"residual must be [B, H, W, C]; got shape "
                     f"{residual.shape}.")
  mask = (residual > threshold).astype(jnp.float32)
  if dilation == 0:
    return mask
  side = 2 * dilation + 1
  # Max-pooling of a {0, 1} map is its binary dilation; 'SAME' pads with
  # the init value 0, i.e. unmarked pixels outside the image.
  return jax.lax.reduce_window(mask, jnp.zeros((), mask.dtype), jax.lax.max,
                               (1, side, side, 1), (1, 1, 1, 1), "SAME")


def stitch(images, recon, mask):
  """m recon + (1 - m) images: the reconstruction inside the mask only.

  Args:
    images: [B, H, W, C] the inputs.
    recon: [B, H, W, C] their reconstructions.
    mask: [B, H, W, C] (or broadcastable) in {0, 1} (a soft mask blends).

  Returns:
    [B, H, W, C] the stitched images; exactly `images` where mask = 0 and
    exactly `recon` where mask = 1.
  """
  return mask * recon + (1.0 - mask) * images


def _resample_options(config):
  """(sampler, level, kwargs) of the re-sampling pass."""
  auto = config.autoddpm
  kwargs = ddpm.sampler_kwargs(auto.resample_sampler, config.anomaly)
  kwargs.setdefault("clip_x0", 1.0)  # As the plain DDPM's reconstruction.
  return auto.resample_sampler, auto.resample_level, kwargs


def reconstruct_at(config):
  """AutoDDPM's one-level reconstruction, for `ddpm.Variant.reconstruct_at`.

  Args:
    config: the config; reads config.autoddpm (threshold, dilation,
      resample_level, resample_sampler) and config.anomaly's sampler options.

  Returns:
    fn(denoiser, images, rng, level) -> x0 [B, H, W, C]: mask at `level`,
    stitch, re-sample (see the module docstring, also for the key split).
    Not clipped (the builder clips); equals `images` exactly outside the
    mask.
  """
  threshold = config.autoddpm.threshold
  dilation = config.autoddpm.dilation
  resampler, resample_level, resample_kwargs = _resample_options(config)

  def fn(denoiser, images, rng, level):
    mask_rng, resample_rng = jax.random.split(rng)
    recon = jnp.clip(denoiser.anoddpm(images, mask_rng, level), -1.0, 1.0)
    mask = anomaly_mask(jnp.abs(images - recon), threshold, dilation)
    return samplers.noise_and_denoise(
        denoiser.model, denoiser.schedule, resample_rng,
        stitch(images, recon, mask), resample_level, sampler=resampler,
        noise_fn=denoiser.noise_fn, prediction=denoiser.prediction,
        known=(images, 1.0 - mask), **resample_kwargs)

  return fn


def network_calls(config):
  """`ddpm.Variant.network_calls`: AnoDDPM's calls + the re-sampling pass's.

  Args:
    config: the config (see `reconstruct_at`).

  Returns:
    fn(level, anoddpm_calls) -> network evaluations per image of one
    `reconstruct_at` draw at `level`.
  """
  resampler, resample_level, resample_kwargs = _resample_options(config)
  t_count = config.diffusion.num_timesteps
  extra = samplers.network_calls(
      resampler, t_count,
      schedules.noise_level_to_index(resample_level, t_count),
      **resample_kwargs)
  return lambda level, calls: calls + extra


def validate(config):
  """The DDPM's checks, then AutoDDPM's own; raises ConfigError."""
  from genjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  ddpm.validate(config)
  auto = config.get("autoddpm")
  if auto is None:
    raise ConfigError("config.autoddpm is missing: use configs/autoddpm.py.")
  t = config.diffusion.num_timesteps
  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  if auto.resample_sampler not in RESAMPLERS:
    raise ConfigError(
        f"config.autoddpm.resample_sampler={auto.resample_sampler!r}: use "
        f"one of {', '.join(RESAMPLERS)} (the samplers with known-region "
        "replacement).")
  if not (is_int(auto.resample_level) and 1 <= auto.resample_level <= t):
    raise ConfigError(
        f"config.autoddpm.resample_level={auto.resample_level!r} must be an "
        f"integer in [1, {t}] (noising steps of config.diffusion."
        f"num_timesteps={t}).")
  if not (is_number(auto.threshold) and auto.threshold > 0):
    raise ConfigError(
        f"config.autoddpm.threshold={auto.threshold!r} must be > 0 (residual "
        "units, [0, 2] for images in [-1, 1]).")
  if not (is_int(auto.dilation) and auto.dilation >= 0):
    raise ConfigError(
        f"config.autoddpm.dilation={auto.dilation!r} must be an integer >= 0 "
        "(pixels).")
  if config.anomaly.sampler == "aggregate":
    raise ConfigError(
        "config.anomaly.sampler='aggregate' has no single reconstruction to "
        "stitch; AutoDDPM masks with 'ddpm', 'ddim', 'pc', 'ode' or "
        "'one_step'.")


def make(config):
  """AutoDDPM as a `Method`: the plain DDPM with its own reconstruction."""
  return ddpm.make(config, ddpm.Variant(reconstruct_at=reconstruct_at(config),
                                        network_calls=network_calls(config)))
