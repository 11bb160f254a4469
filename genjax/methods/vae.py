"""The variational autoencoder through the method interface.

Training minimises, per image, the negative ELBO with the report's fixes for
blur and healthy bias as switches (config.vae):

  loss = recon + kl_weight(step) * KL(q(z|x) || N(0, I))
         + ssim_weight * H*W * (1 - SSIM(x, x̂))
         + perceptual_weight * H*W * sum_l mean_l d(φ_l(x), φ_l(x̂))

  recon       sum over pixels of w(p) * nll(x(p) | x̂(p)), nll one of
                'l2'        (x - x̂)²   (Gaussian, σ² = 1/2, no constant; the
                            configs' default: configs/vae.py says why)
                'l1'        |x - x̂|    (Laplace, b = 1, no constant)
                'gaussian'  (x - x̂)² / 2σ² + log σ + log(2π)/2, with one σ
                            per `scale_mode`: 'fixed' (`scale`), 'learned'
                            (a parameter, initialised to `scale`) or
                            'optimal' (the batch's maximum-likelihood σ in
                            closed form, σ² = weighted mean of (x - x̂)²: the
                            "optimal σ-VAE" of Rybkin et al., 2021. A learned
                            σ converges to it, but with Adam's small steps
                            it lags the reconstruction error by thousands of
                            steps, far longer than a :cpu run)
  w(p)        `lesion_weight` inside batch['mask'], 1 elsewhere (train on
              train_mixed to have lesions; 1.0 switches it off)
  kl_weight   `beta` * min(1, step / kl_warmup_steps) (linear warm-up; 0
              steps = no warm-up)
  SSIM        `genjax.metrics.image.ssim` (Gaussian window σ = 1.5, 11×11,
              data range 2, mean over the valid region: skimage's
              structural_similarity with gaussian_weights=True)
  φ_l         the feature maps of `genjax.nn.features` (config.vae.features);
              d is the squared ('l2') or absolute ('l1') difference

The SSIM and perceptual terms are scaled by the pixel count H*W so that they
are per-image sums like `recon`, and a weight means the same at 32 and 128 px.
All terms are per-image, averaged over the batch (with gradient accumulation,
config.train.grad_accum_steps, over each micro-batch and then over the
micro-batches: the same mean, except that the 'optimal' σ is then the
micro-batch's). `reconstruct` decodes the posterior mean (deterministic,
for anomaly detection). `sample` decodes latents to the mean of p(x|z),
drawn (config.sample.prior) from

  'standard'   the prior N(0, temperature² I) of the ELBO;
  'aggregate'  a Gaussian fitted to the aggregate posterior
               q(z) = E_x q(z|x): mean E[mu], covariance
               Cov(mu) + E[diag σ²] (full for dense latents, diagonal for
               spatial ones), from running moments of the training batches
               kept in the state (momentum `vae.posterior_momentum`), with
               the spread scaled by `temperature`. This is the ex-post
               density estimation of Ghosh et al. (2020), cf. the two-stage
               VAE of Dai & Wipf (2019): where q(z) does not fill N(0, I)
               ("prior holes"; on the phantom the codes are strongly
               correlated, RESULTS.md), prior draws decode to blobs while
               draws from q(z) decode to brains.

Both are clipped to [-1, 1].

A conditional VAE (genjax.methods.lesion_vae) passes `make` a
`Conditioning`: condition channels that the encoder sees beside x and the
decoder at every scale (genjax.nn.vae). The objective is the same ELBO, now
of p(x | z, c) with q(z | x, c); `sample` and `reconstruct` decode under the
hook's default condition, and the Method gains `generate`: prior (or
aggregate) latents decoded under a given condition, guidance scale 1 only (a
VAE has no score to guide), `known` = (x, keep) compositing x where keep = 1.
Without a Conditioning everything above is unchanged.
"""

import math
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from genjax import config as genjax_config
from genjax import optim
from genjax.config import ConfigError
from genjax.methods import Method
from genjax.metrics import image as image_metrics
from genjax.nn import features as features_lib
from genjax.nn import vae as vae_nn

LIKELIHOODS = ("l2", "l1", "gaussian")
SCALE_MODES = ("fixed", "learned", "optimal")
DISTANCES = ("l2", "l1")
# Learned and optimal Gaussian scales are floored here: on exactly
# reconstructable images σ would otherwise run to 0 and the loss to -inf.
MIN_SCALE = 1e-3


PRIORS = ("standard", "aggregate")


class Conditioning(NamedTuple):
  """What makes the VAE conditional (genjax.methods.lesion_vae).

  of_batch   of_batch(batch, rng) -> [B, H, W, C] float32 condition
             channels of a batch dict: the training batch's, with the
             hook's own condition dropout drawn from `rng`; rng None (init,
             `generate`'s condition batch): nothing dropped.
  default    default(n) -> [n, H, W, C]: the condition under which `sample`
             draws and `reconstruct` decodes (lesion_vae: an empty lesion
             mask and no context, i.e. a healthy slice).
  """
  of_batch: Callable[..., Any]
  default: Callable[[int], Any]


@flax.struct.dataclass
class State:
  step: jax.Array
  params: Any  # {'vae': ..., 'log_scale': [] (learned Gaussian scale only)}
  opt_state: Any
  # Running moments of the aggregate posterior q(z) = E_x q(z|x) over the
  # training batches (see `posterior_moments`), for sample.prior='aggregate'.
  posterior: Any


# --- The aggregate posterior (ex-post density estimation) --------------------


def posterior_moments(mu, logvar, full_covariance):
  """The batch's moments of q(z) = mean over x of N(mu(x), diag σ²(x)).

  Args:
    mu: [B, ...] posterior means.
    logvar: [B, ...] posterior log-variances.
    full_covariance: True: E[mu mu^T] as a [D, D] matrix (dense latents);
      False: its diagonal only (spatial latents, where D is large).

  Returns:
    {'mean': [D] E[mu], 'second': [D, D] or [D] E[mu mu^T],
     'var': [D] E[σ²]}, D = the latent size, means over the batch.
  """
  mu = mu.reshape(mu.shape[0], -1).astype(jnp.float32)
  var = jnp.exp(logvar.reshape(logvar.shape[0], -1).astype(jnp.float32))
  second = (mu.T @ mu / mu.shape[0] if full_covariance
            else jnp.mean(jnp.square(mu), axis=0))
  return {"mean": jnp.mean(mu, axis=0), "second": second,
          "var": jnp.mean(var, axis=0)}


def standard_moments(dim, full_covariance):
  """The moments of N(0, I): where the running moments start."""
  second = (jnp.zeros((dim, dim), jnp.float32) if full_covariance
            else jnp.zeros((dim,), jnp.float32))
  return {"mean": jnp.zeros((dim,), jnp.float32), "second": second,
          "var": jnp.ones((dim,), jnp.float32)}


def aggregate_covariance(moments):
  """Cov of q(z): E[mu mu^T] - E[mu] E[mu]^T + diag E[σ²] ([D, D] or [D])."""
  m, second = moments["mean"], moments["second"]
  if second.ndim == 2:
    return second - jnp.outer(m, m) + jnp.diag(moments["var"])
  return second - jnp.square(m) + moments["var"]


def sample_aggregate(rng, moments, n, temperature=1.0):
  """n draws of the Gaussian fitted to q(z): mean + temperature * L eps.

  Args:
    rng: PRNG key.
    moments: `posterior_moments`-shaped running moments.
    n: number of draws.
    temperature: scales the spread around the mean.

  Returns:
    [n, D] latents.
  """
  cov = aggregate_covariance(moments)
  eps = jax.random.normal(rng, (n, moments["mean"].shape[0]))
  if cov.ndim == 2:
    dim = cov.shape[0]
    # Symmetrise and add a jitter: float32 rounding of E[mu mu^T] - m m^T
    # can leave tiny negative eigenvalues where q(z) is nearly degenerate.
    cov = 0.5 * (cov + cov.T) + 1e-5 * jnp.eye(dim)
    spread = eps @ jnp.linalg.cholesky(cov).T
  else:
    spread = eps * jnp.sqrt(jnp.maximum(cov, 1e-10))
  return moments["mean"] + temperature * spread


# --- The pieces of the objective (pure, per example) -------------------------


def kl_divergence(mu, logvar):
  """KL(N(mu, exp(logvar)) || N(0, I)) in closed form, summed per example.

  Args:
    mu: [B, ...] posterior means.
    logvar: [B, ...] posterior log-variances.

  Returns:
    [B] nats.
  """
  kl = 0.5 * (jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl.reshape(kl.shape[0], -1), axis=1)


def kl_weight(step, beta, warmup_steps):
  """beta * min(1, step / warmup_steps); beta when warmup_steps is 0."""
  if warmup_steps <= 0:
    return jnp.asarray(beta, jnp.float32)
  ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)
  return beta * ramp


def pixel_weights(mask, lesion_weight):
  """`lesion_weight` where mask > 0.5, 1 elsewhere. [B,H,W,1] -> same."""
  return jnp.where(mask > 0.5, jnp.float32(lesion_weight), jnp.float32(1.0))


def reconstruction_nll(x, x_hat, likelihood, log_scale=None, weights=None):
  """Weighted per-pixel negative log-likelihood, summed per example.

  Args:
    x: [B, H, W, C] data.
    x_hat: [B, H, W, C] decoder means.
    likelihood: 'l2', 'l1' or 'gaussian' (see the module docstring).
    log_scale: scalar log σ ('gaussian' only).
    weights: [B, H, W, C] per-pixel weights, or None for 1.

  Returns:
    [B].
  """
  diff = x - x_hat
  if likelihood == "l2":
    nll = jnp.square(diff)
  elif likelihood == "l1":
    nll = jnp.abs(diff)
  elif likelihood == "gaussian":
    nll = (0.5 * jnp.square(diff) * jnp.exp(-2.0 * log_scale) + log_scale
           + 0.5 * math.log(2.0 * math.pi))
  else:
    raise ValueError(f"config.vae.likelihood={likelihood!r}: use one of "
                     f"{LIKELIHOODS}.")
  if weights is not None:
    nll = nll * weights
  return jnp.sum(nll.reshape(nll.shape[0], -1), axis=1)


def optimal_log_scale(x, x_hat, weights=None):
  """log σ maximising the batch's (weighted) Gaussian likelihood.

  σ² = sum w (x - x̂)² / sum w over the whole batch, floored at MIN_SCALE;
  no gradient flows through it (at the optimum, d loss / d σ = 0 anyway).

  Args:
    x: [B, H, W, C].
    x_hat: [B, H, W, C].
    weights: [B, H, W, C] or None.

  Returns:
    A scalar.
  """
  sq = jnp.square(jax.lax.stop_gradient(x - x_hat))
  if weights is None:
    var = jnp.mean(sq)
  else:
    var = jnp.sum(weights * sq) / jnp.sum(weights)
  return 0.5 * jnp.log(jnp.maximum(var, MIN_SCALE ** 2))


def feature_distance(features_x, features_y, distance="l2"):
  """Sum over feature maps of the mean (over h, w, c) difference, per example.

  Args:
    features_x: list of [B, h_l, w_l, C_l].
    features_y: the same shapes.
    distance: 'l2' (squared) or 'l1' (absolute).

  Returns:
    [B].
  """
  if distance not in DISTANCES:
    raise ValueError(f"config.vae.perceptual_distance={distance!r}: use one of "
                     f"{DISTANCES}.")
  d = jnp.square if distance == "l2" else jnp.abs
  total = 0.0
  for fx, fy in zip(features_x, features_y):
    total = total + jnp.mean(d(fx - fy).reshape(fx.shape[0], -1), axis=1)
  return total


def objective(x, x_hat, mu, logvar, vae_config, *, step, mask=None,
              log_scale=None, feature_fn=None):
  """The training loss of one batch and its pieces (see the module docstring).

  Args:
    x: [B, H, W, 1] images.
    x_hat: [B, H, W, 1] decoder means of z ~ q(z|x).
    mu: [B, ...] posterior means.
    logvar: [B, ...] posterior log-variances.
    vae_config: `config.vae` (read in Python: static under jit).
    step: the optimiser step (scalar), for the KL warm-up.
    mask: [B, H, W, 1] lesion masks, or None (then lesion_weight is unused).
    log_scale: scalar log σ of the Gaussian likelihood; None with
      scale_mode 'optimal' (computed here from the batch).
    feature_fn: the perceptual feature network, when perceptual_weight > 0.

  Returns:
    (loss, terms): the scalar batch mean, and a dict of scalar batch means
    ('recon', 'kl', 'kl_weight', 'scale' for the Gaussian likelihood, and
    'ssim' / 'perceptual' when used).
  """
  c = vae_config
  weights = None
  if c.lesion_weight != 1.0 and mask is not None:
    weights = pixel_weights(mask, c.lesion_weight)
  if c.likelihood == "gaussian" and log_scale is None:
    log_scale = optimal_log_scale(x, x_hat, weights)
  recon = reconstruction_nll(x, x_hat, c.likelihood, log_scale, weights)
  kl = kl_divergence(mu, logvar)
  beta_t = kl_weight(step, c.beta, c.kl_warmup_steps)
  per_example = recon + beta_t * kl
  terms = {"recon": jnp.mean(recon), "kl": jnp.mean(kl), "kl_weight": beta_t}
  if c.likelihood == "gaussian":
    terms["scale"] = jnp.exp(log_scale)
  num_pixels = x.shape[1] * x.shape[2]
  if c.ssim_weight:
    s = image_metrics.ssim(x, x_hat, data_range=2.0)
    per_example = per_example + c.ssim_weight * num_pixels * (1.0 - s)
    terms["ssim"] = jnp.mean(s)
  if c.perceptual_weight:
    p = feature_distance(feature_fn(x), feature_fn(x_hat),
                         c.perceptual_distance)
    per_example = per_example + c.perceptual_weight * num_pixels * p
    terms["perceptual"] = jnp.mean(p)
  return jnp.mean(per_example), terms


# --- The method ---------------------------------------------------------------


def make_model(config):
  m = config.model
  return vae_nn.VAE(channels=tuple(m.channels),
                    image_size=config.data.image_size, latent=m.latent,
                    latent_dim=m.latent_dim,
                    blocks_per_level=m.blocks_per_level,
                    num_groups=m.num_groups,
                    dtype=genjax_config.compute_dtype(config))


def check_config(config):
  """Checks the VAE's config sections before anything is built or compiled.

  Args:
    config: the full config.

  Raises:
    ConfigError (a ValueError) naming the field, also for a 'pretrained'
    feature network whose weights file is missing or malformed.
  """
  c = config.vae

  def check(ok, field, message):
    if not ok:
      raise ConfigError(f"config.{field}={_get(config, field)!r}: {message}")

  check(c.likelihood in LIKELIHOODS, "vae.likelihood", f"use one of "
        f"{LIKELIHOODS}.")
  check(c.scale_mode in SCALE_MODES, "vae.scale_mode",
        f"use one of {SCALE_MODES}.")
  check(c.scale > 0, "vae.scale", "the Gaussian σ (or its initial value when "
        "learned) must be > 0.")
  for name in ("beta", "ssim_weight", "perceptual_weight", "kl_warmup_steps"):
    check(c[name] >= 0, f"vae.{name}", "must be >= 0.")
  check(c.lesion_weight > 0, "vae.lesion_weight",
        "must be > 0 (1.0 = no lesion weighting).")
  # The healthy split has empty lesion masks: the weight would do nothing.
  check(c.lesion_weight == 1.0 or config.data.train_split != "train",
        "vae.lesion_weight", "weights lesion pixels, but data.train_split="
        "'train' holds healthy slices only. Train on "
        "--config.data.train_split=train_mixed, or set it to 1.0.")
  check(c.perceptual_distance in DISTANCES, "vae.perceptual_distance",
        f"use one of {DISTANCES}.")
  check(not c.ssim_weight or config.data.image_size >= 11, "vae.ssim_weight",
        f"SSIM needs images of at least 11 px (its window); "
        f"config.data.image_size={config.data.image_size}.")
  check(config.sample.temperature > 0, "sample.temperature", "must be > 0.")
  check(config.sample.prior in PRIORS, "sample.prior",
        f"use one of {PRIORS}.")
  check(0.0 <= c.posterior_momentum < 1.0, "vae.posterior_momentum",
        "must be in [0, 1).")
  m = config.model
  try:
    vae_nn.check_architecture(config.data.image_size, tuple(m.channels),
                              m.latent, m.num_groups)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if c.perceptual_weight:
    network = c.features.network
    check(network in features_lib.NETWORKS, "vae.features.network",
          f"use one of {features_lib.NETWORKS}.")
    if network == "pretrained":
      try:
        features_lib.load_conv_stack(c.features.weights_path)
      except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _get(config, field):
  for part in field.split("."):
    config = config[part]
  return config


def make_loss(config, conditioning=None):
  """The training objective of `config` as a function of the parameters.

  Args:
    config: the full config (model, vae, data sections).
    conditioning: optional `Conditioning` (a conditional VAE).

  Returns:
    loss(params, batch, rng, step) -> (scalar loss, dict of scalar terms),
    pure; `rng` draws z (with a conditioning, z_rng, condition_rng =
    jax.random.split(rng): z and the condition dropout), `step` drives the
    KL warm-up. `make`'s train_step differentiates it; it is public so that
    ablations and tests can evaluate the objective of several configs on one
    batch.
  """
  loss_and_moments = _make_loss(config, conditioning)

  def loss(params, batch, rng, step):
    value, (terms, _) = loss_and_moments(params, batch, rng, step)
    return value, terms

  return loss


def _make_loss(config, conditioning=None):
  """`make_loss`, whose aux also holds the batch's `posterior_moments`."""
  check_config(config)
  full_covariance = config.model.latent == "dense"
  model = make_model(config)
  vae_cfg = config.vae
  gaussian = vae_cfg.likelihood == "gaussian"
  feature_fn = (features_lib.make(vae_cfg.features)
                if vae_cfg.perceptual_weight else None)

  def log_scale_of(params):
    if gaussian and vae_cfg.scale_mode == "learned":
      return jnp.maximum(params["log_scale"], math.log(MIN_SCALE))
    if gaussian and vae_cfg.scale_mode == "fixed":
      return jnp.float32(math.log(vae_cfg.scale))
    return None  # 'optimal' (computed in `objective`) or not Gaussian.

  def loss(params, batch, rng, step):
    x = batch["image"]
    condition = None
    if conditioning is not None:
      rng, condition_rng = jax.random.split(rng)
      condition = conditioning.of_batch(batch, condition_rng)
    x_hat, mu, logvar = model.apply({"params": params["vae"]}, x, rng,
                                    condition)
    value, terms = objective(x, x_hat, mu, logvar, vae_cfg, step=step,
                             mask=batch.get("mask"),
                             log_scale=log_scale_of(params),
                             feature_fn=feature_fn)
    moments = jax.lax.stop_gradient(
        posterior_moments(mu, logvar, full_covariance))
    return value, (terms, moments)

  return loss


def make(config, conditioning=None):
  """The VAE as a `Method` (see genjax.methods).

  Args:
    config: the full config.
    conditioning: optional `Conditioning`: a conditional VAE, whose Method
      also has `generate` (see the module docstring).

  Returns:
    The Method.
  """
  loss_fn = _make_loss(config, conditioning)
  model = make_model(config)
  tx = optim.make_optimizer(config.optim)
  vae_cfg = config.vae
  learn_scale = (vae_cfg.likelihood == "gaussian"
                 and vae_cfg.scale_mode == "learned")
  z_shape = vae_nn.latent_shape(config.data.image_size,
                                tuple(config.model.channels),
                                config.model.latent, config.model.latent_dim)
  temperature = config.sample.temperature
  prior = config.sample.prior
  full_covariance = config.model.latent == "dense"
  latent_size = math.prod(z_shape)
  momentum = vae_cfg.posterior_momentum
  accum_steps = config.train.grad_accum_steps

  def init(rng, batch):
    model_rng, z_rng = jax.random.split(rng)
    condition = (None if conditioning is None
                 else conditioning.of_batch(batch, None))
    params = {"vae": model.init({"params": model_rng}, batch["image"],
                                z_rng, condition)["params"]}
    if learn_scale:
      params["log_scale"] = jnp.float32(math.log(vae_cfg.scale))
    return State(step=jnp.zeros((), jnp.int32), params=params,
                 opt_state=tx.init(params),
                 posterior=standard_moments(latent_size, full_covariance))

  def grad_fn(batch, rng, params, step):
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng,
                                                     step), ()

  def train_step(state, batch, rng):
    ((loss, (terms, moments)), grads), _ = optim.accumulate_gradients(
        lambda b, r: grad_fn(b, r, state.params, state.step), batch, rng,
        accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    posterior = jax.tree.map(lambda old, new: momentum * old
                             + (1.0 - momentum) * new, state.posterior,
                             moments)
    metrics = {"loss": loss, **terms, "grad_norm": optax.global_norm(grads),
               "param_norm": optax.global_norm(params)}
    return State(step=state.step + 1, params=params, opt_state=opt_state,
                 posterior=posterior), metrics

  def decode(params, z, condition=None):
    return model.apply({"params": params["vae"]}, z, condition,
                       method=vae_nn.VAE.decode)

  def default_condition(n):
    return None if conditioning is None else conditioning.default(n)

  def draw(state, rng, n, condition):
    if prior == "aggregate":
      z = sample_aggregate(rng, state.posterior, n, temperature)
      z = z.reshape(n, *z_shape)
    else:
      z = temperature * jax.random.normal(rng, (n, *z_shape))
    return jnp.clip(decode(state.params, z, condition), -1.0, 1.0)

  def sample(state, rng, n):
    return draw(state, rng, n, default_condition(n))

  def reconstruct(state, images, rng):
    del rng  # Decoding the posterior mean is deterministic.
    condition = default_condition(images.shape[0])
    mu, _ = model.apply({"params": state.params["vae"]}, images, condition,
                        method=vae_nn.VAE.encode)
    return jnp.clip(decode(state.params, mu, condition), -1.0, 1.0)

  def generate(state, rng, condition, guidance_scale=1.0, known=None):
    """Decodes prior latents under a condition; `known` composites.

    Args:
      state: the VAE state.
      rng: a PRNG key (the latents).
      condition: a batch dict of n examples that `Conditioning.of_batch`
        reads (lesion_vae: 'mask', and 'image' for the healthy context).
      guidance_scale: must be 1: a VAE has no score to guide, and this one
        trains no unconditional model to contrast with.
      known: optional (x_known [n, H, W, 1], keep [n, H, W, 1] in {0, 1}):
        the output is keep * x_known + (1 - keep) * decoded, x_known exactly
        where keep = 1.

    Returns:
      [n, H, W, 1] images in [-1, 1].

    Raises:
      ValueError: a guidance scale other than the Python number 1.
    """
    if (isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, (int, float))
        or guidance_scale != 1):
      raise ValueError(
          f"guidance_scale={guidance_scale!r}: the conditional VAE decodes "
          "under its condition and has no classifier-free guidance; use 1.0 "
          "(experiments/synthesize.py: --guidance=1 or none).")
    channels = conditioning.of_batch(condition, None)
    x = draw(state, rng, channels.shape[0], channels)
    if known is None:
      return x
    x_known, keep = known
    keep = jnp.asarray(keep, jnp.float32)
    blend = keep * x_known + (1.0 - keep) * x
    # Exactly x_known where keep = 1, whatever the decoder gave there.
    return jnp.where(keep == 1.0, x_known, blend)

  return Method(init=init, train_step=train_step, sample=sample,
                reconstruct=reconstruct,
                generate=None if conditioning is None else generate)


def validate(config):
  """The VAE's config checks (genjax.methods.validate calls this)."""
  check_config(config)
