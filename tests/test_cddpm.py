"""cDDPM: the UNet's conditioning slot, the image encoder, and the builder
passing the image being reconstructed to the network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cddpm as cddpm_config
from genjax import methods
from genjax.config import ConfigError
from genjax.diffusion import samplers
from genjax.methods import cddpm
from genjax.nn import unet


def _images(seed, n=2, size=32):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, 1),
                            minval=-1.0, maxval=1.0)


def test_zero_condition_is_the_unconditional_unet():
  net = unet.UNet(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(1,), head_channels=8, num_groups=4)
  x, t = _images(0), jnp.array([3, 700])
  cond = jax.random.normal(jax.random.PRNGKey(1), (2, 5))
  params = net.init(jax.random.PRNGKey(2), x, t, cond=cond)["params"]
  # c = 0 adds only the projection's bias, which Flax initialises to 0: the
  # conditioned network at c = 0 is the unconditional one with its weights.
  plain = {k: v for k, v in params.items() if k != "cond_dense"}
  bias = params["cond_dense"]["bias"]
  assert np.allclose(bias, 0.0)
  np.testing.assert_allclose(net.apply({"params": params}, x, t, cond=0 * cond),
                             net.apply({"params": plain}, x, t), atol=1e-5)
  # A non-zero condition changes the prediction once the network is trained
  # away from its zero-initialised output layer.
  params = jax.tree_util.tree_map(lambda p: p + 0.05, params)
  plain = {k: v for k, v in params.items() if k != "cond_dense"}
  out_c = net.apply({"params": params}, x, t, cond=cond)
  assert not np.allclose(out_c, net.apply({"params": plain}, x, t), atol=1e-4)
  with pytest.raises(ValueError, match="cond must be"):
    net.apply({"params": params}, x, t, cond=cond[:1])


def test_condition_dropped_equals_no_image(smoke_config):
  config = smoke_config(cddpm_config)
  model = cddpm.make_model(config)
  x, t = _images(3), jnp.array([10, 500])
  params = model.init(jax.random.PRNGKey(0), x, t,
                      condition={"image": x})["params"]
  params = jax.tree_util.tree_map(lambda p: p + 0.05, params)
  apply = lambda c=None: model.apply({"params": params}, x, t, condition=c)
  np.testing.assert_allclose(apply({"image": x, "keep": jnp.zeros(2)}),
                             apply(), atol=1e-6)
  assert not np.allclose(apply({"image": x}), apply(), atol=1e-4)
  mixed = apply({"image": x, "keep": jnp.array([1.0, 0.0])})
  np.testing.assert_allclose(mixed[0], apply({"image": x})[0], atol=1e-6)
  np.testing.assert_allclose(mixed[1], apply()[1], atol=1e-6)
  # Training draws the dropout: about cond_dropout of the examples.
  keep = cddpm.condition_fn(config)({"image": jnp.zeros((4000, 1, 1, 1))},
                                    jax.random.PRNGKey(1))["keep"]
  assert abs(1.0 - float(keep.mean()) - config.model.cond_dropout) < 0.02
  assert cddpm.condition_fn(config)({"image": x}, None)["keep"] is None


def test_reconstruct_conditions_on_the_input_image(smoke_config):
  """The reconstruction equals the mean of one-step estimates made with the
  network bound to the input image, composed here by hand."""
  config = smoke_config(cddpm_config)
  config.diffusion.num_timesteps = 1000
  method = methods.get(config)
  images = _images(4)
  state = method.init(jax.random.PRNGKey(0), {"image": images})
  state = state.replace(ema_params=jax.tree_util.tree_map(
      lambda p: p + 0.02, state.ema_params))
  model = cddpm.make_model(config)
  schedule = samplers.sch.make_schedule(config.diffusion.schedule, 1000)
  net = lambda x, t: model.apply({"params": state.ema_params}, x, t,
                                 condition={"image": images})
  rng = jax.random.PRNGKey(7)
  want = np.mean([np.clip(samplers.one_step_x0(net, schedule, rng, images, n,
                                               clip_x0=1.0), -1, 1)
                  for n in (250, 500, 750)], axis=0)
  got = method.reconstruct(state, images, rng)
  np.testing.assert_allclose(got, want, atol=1e-5)
  scores = method.anomaly_score(state, images, got, rng)
  np.testing.assert_allclose(scores["reconstruction"], want, atol=1e-5)
  assert method.reconstruct.network_calls == 3
  # Another image as the condition gives another reconstruction.
  other = lambda x, t: model.apply({"params": state.ema_params}, x, t,
                                   condition={"image": images[::-1]})
  assert not np.allclose(
      samplers.one_step_x0(other, schedule, rng, images, 500, clip_x0=1.0),
      samplers.one_step_x0(net, schedule, rng, images, 500, clip_x0=1.0),
      atol=1e-4)


def test_training_updates_the_encoder(smoke_config):
  config = smoke_config(cddpm_config)
  config.model.cond_dropout = 0.0
  method = methods.get(config)
  batch = {"image": _images(5, n=4)}
  # Jitted, as the loop runs them (eager, every op compiles on its own).
  first = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  step = jax.jit(method.train_step)
  state = first
  # The zero-initialised output layer moves first (after the warm-up step).
  for i in range(4):
    state, metrics = step(state, batch, jax.random.PRNGKey(i + 1))
  assert np.isfinite(metrics["loss"])
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                 first.params["encoder"],
                                 state.params["encoder"])
  assert max(jax.tree_util.tree_leaves(moved)) > 0
  sample = jax.jit(method.sample, static_argnums=2)
  assert sample(state, jax.random.PRNGKey(9), 2).shape == (2, 32, 32, 1)


@pytest.mark.parametrize("field,value,match", [
    ("latent_dim", 0, "latent_dim"),
    ("encoder_channels", (), "encoder_channels"),
    ("encoder_channels", (8, 8, 8, 8, 8, 8), "halved"),
    ("encoder_channels", (6,), "num_groups"),
    ("cond_dropout", 1.0, "cond_dropout"),
])
def test_validate_names_the_field(smoke_config, field, value, match):
  config = smoke_config(cddpm_config)
  config.model[field] = value
  with pytest.raises(ConfigError, match=match):
    methods.validate(config)
