"""The GAN + f-AnoGAN encoder: losses, penalties, updates, the real loop."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gan as gan_config
from genjax.train import read_scalars
from genjax import config as config_lib
from genjax import train
from genjax.data import pipeline
from genjax.methods import gan
from genjax.nn import gan as gan_nn


def softplus(x):
  return math.log1p(math.exp(x))


# --- Losses: values and signs on known logits -------------------------------

REAL, FAKE = np.array([2.0, 0.5]), np.array([-1.0, 0.3])


@pytest.mark.parametrize("kind, d_expected, g_expected", [
    # -log sigmoid(r) - log(1 - sigmoid(f)) = softplus(-r) + softplus(f).
    ("nonsaturating",
     np.mean([softplus(-2.0), softplus(-0.5)])
     + np.mean([softplus(-1.0), softplus(0.3)]),
     np.mean([softplus(1.0), softplus(-0.3)])),
    # relu(1 - r): 0 and 0.5; relu(1 + f): 0 and 1.3.
    ("hinge", 0.25 + 0.65, -np.mean(FAKE)),
    ("wgan_gp", np.mean(FAKE) - np.mean(REAL), -np.mean(FAKE)),
])
def test_loss_values(kind, d_expected, g_expected):
  np.testing.assert_allclose(gan.d_loss_fn(kind, REAL, FAKE), d_expected,
                             rtol=1e-6)
  np.testing.assert_allclose(gan.g_loss_fn(kind, FAKE), g_expected, rtol=1e-6)


@pytest.mark.parametrize("kind", gan.LOSSES)
def test_loss_signs(kind):
  """D wants real logits up and fake logits down; G wants fake logits up."""
  real, fake = jnp.array([0.2, -0.4]), jnp.array([-0.1, 0.6])
  d_real, d_fake = jax.grad(gan.d_loss_fn, argnums=(1, 2))(kind, real, fake)
  g_fake = jax.grad(gan.g_loss_fn, argnums=1)(kind, fake)
  assert np.all(d_real < 0) and np.all(d_fake > 0)
  assert np.all(g_fake < 0)
  # A discriminator that separates the two has a lower loss than one that
  # swaps them.
  assert gan.d_loss_fn(kind, real + 1, fake - 1) < gan.d_loss_fn(
      kind, real - 1, fake + 1)


def test_unknown_loss_names_the_field():
  with pytest.raises(ValueError, match="config.gan.loss"):
    gan.d_loss_fn("lsgan", REAL, FAKE)


# --- Gradient penalties against closed forms --------------------------------


def test_gradient_penalty_linear_critic():
  # D(x) = <w, x>: grad_x D = w everywhere, so GP = (||w|| - 1)^2 whatever
  # the interpolation.
  rng = np.random.default_rng(0)
  w = rng.standard_normal((8, 8, 1))
  w *= 3.0 / np.linalg.norm(w)
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  real = jnp.asarray(rng.uniform(-1, 1, (5, 8, 8, 1)), jnp.float32)
  fake = jnp.asarray(rng.uniform(-1, 1, (5, 8, 8, 1)), jnp.float32)
  gp = gan.gradient_penalty(critic, real, fake, jax.random.key(0))
  np.testing.assert_allclose(gp, (3.0 - 1.0)**2, rtol=1e-5)
  # R1 = E||w||^2 (the weight gamma / 2 is applied by the train step).
  np.testing.assert_allclose(gan.r1_penalty(critic, real), 9.0, rtol=1e-5)


def test_penalties_quadratic_critic():
  # D(x) = 1/2 sum a x^2: grad_x D = a * x, different for every example.
  # With real == fake, x_hat = x for any interpolation weight.
  rng = np.random.default_rng(1)
  a = rng.uniform(0.1, 2.0, (6, 6, 1))
  x = rng.uniform(-1, 1, (4, 6, 6, 1))
  critic = lambda v: 0.5 * jnp.sum(a * v**2, axis=(1, 2, 3))
  grads = (a * x).reshape(4, -1)
  norms = np.linalg.norm(grads, axis=1)
  xj = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(
      gan.gradient_penalty(critic, xj, xj, jax.random.key(3)),
      np.mean((norms - 1.0)**2), rtol=1e-5)
  np.testing.assert_allclose(gan.r1_penalty(critic, xj), np.mean(norms**2),
                             rtol=1e-5)


def test_gradient_penalty_interpolates_between_real_and_fake():
  # D(x) = 1/2 ||x||^2 on real = +c, fake = -c (c constant): the gradient at
  # x_hat = (2e - 1) c has norm |2e - 1| ||c||; with ||c|| = 1 every
  # interpolate lies on the segment, so GP is in [0, 1] and not the value at
  # the real or fake end (0).
  c = jnp.full((64, 4, 4, 1), 1.0 / 4.0)
  critic = lambda v: 0.5 * jnp.sum(v**2, axis=(1, 2, 3))
  gp = float(gan.gradient_penalty(critic, c, -c, jax.random.key(0)))
  # E[(|2e - 1| - 1)^2] for e ~ U[0, 1] is 1/3.
  assert 0.2 < gp < 0.47, gp


# --- Networks ---------------------------------------------------------------


@pytest.mark.parametrize("arch", gan_nn.ARCHS)
def test_network_shapes(arch):
  x = jnp.zeros((2, 32, 32, 1))
  g = gan_nn.Generator(32, 8, 32, arch)
  d = gan_nn.Discriminator(32, 8, 32, arch, spectral_norm=True)
  e = gan_nn.Encoder(32, 16, 8, 32, arch)
  out_g = jax.eval_shape(lambda: g.apply(
      g.init(jax.random.key(0), jnp.zeros((2, 16))), jnp.zeros((2, 16))))
  assert out_g.shape == (2, 32, 32, 1)
  logits, features = jax.eval_shape(lambda: d.apply(
      d.init(jax.random.key(0), x), x))
  assert logits.shape == (2,) and features.shape == (2, 4 * 4 * 32)
  z = jax.eval_shape(lambda: e.apply(e.init(jax.random.key(0), x), x))
  assert z.shape == (2, 16)


def test_bad_image_size_names_the_field():
  with pytest.raises(ValueError, match="config.data.image_size"):
    gan_nn.num_levels(48)


def test_spectral_norm_tracks_the_largest_singular_value():
  """The power-iteration state in 'batch_stats' converges to numpy's SVD."""
  d = gan_nn.Discriminator(8, 4, 8, "dcgan", spectral_norm=True)
  x = jnp.zeros((1, 8, 8, 1))
  variables = jax.jit(d.init)(jax.random.key(0), x)

  @jax.jit
  def iterate(stats):
    _, new = d.apply({"params": variables["params"], "batch_stats": stats}, x,
                     update_stats=True, mutable=["batch_stats"])
    return new["batch_stats"]

  stats = variables["batch_stats"]
  for _ in range(100):
    stats = iterate(stats)
  kernel = np.asarray(variables["params"]["body"]["conv_0"]["kernel"])
  sigma = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]),
                        compute_uv=False)[0]
  np.testing.assert_allclose(
      stats["body"]["SpectralNorm_0"]["conv_0/kernel/sigma"], sigma,
      rtol=1e-3)


# --- One train step: who changes --------------------------------------------


def _config(**gan_fields):
  config = gan_config.get_config("smoke")
  for key, value in gan_fields.items():
    config.gan[key] = value
  return config


def _batch(config):
  batch = train.example_batch(config)
  rng = np.random.default_rng(0)
  batch["image"] = jnp.asarray(
      rng.uniform(-1, 1, batch["image"].shape), jnp.float32)
  return batch


def _key(seed):
  # 'rbg' keys: XLA's CPU compile of one threefry draw per parameter tensor
  # dominates init (see tests/test_unet.py).
  return jax.random.key(seed, impl="rbg")


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _counts(opt_state):
  """Every `count` leaf of an optax state (Adam's, the schedule's)."""
  return [int(leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(opt_state)[0]
          if "count" in jax.tree_util.keystr(path)]


@pytest.fixture(scope="module")
def stepped():
  """One GAN step (n_critic=2) and one encoder step from the same state."""
  config = _config(n_critic=2, gan_steps=1)
  method = gan.make(config)
  batch = _batch(config)
  state = jax.jit(method.init)(_key(0), batch)
  step = jax.jit(method.train_step)
  after_gan, gan_metrics = step(state, batch, _key(1))
  after_enc, enc_metrics = step(after_gan, batch, _key(2))
  return dict(config=config, method=method, batch=batch, state=state,
              after_gan=after_gan, after_enc=after_enc,
              gan_metrics=gan_metrics, enc_metrics=enc_metrics)


def test_gan_step_updates_g_and_d_not_the_encoder(stepped):
  s0, s1 = stepped["state"], stepped["after_gan"]
  assert int(s1.step) == 1
  assert _changed(s0.g_params, s1.g_params)
  assert _changed(s0.g_ema_params, s1.g_ema_params)
  assert _changed(s0.d_params, s1.d_params)
  assert _changed(s0.d_stats, s1.d_stats)  # The power iteration advanced.
  assert not _changed(s0.e_params, s1.e_params)
  assert not _changed(s0.e_opt_state, s1.e_opt_state)
  # n_critic = 2 discriminator updates per generator update.
  assert set(_counts(s1.d_opt_state)) == {2}
  assert set(_counts(s1.g_opt_state)) == {1}
  m = stepped["gan_metrics"]
  assert float(m["phase"]) == 0.0 and float(m["e_loss"]) == 0.0
  assert float(m["d_grad_norm"]) > 0 and float(m["g_grad_norm"]) > 0


def test_encoder_step_updates_only_the_encoder(stepped):
  s1, s2 = stepped["after_gan"], stepped["after_enc"]
  assert int(s2.step) == 2
  assert _changed(s1.e_params, s2.e_params)
  for name in ("g_params", "g_ema_params", "d_params", "d_stats",
               "g_opt_state", "d_opt_state"):
    assert not _changed(getattr(s1, name), getattr(s2, name)), name
  m = stepped["enc_metrics"]
  assert float(m["phase"]) == 1.0 and float(m["d_loss"]) == 0.0
  # e_loss = image residual + kappa * feature residual, kappa = 1.
  np.testing.assert_allclose(
      m["e_loss"], m["e_image_residual"] + m["e_feature_residual"], rtol=1e-6)
  assert float(m["e_grad_norm"]) > 0


def test_each_optimiser_moves_only_its_network():
  """With optim_d's learning rate at 0, D is frozen and G still moves.

  This catches either network being updated by the other's optimiser (TTUR
  needs them separate) and a generator step that touches D.
  """
  config = _config()
  config.optim_d.learning_rate = 0.0
  method = gan.make(config)
  batch = _batch(config)
  s0 = jax.jit(method.init)(_key(0), batch)
  s1, _ = jax.jit(method.train_step)(s0, batch, _key(1))
  assert not _changed(s0.d_params, s1.d_params)
  assert _changed(s0.g_params, s1.g_params)


def test_sample_and_reconstruct_shapes_and_range(stepped):
  method, state = stepped["method"], stepped["after_enc"]
  images = jax.jit(method.sample, static_argnums=2)(state, _key(0), 3)
  assert images.shape == (3, 32, 32, 1)
  assert float(jnp.max(jnp.abs(images))) <= 1.0
  assert float(jnp.std(images)) > 0
  recon = jax.jit(method.reconstruct)(state, stepped["batch"]["image"], None)
  assert recon.shape == stepped["batch"]["image"].shape
  assert float(jnp.max(jnp.abs(recon))) <= 1.0


def test_anomaly_score_is_pixel_plus_feature_residual(stepped):
  config, state = stepped["config"], stepped["after_enc"]
  x = stepped["batch"]["image"]
  recon = stepped["method"].reconstruct(state, x, None)
  np.testing.assert_allclose(gan.feature_residual(config, state, x, x), 0.0)
  feat = np.asarray(gan.feature_residual(config, state, x, recon))
  assert feat.shape == (x.shape[0],) and np.all(feat > 0)
  pixel = np.mean((np.asarray(x) - np.asarray(recon))**2, axis=(1, 2, 3))
  config.anomaly.feature_weight = 2.5
  np.testing.assert_allclose(gan.anomaly_score(config, state, x, recon),
                             pixel + 2.5 * feat, rtol=1e-5)


def test_detector_hook_gives_the_fanogan_slice_score(stepped):
  config, state = stepped["config"], stepped["after_enc"]
  x = stepped["batch"]["image"]
  recon = stepped["method"].reconstruct(state, x, None)
  out = gan.make(config).anomaly_score(state, x, recon)
  np.testing.assert_allclose(out["slice"],
                             gan.anomaly_score(config, state, x, recon))
  config.anomaly.fanogan_score = False
  assert gan.make(config).anomaly_score is None


@pytest.mark.parametrize("field, value, message", [
    ("loss", "wgan_gp", "gp_weight"),
    ("loss", "lsgan", "config.gan.loss"),
    ("n_critic", 0, "config.gan.n_critic"),
    ("r1_gamma", -1.0, "config.gan.r1_gamma"),
])
def test_bad_gan_config_names_the_field(field, value, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_config(**{field: value}))


def test_image_size_the_networks_cannot_halve_is_a_config_error():
  config = _config()
  config.data.image_size = 48
  with pytest.raises(config_lib.ConfigError, match="config.data.image_size"):
    config_lib.validate(config)


# --- Diversity: mode collapse shows up as a number --------------------------


def test_collapsed_generator_has_high_sample_ms_ssim(phantom_data_dir):
  config = _config()
  config.data.data_dir = phantom_data_dir
  real = next(pipeline.eval_batches(config.data, "test", 16))
  real = real["image"][real["valid"].astype(bool)]
  method = gan.make(config)
  state = jax.jit(method.init)(_key(0), _batch(config))
  # A generator that ignores z: every sample the same image.
  collapsed = state.replace(g_ema_params=jax.tree.map(
      jnp.zeros_like, state.g_ema_params))
  out = gan.diversity(config, collapsed, jax.random.key(0), real)
  np.testing.assert_allclose(out["samples_ms_ssim"], 1.0, atol=1e-4)
  assert out["real_ms_ssim"] < 0.9
  assert out["ms_ssim_ratio"] > 1.1


# --- The real loop on :smoke ------------------------------------------------


def test_smoke_training_loop(smoke_config, tmp_path):
  config = smoke_config(gan_config)
  config.gan.gan_steps = 40
  config.gan.encoder_steps = 40
  config.train.log_every = 5
  config.train.ckpt_every = 80
  config.train.sample_every = 80
  workdir = str(tmp_path)
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 80 == config.train.num_steps

  gan_logs, encoder_logs = range(5, 41, 5), range(45, 81, 5)
  scalars = {tag: dict(read_scalars(workdir, tag)) for tag in (
      "phase", "d_real", "d_fake", "d_loss", "e_loss", "d_grad_norm",
      "g_grad_norm")}
  assert [scalars["phase"][s] for s in gan_logs] == [0.0] * 8
  assert [scalars["phase"][s] for s in encoder_logs] == [1.0] * 8
  # Phase 0: the discriminator learns to tell real from fake (TTUR: faster
  # than the generator early on): its hinge loss falls from ~2 (chance) and
  # real logits sit above fake ones. Both networks get gradients.
  assert scalars["d_loss"][40] < 0.7 * scalars["d_loss"][5], scalars["d_loss"]
  assert np.mean([scalars["d_real"][s] - scalars["d_fake"][s]
                  for s in gan_logs]) > 0
  for tag in ("d_grad_norm", "g_grad_norm"):
    assert all(scalars[tag][s] > 0 for s in gan_logs), tag
  # Phase 1: the izi_f loss falls; G and D are not trained any more.
  e_loss = scalars["e_loss"]
  assert e_loss[80] < 0.8 * e_loss[45], e_loss
  # Each phase's metrics are logged only while it trains (not as 0).
  for tag in ("d_loss", "d_real", "d_grad_norm", "g_grad_norm"):
    assert sorted(scalars[tag]) == list(gan_logs), tag
  assert sorted(scalars["e_loss"]) == list(encoder_logs)
  assert os.path.exists(os.path.join(workdir, "samples", "step_0000080.png"))

  # The checkpoint (with the spectral-norm state) restores for --mode=sample.
  images = train.sample_mode(config, workdir)
  assert images.shape == (config.sample.num_samples, 32, 32, 1)
  assert np.all(np.abs(images) <= 1.0)
  method, restored = train.load_state(config, workdir)
  for a, b in zip(jax.tree.leaves(jax.device_get(state)),
                  jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)
  recon = method.reconstruct(restored, jnp.asarray(images), None)
  assert recon.shape == images.shape
