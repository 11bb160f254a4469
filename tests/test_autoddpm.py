"""AutoDDPM (genjax/methods/autoddpm.py): mask, stitch, re-sample.

The mask and the stitch are checked against scipy and numpy; the samplers'
known-region option and the whole reconstruction with the exact Gaussian
denoiser of tests/test_diffusion.py as the network, where the mask is
recomputed here from a separate first-pass call with the same key split
(`mask_rng, resample_rng = jax.random.split(rng)`); the network-call count
against a Python counter in a fake model run without jit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from configs import autoddpm as autoddpm_config
from genjax import methods
from genjax.config import ConfigError
from genjax.data import pipeline
from genjax.diffusion import losses
from genjax.diffusion import samplers
from genjax.diffusion import schedules as sch
from genjax.methods import autoddpm
from genjax.methods import ddpm
from tests.test_diffusion import discrete_alpha_sigma
from tests.test_diffusion import exact_denoiser
from tests.test_diffusion import MU
from tests.test_diffusion import SD

T = 1000


def key(seed):
  return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def linear():
  return sch.make_schedule("linear", T)


# --- The mask and the stitch -------------------------------------------------


@pytest.mark.parametrize("dilation", [0, 1, 2, 3])
def test_anomaly_mask_is_scipys_binary_dilation(dilation):
  rng = np.random.default_rng(dilation)
  residual = rng.uniform(0.0, 2.0, (3, 12, 10, 1)).astype(np.float32)
  residual[0] = 0.0  # An empty mask stays empty.
  residual[1, 0, 0] = 1.9  # A mark in a corner dilates within the image.
  threshold = 1.7
  got = np.asarray(jax.jit(autoddpm.anomaly_mask, static_argnums=(1, 2))(
      residual, threshold, dilation))
  side = 2 * dilation + 1
  want = scipy.ndimage.binary_dilation(
      residual > threshold, structure=np.ones((1, side, side, 1), bool))
  assert got.dtype == np.float32 and set(np.unique(got)) <= {0.0, 1.0}
  np.testing.assert_array_equal(got, want.astype(np.float32))
  assert 0 < got.sum() < got.size and not got[0].any()


def test_anomaly_mask_rejects_a_negative_dilation():
  with pytest.raises(ValueError, match="dilation"):
    autoddpm.anomaly_mask(jnp.zeros((1, 4, 4, 1)), 0.5, -1)


def test_stitch_is_the_masked_blend():
  rng = np.random.default_rng(0)
  images, recon = rng.uniform(-1, 1, (2, 2, 6, 6, 1)).astype(np.float32)
  mask = (rng.uniform(size=(2, 6, 6, 1)) < 0.4).astype(np.float32)
  got = np.asarray(autoddpm.stitch(images, recon, mask))
  np.testing.assert_array_equal(got, np.where(mask > 0, recon, images))
  soft = rng.uniform(size=(2, 6, 6, 1)).astype(np.float32)
  np.testing.assert_allclose(autoddpm.stitch(images, recon, soft),
                             soft * recon + (1 - soft) * images, rtol=1e-6,
                             atol=1e-7)


# --- The samplers' known-region option ---------------------------------------


@pytest.mark.parametrize("sampler,options", [
    ("ddpm", {}), ("ddpm", {"num_steps": 7, "variance": "large"}),
    ("ddim", {"eta": 1.0, "num_steps": 5}), ("ddim", {"stride": 9}),
])
def test_known_region_is_kept_exactly(linear, sampler, options):
  model = exact_denoiser(discrete_alpha_sigma(linear))
  x_known = MU + SD * jax.random.normal(key(0), (4, 4, 4, 1))
  keep = jax.random.bernoulli(key(1), 0.5, x_known.shape).astype(jnp.float32)
  x_start = jax.random.normal(key(2), x_known.shape)
  out = np.asarray(jax.jit(lambda x, k: samplers.get_sampler(sampler)(
      model, linear, key(3), x, 49, known=(x_known, k), clip_x0=2.0,
      **options))(x_start, keep))
  kept = np.asarray(keep) > 0
  assert 0 < kept.sum() < kept.size and np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[kept], np.asarray(x_known)[kept])
  # The rest is generated: it does not copy the known image.
  assert np.abs(out[~kept] - np.asarray(x_known)[~kept]).min() > 0


def test_known_with_nothing_kept_is_the_plain_deterministic_ddim(linear):
  model = exact_denoiser(discrete_alpha_sigma(linear))
  x_start = jax.random.normal(key(4), (2, 4, 4, 1))
  run = lambda **kw: samplers.get_sampler("ddim")(
      model, linear, key(5), x_start, 99, num_steps=50, **kw)
  np.testing.assert_array_equal(
      run(known=(x_start + 1.0, jnp.zeros_like(x_start))), run())


# --- reconstruct_at with the exact Gaussian denoiser -------------------------


def _config(anomaly_sampler="ddim", resample_sampler="ddim", **fields):
  config = autoddpm_config.get_config("smoke")
  config.anomaly.sampler = anomaly_sampler
  config.autoddpm.resample_sampler = resample_sampler
  for field, value in fields.items():
    section, name = field.split("__")
    config[section][name] = value
  return config


def _denoiser(config, model, schedule):
  """What the builder hands `reconstruct_at`, around any model function."""
  kwargs = ddpm.sampler_kwargs(config.anomaly.sampler, config.anomaly)
  kwargs.setdefault("clip_x0", 1.0)
  return ddpm.Denoiser(model=model, schedule=schedule, prediction="eps",
                       noise_fn=losses.gaussian_noise,
                       sampler=config.anomaly.sampler, sampler_kwargs=kwargs)


def _images():
  """[4, 4, 4, 1] in [-1, 1]: the Gaussian's data with a few outliers."""
  x = MU + 0.5 * SD * jax.random.normal(key(6), (4, 4, 4, 1))
  x = x.at[0, 2:4, 0:2].set(1.0).at[2, 0, 3].set(-1.0)
  return jnp.clip(x, -1.0, 1.0)


@pytest.mark.parametrize("anomaly_sampler,resample_sampler,eta", [
    ("one_step", "ddpm", 0.0), ("ddim", "ddim", 1.0),
])
def test_reconstruct_at_keeps_the_input_outside_its_mask(
    linear, anomaly_sampler, resample_sampler, eta):
  level, threshold, dilation = 100, 0.5, 1
  config = _config(anomaly_sampler, resample_sampler, anomaly__eta=eta,
                   anomaly__num_steps=20, autoddpm__threshold=threshold,
                   autoddpm__dilation=dilation, autoddpm__resample_level=40)
  denoiser = _denoiser(config, exact_denoiser(discrete_alpha_sigma(linear)),
                       linear)
  x, rng = _images(), key(7)
  out = np.asarray(jax.jit(lambda x: autoddpm.reconstruct_at(config)(
      denoiser, x, rng, level))(x))
  # The mask, recomputed: pass 1 on the first key of split(rng), clipped.
  mask_rng, _ = jax.random.split(rng)
  first = np.clip(np.asarray(jax.jit(
      lambda x: denoiser.anoddpm(x, mask_rng, level))(x)), -1.0, 1.0)
  residual = np.abs(np.asarray(x) - first)
  assert np.abs(residual - threshold).min() > 1e-4  # No pixel on the edge.
  mask = scipy.ndimage.binary_dilation(
      residual > threshold, structure=np.ones((1, 3, 3, 1), bool))
  assert 0 < mask.sum() < mask.size / 2 and mask[0, 2:4, 0:2].all()
  np.testing.assert_array_equal(out[~mask], np.asarray(x)[~mask])
  # Inside, regenerated: neither the input nor the first pass.
  assert np.all(np.isfinite(out))
  assert np.abs(out[mask] - np.asarray(x)[mask]).max() > 0.1
  assert np.abs(out[mask] - first[mask]).max() > 1e-3


def test_reconstruct_at_with_an_empty_mask_returns_the_input(linear):
  config = _config("ddim", "ddpm", anomaly__num_steps=20,
                   autoddpm__threshold=3.0)  # Residuals are at most 2.
  denoiser = _denoiser(config, exact_denoiser(discrete_alpha_sigma(linear)),
                       linear)
  x = _images()
  out = jax.jit(lambda x: autoddpm.reconstruct_at(config)(
      denoiser, x, key(8), 200))(x)
  np.testing.assert_array_equal(out, x)


# --- Network calls -----------------------------------------------------------


@pytest.mark.parametrize("anomaly_sampler,resample_sampler,num_steps", [
    ("ddim", "ddpm", None), ("ddpm", "ddim", 20), ("one_step", "ddim", None),
])
def test_network_calls_match_the_calls_made(anomaly_sampler, resample_sampler,
                                            num_steps):
  t_count, level = 50, 12
  config = _config(anomaly_sampler, resample_sampler,
                   diffusion__num_timesteps=t_count, anomaly__noise_level=level,
                   anomaly__num_steps=num_steps, autoddpm__resample_level=5)
  methods.validate(config)
  counter = [0]

  def model(x, t):
    del t
    counter[0] += 1
    return jnp.zeros_like(x)

  schedule = sch.make_schedule("linear", t_count)
  denoiser = _denoiser(config, model, schedule)
  with jax.disable_jit():  # lax.scan runs its body once per step.
    autoddpm.reconstruct_at(config)(denoiser, jnp.zeros((1, 2, 2, 1)),
                                    key(9), level)
  anoddpm_calls = samplers.network_calls(
      anomaly_sampler, t_count, level - 1, **denoiser.sampler_kwargs)
  assert counter[0] == autoddpm.network_calls(config)(level, anoddpm_calls)
  assert counter[0] > anoddpm_calls


# --- Config checks -----------------------------------------------------------


@pytest.mark.parametrize("field,value,match", [
    ("autoddpm.resample_sampler", "pc", "autoddpm.resample_sampler"),
    ("autoddpm.resample_sampler", "one_step", "autoddpm.resample_sampler"),
    ("autoddpm.resample_level", 0, "autoddpm.resample_level"),
    ("autoddpm.resample_level", T + 1, "autoddpm.resample_level"),
    ("autoddpm.threshold", 0.0, "autoddpm.threshold"),
    ("autoddpm.threshold", -0.1, "autoddpm.threshold"),
    ("autoddpm.dilation", -1, "autoddpm.dilation"),
    ("anomaly.sampler", "aggregate", "anomaly.sampler"),
    ("anomaly.noise_level", 0, "anomaly.noise_level"),  # The DDPM's checks.
])
def test_validate_names_the_bad_field(field, value, match):
  config = autoddpm_config.get_config("smoke")
  methods.validate(config)  # The defaults are valid.
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=match):
    methods.validate(config)


def test_defaults_of_every_variant_are_valid():
  for variant, size, dilation in (("smoke", 32, 1), ("cpu", 64, 2),
                                  ("", 128, 4)):
    config = autoddpm_config.get_config(variant)
    methods.validate(config)
    assert config.method == "autoddpm" and config.data.image_size == size
    assert config.autoddpm.dilation == dilation
    assert config.autoddpm.resample_level < config.anomaly.noise_level
    assert config.autoddpm.resample_sampler == config.anomaly.sampler


# --- The method through the builder ------------------------------------------


def test_smoke_method_trains_and_reconstructs(smoke_config):
  config = smoke_config(autoddpm_config)
  methods.validate(config)
  method = methods.get(config)
  batch = next(pipeline.train_iterator(config.data, config.train.batch_size,
                                       seed=0))
  batch = {k: v for k, v in batch.items() if k != "subject"}
  state = jax.jit(method.init)(key(0), batch)
  # The plain DDPM's state: a DDPM checkpoint restores here as it is.
  plain = jax.eval_shape(ddpm.make(config).init, key(0), batch)
  assert (jax.tree.structure(plain) == jax.tree.structure(state)
          and jax.tree.map(lambda a: a.shape, plain)
          == jax.tree.map(lambda a: a.shape, state))
  state, metrics = jax.jit(method.train_step)(state, batch, key(1))
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
  images = batch["image"]
  recon = jax.jit(method.reconstruct)(state, images, key(2))
  assert recon.shape == images.shape
  assert np.all(np.isfinite(recon)) and np.abs(recon).max() <= 1.0
  an, t_count = config.anomaly, config.diffusion.num_timesteps
  want = (samplers.network_calls(an.sampler, t_count, an.noise_level - 1,
                                 num_steps=an.num_steps)
          + samplers.network_calls(config.autoddpm.resample_sampler, t_count,
                                   config.autoddpm.resample_level - 1,
                                   num_steps=an.num_steps))
  assert method.reconstruct.network_calls == want
