"""A GAN with an f-AnoGAN encoder, through the method interface.

One loop step (`train_step`) is, by phase:

  step < gan.gan_steps     (phase 0, the GAN) `gan.n_critic` discriminator
                           updates, each on the *same* real batch with fresh
                           noise, then one generator update and the EMA of the
                           generator's parameters.
  step >= gan.gan_steps    (phase 1, the encoder) one encoder update of
                           f-AnoGAN's izi_f loss, generator and discriminator
                           frozen:
                             x -> E -> z -> G_ema(z) -> x'
                             mean (x - x')^2 + kappa mean (f(x) - f(x'))^2
                           with f the discriminator's last hidden layer
                           (means over pixels and over features).

so `train.num_steps = gan.gan_steps + gan.encoder_steps` and the generic loop
needs to know nothing about phases. The phase is chosen by `jnp.where` on
`state.step`, not `lax.cond` (see `train_step` for why); the idle phase's
metrics are 0 in `train_step`'s output, `phase` (0 or 1) says which one ran,
and `Method.reported` tells the loop not to log the idle phase's metrics
(so the D loss curve ends where the encoder phase starts, instead of
dropping to 0).

Losses (`gan.loss`): 'nonsaturating', 'hinge', 'wgan_gp' (the WGAN critic
loss; its gradient penalty is `gan.gp_weight`, which may also be added to the
others), plus R1 (`gan.r1_gamma`). Two optimisers with their own learning
rates (TTUR: `optim_g`, `optim_d`) and a third for the encoder (`optim_e`).

`sample` draws from the EMA generator; `reconstruct` is G_ema(E(x)). The
image-level anomaly score adds the discriminator-feature residual:

  score = anomaly_score(config, state, images, recon)   # [B], f-AnoGAN's A(x)
  # = mean((x - recon)^2) + config.anomaly.feature_weight
  #   * feature_residual(config, state, images, recon)

and is handed to genjax.anomaly as the Method's optional `anomaly_score` hook
(its 'slice' score) when `config.anomaly.fanogan_score` is True; pixel maps
stay the detector's |x - recon|.

Gradient accumulation (`train.grad_accum_steps` = k) is exact here too: each
of the n_critic D updates averages D's gradients over the k micro-batches of
the real batch (fresh fakes for each) before D's optimiser steps once, and the
G (or E) update then averages its gradients over the k micro-batches against
that updated D, so the D/G alternation is the one of k = 1. The spectral-norm
power iteration depends only on D's kernels, so every micro-batch computes the
same new statistics.

Mode collapse shows up in `diversity(config, state, rng, real_images)`:
mean pairwise MS-SSIM of samples vs. of real slices (higher = less diverse).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from genjax import config as genjax_config
from genjax import optim
from genjax.methods import Method
from genjax.nn import gan as gan_nn

LOSSES = ("nonsaturating", "hinge", "wgan_gp")

_GAN_METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "gp", "r1",
                "d_grad_norm", "g_grad_norm", "d_param_norm", "g_param_norm")


@flax.struct.dataclass
class State:
  """Everything the GAN and its encoder train.

  `d_stats` is the discriminator's 'batch_stats' collection: the
  spectral-norm power-iteration vectors (`u`, `sigma`); {} without SN.
  """
  step: jax.Array
  g_params: Any
  g_ema_params: Any
  d_params: Any
  d_stats: Any
  e_params: Any
  g_opt_state: Any
  d_opt_state: Any
  e_opt_state: Any


# --- Losses and penalties (pure; tested against closed forms) ---------------


def d_loss_fn(kind, real_logits, fake_logits):
  """The discriminator's loss (to minimise).

  Args:
    kind: 'nonsaturating', 'hinge' or 'wgan_gp'.
    real_logits: [B] D(x) on real images.
    fake_logits: [B] D(G(z)).

  Returns:
    A scalar: nonsaturating E[softplus(-r)] + E[softplus(f)]
    (= -log sigmoid(r) - log(1 - sigmoid(f))); hinge E[relu(1 - r)] +
    E[relu(1 + f)]; wgan_gp E[f] - E[r].
  """
  if kind == "nonsaturating":
    return (jnp.mean(jax.nn.softplus(-real_logits))
            + jnp.mean(jax.nn.softplus(fake_logits)))
  if kind == "hinge":
    return (jnp.mean(jax.nn.relu(1.0 - real_logits))
            + jnp.mean(jax.nn.relu(1.0 + fake_logits)))
  if kind == "wgan_gp":
    return jnp.mean(fake_logits) - jnp.mean(real_logits)
  raise ValueError(f"config.gan.loss={kind!r}: use one of {', '.join(LOSSES)}.")


def g_loss_fn(kind, fake_logits):
  """The generator's loss (to minimise).

  Args:
    kind: 'nonsaturating', 'hinge' or 'wgan_gp'.
    fake_logits: [B] D(G(z)).

  Returns:
    A scalar: nonsaturating E[softplus(-f)] (= -log sigmoid(f)); hinge and
    wgan_gp -E[f].
  """
  if kind == "nonsaturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))
  if kind in ("hinge", "wgan_gp"):
    return -jnp.mean(fake_logits)
  raise ValueError(f"config.gan.loss={kind!r}: use one of {', '.join(LOSSES)}.")


def _input_grads(critic, x):
  """d critic(x)_i / d x_i, [B, ...]. The sum's gradient is per example
  because the discriminator scores every example on its own."""
  return jax.grad(lambda v: jnp.sum(critic(v)))(x)


def gradient_penalty(critic, real, fake, rng):
  """WGAN-GP: E[(||grad_x D(x_hat)||_2 - 1)^2] on x_hat = e x + (1 - e) x~.

  Args:
    critic: images [B, H, W, C] -> logits [B], differentiable.
    real: [B, H, W, C] real images.
    fake: [B, H, W, C] generated images.
    rng: key for e ~ U[0, 1], one per example.

  Returns:
    A scalar (without the weight lambda).
  """
  eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1))
  x_hat = eps * real + (1.0 - eps) * fake
  grads = _input_grads(critic, x_hat).reshape(real.shape[0], -1)
  # The epsilon keeps the norm's gradient finite where grads are exactly 0.
  norms = jnp.sqrt(jnp.sum(grads**2, axis=-1) + 1e-12)
  return jnp.mean((norms - 1.0)**2)


def r1_penalty(critic, real):
  """R1: E[||grad_x D(x)||_2^2] on real images (Mescheder et al. 2018).

  Args:
    critic: images [B, H, W, C] -> logits [B], differentiable.
    real: [B, H, W, C] real images.

  Returns:
    A scalar (without the weight gamma / 2).
  """
  grads = _input_grads(critic, real).reshape(real.shape[0], -1)
  return jnp.mean(jnp.sum(grads**2, axis=-1))


# --- Networks ---------------------------------------------------------------


def make_networks(config):
  """(generator, discriminator, encoder) Linen modules from the config."""
  m, size = config.model, config.data.image_size
  gan_nn.num_levels(size)  # Fails early, naming the field, on a bad size.
  dtype = genjax_config.compute_dtype(config)
  generator = gan_nn.Generator(size, m.g_channels, m.max_channels, m.arch,
                               m.g_norm, m.num_groups, dtype)
  discriminator = gan_nn.Discriminator(size, m.d_channels, m.max_channels,
                                       m.arch, m.spectral_norm, dtype)
  encoder = gan_nn.Encoder(size, m.z_dim, m.e_channels, m.max_channels, m.arch,
                           dtype)
  return generator, discriminator, encoder


def validate(config):
  """Config values the GAN cannot work with; raises ConfigError.

  genjax.methods.validate calls it before any data is built or code compiled.
  """
  from genjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  g, m = config.gan, config.model
  try:
    gan_nn.num_levels(config.data.image_size)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  checks = (
      (g.loss in LOSSES, f"config.gan.loss={g.loss!r}: use one of "
       f"{', '.join(LOSSES)}."),
      (g.loss != "wgan_gp" or g.gp_weight > 0,
       "config.gan.loss='wgan_gp' needs config.gan.gp_weight > 0 (10 in the "
       "paper): without it the critic is unbounded."),
      (isinstance(g.n_critic, int) and g.n_critic >= 1,
       f"config.gan.n_critic must be an integer >= 1, got {g.n_critic!r}."),
      (0.0 <= g.ema_decay < 1.0,
       f"config.gan.ema_decay must be in [0, 1), got {g.ema_decay!r}."),
      (g.gan_steps >= 0 and g.encoder_steps >= 0,
       "config.gan.gan_steps and encoder_steps must be >= 0."),
      (m.arch in gan_nn.ARCHS, f"config.model.arch={m.arch!r}: use one of "
       f"{', '.join(gan_nn.ARCHS)}."),
      (m.g_norm in ("group", "none"),
       f"config.model.g_norm={m.g_norm!r}: use 'group' or 'none'."),
  ) + tuple((g[name] >= 0, f"config.gan.{name} must be >= 0, got "
             f"{g[name]!r}.") for name in ("gp_weight", "r1_gamma", "kappa"))
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)


def _select(pred, on_true, on_false):
  """Leaf-wise jnp.where over two pytrees of the same structure."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def make(config):
  """The GAN + f-AnoGAN encoder as a `Method` (see genjax.methods)."""
  validate(config)
  generator, discriminator, encoder = make_networks(config)
  g_tx = optim.make_optimizer(config.optim_g)
  d_tx = optim.make_optimizer(config.optim_d)
  e_tx = optim.make_optimizer(config.optim_e)
  gc = config.gan
  z_dim = config.model.z_dim
  accum_steps = config.train.grad_accum_steps

  def generate(g_params, z):
    return generator.apply({"params": g_params}, z)

  def encode(e_params, images):
    return encoder.apply({"params": e_params}, images)

  def discriminate(d_params, d_stats, x):
    """(logits [B], features [B, F]) with the power iteration frozen."""
    return discriminator.apply({"params": d_params, "batch_stats": d_stats},
                               x, update_stats=False)

  def init(rng, batch):
    images = batch["image"]
    g_rng, d_rng, e_rng = jax.random.split(rng, 3)
    z = jnp.zeros((images.shape[0], z_dim))
    g_params = generator.init({"params": g_rng}, z)["params"]
    d_vars = discriminator.init({"params": d_rng}, images)
    e_params = encoder.init({"params": e_rng}, images)["params"]
    return State(
        step=jnp.zeros((), jnp.int32), g_params=g_params,
        g_ema_params=g_params, d_params=d_vars["params"],
        d_stats=d_vars.get("batch_stats", {}), e_params=e_params,
        g_opt_state=g_tx.init(g_params),
        d_opt_state=d_tx.init(d_vars["params"]),
        e_opt_state=e_tx.init(e_params))

  def d_grads(g_params, d_params, d_stats, real, rng):
    """D's gradients on `real` and as many fresh fakes (one micro-batch)."""
    z_rng, gp_rng = jax.random.split(rng)
    b = real.shape[0]
    fake = generate(g_params, jax.random.normal(z_rng, (b, z_dim)))

    def loss_fn(params):
      # Real and fake in one pass: one power-iteration update per D step.
      (logits, _), new_vars = discriminator.apply(
          {"params": params, "batch_stats": d_stats},
          jnp.concatenate([real, fake]), update_stats=True,
          mutable=["batch_stats"])
      new_stats = jax.lax.stop_gradient(new_vars.get("batch_stats", {}))
      real_logits, fake_logits = logits[:b], logits[b:]
      loss = d_loss_fn(gc.loss, real_logits, fake_logits)
      critic = lambda x: discriminate(params, new_stats, x)[0]
      gp = (gradient_penalty(critic, real, fake, gp_rng) if gc.gp_weight > 0
            else jnp.zeros(()))
      r1 = r1_penalty(critic, real) if gc.r1_gamma > 0 else jnp.zeros(())
      total = loss + gc.gp_weight * gp + 0.5 * gc.r1_gamma * r1
      return total, (new_stats, {"d_loss": loss, "gp": gp, "r1": r1,
                                 "d_real": jnp.mean(real_logits),
                                 "d_fake": jnp.mean(fake_logits)})

    (_, (new_stats, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(d_params)
    # The power iteration depends on the kernels only, not on the data: every
    # micro-batch computes the same new statistics.
    return (grads, metrics), new_stats

  def d_update(g_params, d_params, d_stats, d_opt_state, real, rng):
    """One discriminator update on `real` and fresh fakes."""
    (grads, metrics), new_stats = optim.accumulate_gradients(
        lambda b, r: d_grads(g_params, d_params, d_stats, b, r), real, rng,
        accum_steps)
    updates, d_opt_state = d_tx.update(grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    metrics["d_grad_norm"] = optax.global_norm(grads)
    return d_params, new_stats, d_opt_state, metrics

  def train_step(state, batch, rng):
    # Both phases are traced, and jnp.where keeps the active one's results:
    # XLA:CPU runs backward convolutions 10-30x slower inside lax.cond and
    # loop bodies (measured; jax-ml/jax#12868), which would cost far more
    # than the work discarded here (the D updates in phase 1, the encoder's
    # pass in phase 0). The generator update and the encoder update share
    # one G -> D pass.
    in_gan = state.step < gc.gan_steps
    real = batch["image"]
    d_rng, z_rng = jax.random.split(rng)

    # 1. n_critic discriminator updates, unrolled (see above), each on the
    # same real batch with fresh noise.
    d_state = (state.d_params, state.d_stats, state.d_opt_state)
    d_metrics = []
    for i in range(gc.n_critic):
      *d_state, m = d_update(state.g_params, *d_state, real,
                             jax.random.fold_in(d_rng, i))
      d_metrics.append(m)
    d_params, d_stats, d_opt_state = _select(
        in_gan, tuple(d_state),
        (state.d_params, state.d_stats, state.d_opt_state))
    metrics = {k: jnp.mean(jnp.stack([m[k] for m in d_metrics]))
               for k in d_metrics[0]}

    # 2. Phase 0: a generator update against the updated D (its power
    # iteration is not advanced: a G step changes nothing of D). Phase 1:
    # an encoder update of izi_f against the frozen G_ema and D.
    def ge_grads(real, z_rng):
      z = jax.random.normal(z_rng, (real.shape[0], z_dim))
      real_features = discriminate(d_params, d_stats, real)[1]

      def loss_fn(g_params, e_params):
        latent = jnp.where(in_gan, z, encode(e_params, real))
        images = generate(_select(in_gan, g_params, state.g_ema_params),
                          latent)
        logits, features = discriminate(d_params, d_stats, images)
        image_res = jnp.mean((real - images)**2)
        feature_res = jnp.mean((real_features - features)**2)
        aux = {"g_loss": g_loss_fn(gc.loss, logits),
               "e_loss": image_res + gc.kappa * feature_res,
               "e_image_residual": image_res,
               "e_feature_residual": feature_res}
        return jnp.where(in_gan, aux["g_loss"], aux["e_loss"]), aux

      (_, aux), grads = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(state.g_params,
                                                 state.e_params)
      return (aux, grads), ()

    (aux, (g_grads, e_grads)), _ = optim.accumulate_gradients(
        ge_grads, real, z_rng, accum_steps)
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state,
                                         state.g_params)
    g_params = optax.apply_updates(state.g_params, g_updates)
    # EMA with a warm-up ((1 + n) / (10 + n), as TF's ExponentialMovingAverage
    # with num_updates) so that short runs do not sample the initial weights.
    n = state.step.astype(jnp.float32)
    decay = jnp.minimum(gc.ema_decay, (1.0 + n) / (10.0 + n))
    g_ema_params = optim.ema_update(state.g_ema_params, g_params, decay)
    g_params, g_ema_params, g_opt_state = _select(
        in_gan, (g_params, g_ema_params, g_opt_state),
        (state.g_params, state.g_ema_params, state.g_opt_state))
    e_updates, e_opt_state = e_tx.update(e_grads, state.e_opt_state,
                                         state.e_params)
    e_params = optax.apply_updates(state.e_params, e_updates)
    e_params, e_opt_state = _select(in_gan, (state.e_params, state.e_opt_state),
                                    (e_params, e_opt_state))

    metrics.update(aux)
    metrics.update(
        g_grad_norm=optax.global_norm(g_grads),
        g_param_norm=optax.global_norm(g_params),
        d_param_norm=optax.global_norm(d_params),
        e_grad_norm=optax.global_norm(e_grads),
        e_param_norm=optax.global_norm(e_params))
    # The idle phase's numbers are meaningless (e.g. e_loss of random z):
    # report them as 0, and the phase itself.
    metrics = {k: jnp.where(in_gan if k in _GAN_METRICS else ~in_gan, v, 0.0)
               for k, v in metrics.items()}
    metrics["phase"] = 1.0 - in_gan.astype(jnp.float32)
    new_state = State(
        step=state.step + 1, g_params=g_params, g_ema_params=g_ema_params,
        d_params=d_params, d_stats=d_stats, e_params=e_params,
        g_opt_state=g_opt_state, d_opt_state=d_opt_state,
        e_opt_state=e_opt_state)
    return new_state, metrics

  def sample(state, rng, n):
    z = jax.random.normal(rng, (n, z_dim))
    return jnp.clip(generate(state.g_ema_params, z), -1.0, 1.0)

  def reconstruct(state, images, rng):
    del rng  # Deterministic: G_ema(E(x)).
    z = encode(state.e_params, images)
    return jnp.clip(generate(state.g_ema_params, z), -1.0, 1.0)

  def fanogan_score(state, images, recon):
    # genjax.anomaly's hook: the slice score becomes f-AnoGAN's A(x).
    return {"slice": anomaly_score(config, state, images, recon)}

  def reported(step, name):
    return name == "phase" or (name in _GAN_METRICS) == (step < gc.gan_steps)

  return Method(init=init, train_step=train_step, sample=sample,
                reconstruct=reconstruct, reported=reported,
                anomaly_score=(fanogan_score if config.anomaly.fanogan_score
                               else None))


# --- Anomaly scoring and diversity (for the detector and the evaluator) -----


def feature_residual(config, state, images, recon):
  """f-AnoGAN's discriminator-feature residual, per image.

  Args:
    config: the run's config (builds the discriminator).
    state: a trained `State`.
    images: [B, H, W, 1] in [-1, 1].
    recon: [B, H, W, 1] their reconstructions (`reconstruct`).

  Returns:
    [B] mean over features of (f(x) - f(recon))^2, f the discriminator's last
    hidden layer (spectral-norm statistics frozen).
  """
  _, discriminator, _ = make_networks(config)
  variables = {"params": state.d_params, "batch_stats": state.d_stats}
  f_x = discriminator.apply(variables, images)[1]
  f_r = discriminator.apply(variables, recon)[1]
  return jnp.mean((f_x - f_r)**2, axis=-1)


def anomaly_score(config, state, images, recon):
  """f-AnoGAN's image-level score A(x) = A_R(x) + w A_D(x), per image.

  Args:
    config: the run's config; w = config.anomaly.feature_weight.
    state: a trained `State`.
    images: [B, H, W, 1] in [-1, 1].
    recon: [B, H, W, 1] their reconstructions (`reconstruct`).

  Returns:
    [B]: mean squared pixel residual + w * `feature_residual`.
  """
  pixel = jnp.mean((images - recon)**2, axis=(1, 2, 3))
  return pixel + config.anomaly.feature_weight * feature_residual(
      config, state, images, recon)


def _pairwise_ms_ssim():
  # Imported here: the metrics pull in nothing the GAN's training needs.
  from genjax.metrics import image  # pylint: disable=g-import-not-at-top
  return image.pairwise_ms_ssim


def diversity(config, state, rng, real_images, max_pairs=256):
  """Mode-collapse check: pairwise MS-SSIM of samples vs. of real slices.

  A collapsed generator draws near-identical images, so its samples' mean
  pairwise MS-SSIM rises well above the real slices'. Comparable numbers need
  equal batch sizes: as many samples are drawn as real images are given.

  Args:
    config: the run's config.
    state: a trained `State`.
    rng: key for the samples.
    real_images: [N, H, W, 1] real slices in [-1, 1] (valid ones only: drop
      the padding of `pipeline.eval_batches`).
    max_pairs: cap on the pairs compared in each set (a fixed random subset
      beyond it; genjax.metrics.image.pairwise_ms_ssim).

  Returns:
    {'samples_ms_ssim', 'real_ms_ssim', 'ms_ssim_ratio'} (floats; ratio =
    samples / real, about 1 for a diverse generator).
  """
  method = make(config)
  samples = jax.jit(method.sample, static_argnums=2)(
      state, rng, real_images.shape[0])
  pairwise_ms_ssim = _pairwise_ms_ssim()
  fake = pairwise_ms_ssim(samples, data_range=2.0, max_pairs=max_pairs)
  real = pairwise_ms_ssim(real_images, data_range=2.0, max_pairs=max_pairs)
  return {"samples_ms_ssim": fake, "real_ms_ssim": real,
          "ms_ssim_ratio": fake / real}
