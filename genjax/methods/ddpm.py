"""Score-based diffusion (DDPM, VP discretisation) through the method interface.

Training minimises the denoising score-matching loss of a UNet; sampling runs
any registered sampler (ancestral DDPM, DDIM, predictor-corrector, probability
flow ODE) on the EMA parameters; `reconstruct` is AnoDDPM's pseudo-healthy
reconstruction: noise an image to `config.anomaly.noise_level` and denoise it.

Reconstruction variants for the detector (config.anomaly):
  sampler        'ddpm', 'ddim', 'pc', 'ode': denoise back step by step;
                 'one_step': x0 predicted from x_t in ONE network call
                 (`samplers.one_step_x0`, same x_t as the step-by-step run);
                 'aggregate': ANDi-style, the mean over the noise levels
                 range(*aggregate_range inclusive, aggregate_stride) of the
                 one-step x0 error |x0_hat(x_t) - x| (`samplers.
                 aggregate_x0_error`), one call per level.
  noise_levels   a tuple of levels (None: the single `noise_level`): the
                 multi-t ensemble of Behrendt et al. (t = 250, 500, 750);
                 the detector's pixel map is the MEAN of the single-level
                 residuals |x - x_hat_t|, its reconstruction the mean x_hat.
                 Every level uses the draw's own key, so x_t at each level
                 comes from the same noise (common random numbers) and the
                 ensemble's map equals exactly the mean of the maps of
                 single-level runs with the same seed.
The ensemble and 'aggregate' reach the detector through the Method's
`anomaly_score` hook (it takes the draw's rng and returns 'pixel' and
'reconstruction'); `reconstruct` alone returns the mean reconstruction.
`reconstruct.network_calls` is the UNet evaluations of one draw.

Variants. pDDPM (genjax/methods/pddpm.py), cDDPM (cddpm.py), AutoDDPM
(autoddpm.py) and the lesion-conditioned DDPM (lesion_ddpm.py) are this
module's `make(config, Variant(...))`: a variant changes only the network,
the pixels the training loss noises, one noise level's reconstruction, or
what the network is conditioned on (`Variant`), so that training, EMA,
sampling, the multi-t ensemble and the detector hook exist once. cDDPM and
AutoDDPM did not need the method interface to grow: `reconstruct(state,
images, rng)` already receives the image, which is all cDDPM's condition and
AutoDDPM's second pass (mask, stitch, re-sample) need. A condition derived
from other parts of a batch (a lesion mask) is `Variant.condition`; such a
variant's Method also has `generate(state, rng, condition, guidance_scale,
known=None)`, which samples given a condition with classifier-free guidance:
the guided prediction is u + s (c - u), u and c the network's unconditional
and conditional predictions. s = 1 is the conditional model, s = 0 the
unconditional one (each then takes one network call per step, and equals
that model exactly). The combination is affine with weights summing to 1, so
guiding the eps, x0 or v prediction gives the same eps (for every
config.diffusion.prediction).
"""

import functools
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from genjax import config as genjax_config
from genjax import optim
from genjax.diffusion import losses
from genjax.diffusion import samplers
from genjax.diffusion import schedules
from genjax.methods import Method
from genjax.nn import unet

# Which config.sample / config.anomaly fields each sampler takes.
_SAMPLER_OPTIONS = {
    "ddpm": ("num_steps", "clip_x0"),
    "ddim": ("num_steps", "eta", "clip_x0"),
    "pc": ("num_steps", "snr", "n_corrector_steps", "clip_x0"),
    "ode": ("num_steps", "clip_x0"),
    # Reconstruction only (config.anomaly.sampler), one call per level.
    "one_step": ("clip_x0",),
    "aggregate": ("clip_x0",),
}
RECONSTRUCTION_ONLY = ("one_step", "aggregate")


@flax.struct.dataclass
class State:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def make_model(config):
  m = config.model
  return unet.UNet(
      base_channels=m.base_channels, channel_mult=tuple(m.channel_mult),
      num_res_blocks=m.num_res_blocks,
      attention_resolutions=tuple(m.attention_resolutions),
      num_heads=m.num_heads, head_channels=m.head_channels, dropout=m.dropout,
      num_groups=m.num_groups, out_channels=1,
      dtype=genjax_config.compute_dtype(config))


def make_schedule(config):
  return schedules.make_schedule(config.diffusion.schedule,
                                 config.diffusion.num_timesteps)


def noise_fn(kind):
  """The forward-process noise named `kind` ('gaussian' or 'simplex')."""
  if kind == "gaussian":
    return losses.gaussian_noise
  if kind == "simplex":
    from genjax.diffusion import simplex  # pylint: disable=g-import-not-at-top
    return simplex.simplex_noise_fn()
  raise ValueError(f"noise={kind!r}: use 'gaussian' or 'simplex'.")


def sampler_kwargs(sampler, options):
  """The sampler's options from a config section, e.g. config.sample."""
  if sampler not in _SAMPLER_OPTIONS:
    raise ValueError(f"sampler={sampler!r}: use one of "
                     f"{', '.join(_SAMPLER_OPTIONS)}.")
  kwargs = {k: options[k] for k in _SAMPLER_OPTIONS[sampler] if k in options}
  if kwargs.get("num_steps") is None:
    kwargs.pop("num_steps", None)
    if sampler in ("pc", "ode"):
      raise ValueError(f"sampler {sampler!r} needs num_steps.")
  return kwargs


def noise_levels(config):
  """The noise levels a reconstruction visits (see the module docstring)."""
  an = config.anomaly
  if an.sampler == "aggregate":
    lo, hi = an.aggregate_range
    return tuple(range(lo, hi + 1, an.aggregate_stride))
  levels = an.get("noise_levels")
  return tuple(levels) if levels else (an.noise_level,)


def _validate_levels(config):
  """The anomaly section's noise levels; raises ConfigError."""
  from genjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  an, t = config.anomaly, config.diffusion.num_timesteps
  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  if not 1 <= an.noise_level <= t:
    raise ConfigError(
        f"config.anomaly.noise_level={an.noise_level} must be in "
        f"[1, {t}] (noising steps of config.diffusion.num_timesteps={t}).")
  levels = an.get("noise_levels")
  if levels is not None and not (
      isinstance(levels, (tuple, list)) and levels
      and all(is_int(n) and 1 <= n <= t for n in levels)):
    raise ConfigError(
        f"config.anomaly.noise_levels={levels!r}: None or a non-empty tuple "
        f"of noising steps in [1, {t}], e.g. (250, 500, 750).")
  if an.sampler != "aggregate":
    return
  if levels is not None:
    raise ConfigError(
        "config.anomaly.noise_levels is for the step-by-step and one_step "
        "samplers; sampler='aggregate' visits config.anomaly.aggregate_range "
        "with aggregate_stride. Set noise_levels=None.")
  r, stride = an.get("aggregate_range"), an.get("aggregate_stride")
  if not (isinstance(r, (tuple, list)) and len(r) == 2
          and all(is_int(n) for n in r) and 1 <= r[0] <= r[1] <= t):
    raise ConfigError(
        f"config.anomaly.aggregate_range={r!r}: (low, high) noising steps "
        f"with 1 <= low <= high <= {t}.")
  if not (is_int(stride) and stride >= 1):
    raise ConfigError(
        f"config.anomaly.aggregate_stride={stride!r}: an integer >= 1.")


def validate(config):
  """Config values the DDPM cannot work with; raises ConfigError."""
  from genjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  m, size = config.model, config.data.image_size
  factor = 2 ** (len(m.channel_mult) - 1)
  if size % factor:
    raise ConfigError(
        f"config.data.image_size={size} is not divisible by {factor}, which "
        f"the UNet's {len(m.channel_mult)} levels (config.model.channel_mult="
        f"{tuple(m.channel_mult)}) need.")
  channels = [int(round(m.base_channels * c)) for c in m.channel_mult]
  if any(c % m.num_groups for c in channels):
    raise ConfigError(
        f"config.model.num_groups={m.num_groups} must divide every level's "
        f"channels {channels}.")
  bad_levels = [a for a in m.attention_resolutions
                if not 0 <= a < len(m.channel_mult)]
  if bad_levels:
    raise ConfigError(
        f"config.model.attention_resolutions={tuple(m.attention_resolutions)}"
        f" are level indices in [0, {len(m.channel_mult)}); got {bad_levels}.")
  _validate_levels(config)
  for field in ("diffusion.noise", "anomaly.noise"):
    section, name = field.split(".")
    if config[section].get(name, "gaussian") not in ("gaussian", "simplex"):
      raise ConfigError(f"config.{field}={config[section][name]!r}: use "
                        "'gaussian' or 'simplex'.")
  for section in ("sample", "anomaly"):
    try:
      sampler_kwargs(config[section].sampler, config[section])
    except ValueError as e:
      raise ConfigError(f"config.{section}: {e}") from None
  if config.sample.sampler in RECONSTRUCTION_ONLY:
    raise ConfigError(
        f"config.sample.sampler={config.sample.sampler!r} reconstructs "
        "from a noised image; sampling from noise needs one of "
        f"{', '.join(s for s in _SAMPLER_OPTIONS if s not in RECONSTRUCTION_ONLY)}.")


class Denoiser(NamedTuple):
  """What one draw of a reconstruction works with (see `Variant`).

  `model(x_t, t)` is the network bound to the EMA parameters and, for a
  conditioned variant, to the images being reconstructed.
  """
  model: Callable[..., Any]
  schedule: Any
  prediction: str
  noise_fn: Callable[..., Any]      # config.anomaly.noise
  sampler: str                      # config.anomaly.sampler
  sampler_kwargs: dict

  def anoddpm(self, images, rng, level, **kwargs):
    """AnoDDPM's reconstruction from one noise level (not clipped).

    One network call ('one_step', `samplers.one_step_x0`) or denoising back
    step by step with the configured sampler; `kwargs` go to the sampler
    (e.g. `region` for one_step, `known` for ddpm/ddim).
    """
    if self.sampler == "one_step":
      return samplers.one_step_x0(self.model, self.schedule, rng, images, level,
                                  prediction=self.prediction,
                                  noise_fn=self.noise_fn,
                                  **self.sampler_kwargs, **kwargs)
    return samplers.noise_and_denoise(
        self.model, self.schedule, rng, images, level, sampler=self.sampler,
        noise_fn=self.noise_fn, prediction=self.prediction,
        **self.sampler_kwargs, **kwargs)


def anoddpm_at(denoiser, images, rng, level):
  """The plain DDPM's reconstruction from one level: `Denoiser.anoddpm`."""
  return denoiser.anoddpm(images, rng, level)


class Variant(NamedTuple):
  """What a DDPM variant (pDDPM, cDDPM, AutoDDPM, lesion_ddpm) changes.

  The rest is shared: each variant is one module that calls
  `make(config, Variant(...))`, so that training, EMA, sampling, the
  multi-t ensemble and the detector hook exist once.

  model           the Flax module (None: `make_model(config)`, the UNet).
  train_region    train_region(rng, shape) -> [B, H, W, 1] in {0, 1}: the
                  pixels the training loss noises and scores (pDDPM's patch);
                  None: the whole image.
  reconstruct_at  reconstruct_at(denoiser, images, rng, level) -> x0 (not
                  clipped): one noise level's reconstruction (None:
                  `anoddpm_at`). The ensemble over config.anomaly.noise_levels
                  averages it like the plain DDPM's.
  network_calls   network_calls(level, anoddpm_calls) -> UNet evaluations of
                  one `reconstruct_at` per image, given what AnoDDPM's takes
                  at that level (None: the same).
  condition       condition(batch, rng) -> pytree: the network's condition
                  derived from a batch dict (cDDPM: the image itself;
                  lesion_ddpm: a lesion mask and the healthy context around
                  it), with the variant's own condition dropout drawn from
                  `rng` in training (rng None: nothing dropped). The module
                  is then called as model(x, t, train=, condition=),
                  condition None meaning "no condition" (it must equal a
                  fully dropped one): the training batch's condition in
                  training, None when sampling from noise, and the
                  condition of the batch given to the Method's `generate`
                  (which exists only for such a variant).
  condition_reconstruct
                  True: `reconstruct` conditions on its input images
                  (condition({'image': images}, None); cDDPM); False: it
                  runs the unconditional network (lesion_ddpm).
  """
  model: Any = None
  train_region: Optional[Callable[..., Any]] = None
  reconstruct_at: Optional[Callable[..., Any]] = None
  network_calls: Optional[Callable[[int, int], int]] = None
  condition: Optional[Callable[..., Any]] = None
  condition_reconstruct: bool = False


def make(config, variant=Variant()):
  """The DDPM (or a `Variant` of it) as a `Method` (see genjax.methods)."""
  model = variant.model if variant.model is not None else make_model(config)
  schedule = make_schedule(config)
  tx = optim.make_optimizer(config.optim)
  prediction = config.diffusion.prediction
  ema_decay = config.diffusion.ema_decay
  accum_steps = config.train.grad_accum_steps
  # Configs saved before diffusion.noise existed trained with Gaussian noise.
  train_noise = noise_fn(config.diffusion.get("noise", "gaussian"))

  def apply(params, x, t, condition=None, *, train=False, rngs=None):
    if variant.condition is not None:
      return model.apply({"params": params}, x, t, train=train,
                         condition=condition, rngs=rngs)
    return model.apply({"params": params}, x, t, train=train, rngs=rngs)

  def model_fn(params, condition=None):
    return lambda x, t: apply(params, x, t, condition)

  def reconstruct_condition(images):
    if variant.condition is None or not variant.condition_reconstruct:
      return None
    return variant.condition({"image": images}, None)

  def init(rng, batch):
    images = batch["image"]
    t = jnp.zeros((images.shape[0],), jnp.int32)
    extra = ({"condition": variant.condition(batch, None)}
             if variant.condition is not None else {})
    params = model.init({"params": rng}, images, t, **extra)["params"]
    return State(step=jnp.zeros((), jnp.int32), params=params,
                 ema_params=params, opt_state=tx.init(params))

  def grad_fn(params, batch, rng):
    loss_rng, dropout_rng, region_rng, keep_rng = jax.random.split(rng, 4)
    images = batch["image"]
    region = (variant.train_region(region_rng, images.shape)
              if variant.train_region is not None else None)
    condition = (variant.condition(batch, keep_rng)
                 if variant.condition is not None else None)

    def loss_fn(params):
      net = lambda x, t: apply(params, x, t, condition, train=True,
                               rngs={"dropout": dropout_rng})
      per_example = losses.denoising_loss(
          net, schedule, images, loss_rng, prediction=prediction,
          weighting=config.diffusion.weighting, noise_fn=train_noise,
          region=region)
      return jnp.mean(per_example)

    return jax.value_and_grad(loss_fn)(params), ()

  def train_step(state, batch, rng):
    (loss, grads), _ = optim.accumulate_gradients(
        functools.partial(grad_fn, state.params), batch, rng, accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = State(
        step=state.step + 1, params=params,
        ema_params=optim.ema_update(state.ema_params, params, ema_decay),
        opt_state=opt_state)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
               "param_norm": optax.global_norm(params)}
    return new_state, metrics

  sample_cfg = config.sample
  sample_kwargs = sampler_kwargs(sample_cfg.sampler, sample_cfg)

  def draw(net, rng, n, **extra):
    """n images from noise with config.sample's sampler and network `net`."""
    size = config.data.image_size
    prior_rng, rng = jax.random.split(rng)
    # A model trained on simplex noise starts from it and adds it per step.
    x_T = train_noise(prior_rng, (n, size, size, 1))
    x0 = samplers.get_sampler(sample_cfg.sampler)(
        net, schedule, rng, x_T, None, prediction=prediction,
        noise_fn=train_noise, **sample_kwargs, **extra)
    return jnp.clip(x0, -1.0, 1.0)

  def sample(state, rng, n):
    # A conditioned variant samples unconditionally (condition None).
    return draw(model_fn(state.ema_params), rng, n)

  def generate(state, rng, condition, guidance_scale=1.0, known=None):
    """Samples given a condition, with classifier-free guidance.

    Args:
      state: the DDPM state (its EMA parameters are used).
      rng: a PRNG key.
      condition: a batch dict [n, ...] holding what `Variant.condition`
        reads (lesion_ddpm: 'mask', and 'image' for the healthy context).
      guidance_scale: s of u + s (c - u) (see the module docstring); a
        Python number 1 or 0 makes one network call per step.
      known: optional (x_known [n, H, W, 1], keep [n, H, W, 1] in {0, 1}):
        RePaint-style inpainting ('ddpm' and 'ddim' samplers): the output
        equals x_known exactly where keep = 1.

    Returns:
      [n, H, W, 1] images in [-1, 1].
    """
    if known is not None and sample_cfg.sampler not in ("ddpm", "ddim"):
      raise ValueError(
          f"config.sample.sampler={sample_cfg.sampler!r} cannot inpaint "
          "(`known`); use 'ddpm' or 'ddim'.")
    cond = variant.condition(condition, None)
    n = jax.tree_util.tree_leaves(condition)[0].shape[0]
    conditional = model_fn(state.ema_params, condition=cond)
    unconditional = model_fn(state.ema_params)
    static = isinstance(guidance_scale, (int, float))
    if static and guidance_scale == 1:
      net = conditional
    elif static and guidance_scale == 0:
      net = unconditional
    else:
      def net(x, t):
        u = unconditional(x, t)
        return u + guidance_scale * (conditional(x, t) - u)
    return draw(net, rng, n, **({} if known is None else {"known": known}))

  anomaly = config.anomaly
  recon_sampler = anomaly.sampler
  recon_kwargs = sampler_kwargs(recon_sampler, anomaly)
  recon_kwargs.setdefault("clip_x0", 1.0)
  recon_noise = noise_fn(anomaly.noise)
  levels = noise_levels(config)
  level_fn = variant.reconstruct_at or anoddpm_at

  def denoiser(state, images):
    return Denoiser(model=model_fn(state.ema_params,
                                   reconstruct_condition(images)),
                    schedule=schedule, prediction=prediction,
                    noise_fn=recon_noise, sampler=recon_sampler,
                    sampler_kwargs=recon_kwargs)

  def reconstruct_at(state, images, rng, level):
    """One noise level's reconstruction (clipped to [-1, 1])."""
    return jnp.clip(level_fn(denoiser(state, images), images, rng, level),
                    -1.0, 1.0)

  def ensemble(state, images, rng):
    """(mean reconstruction, mean residual) over the levels."""
    if recon_sampler == "aggregate":
      x0, error = samplers.aggregate_x0_error(
          model_fn(state.ema_params, reconstruct_condition(images)),
          schedule, rng, images, levels,
          prediction=prediction, noise_fn=recon_noise, **recon_kwargs)
      return jnp.clip(x0, -1.0, 1.0), error
    # The same key at every level (see the module docstring).
    recons = [reconstruct_at(state, images, rng, n) for n in levels]
    return (sum(recons) / len(recons),
            sum(jnp.abs(images - r) for r in recons) / len(recons))

  def reconstruct(state, images, rng):
    if len(levels) == 1 and recon_sampler != "aggregate":
      return reconstruct_at(state, images, rng, levels[0])
    return ensemble(state, images, rng)[0]

  def ensemble_score(state, images, recon, rng):
    # The detector's hook: recomputed from the draw's key, so the detector
    # uses this reconstruction and jit drops `reconstruct`'s unused one.
    del recon
    mean_recon, pixel = ensemble(state, images, rng)
    return {"pixel": pixel, "reconstruction": mean_recon}

  t_count = config.diffusion.num_timesteps
  if recon_sampler == "aggregate":
    reconstruct.network_calls = len(levels)
  else:
    calls = lambda n: samplers.network_calls(
        recon_sampler, t_count, schedules.noise_level_to_index(n, t_count),
        **recon_kwargs)
    if variant.network_calls is not None:
      reconstruct.network_calls = sum(
          variant.network_calls(n, calls(n)) for n in levels)
    else:
      reconstruct.network_calls = sum(calls(n) for n in levels)
  hook = (ensemble_score if len(levels) > 1 or recon_sampler == "aggregate"
          else None)

  return Method(init=init, train_step=train_step, sample=sample,
                reconstruct=reconstruct, anomaly_score=hook,
                generate=generate if variant.condition is not None else None)
