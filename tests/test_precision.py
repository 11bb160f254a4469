"""Mixed precision (config.train.compute_dtype='bfloat16') for every method.

bfloat16 activations, float32 parameters and optimiser state, float32 network
outputs; the bfloat16 forward pass stays close to the float32 one on the same
parameters, and a few training steps give finite losses close to float32's.
"""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import config as config_lib
from genjax import methods
from genjax.methods import ddpm
from genjax.methods import gan
from genjax.methods import vae

LOSSES = {"ddpm": ("loss",), "vae": ("loss", "recon"),
          "gan": ("d_loss", "g_loss", "e_loss")}


def _config(name, dtype):
  config = importlib.import_module(f"configs.{name}").get_config("smoke")
  config.train.compute_dtype = dtype
  if name == "gan":
    config.gan.gan_steps = 2  # Steps 0, 1: D and G; steps 2, 3: the encoder.
  return config


def _batch(seed, size=4):
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1, 1, (size, 32, 32, 1)).astype(np.float32)
  return {"image": jnp.asarray(image),
          "mask": jnp.zeros((size, 32, 32, 1), jnp.float32),
          "brain": jnp.ones((size, 32, 32, 1), jnp.float32),
          "label": jnp.zeros((size,), jnp.int32)}


def _is_conv(module, method_name):
  del method_name
  return isinstance(module, nn.Conv)


def _forward(name, config, state, images):
  """The method's networks on `images`: (float outputs, conv outputs)."""
  capture = dict(capture_intermediates=_is_conv, mutable=["intermediates"])
  if name == "ddpm":
    t = jnp.arange(images.shape[0]) * 7
    out, inter = ddpm.make_model(config).apply(
        {"params": state.params}, images, t, **capture)
    outs = [out]
  elif name == "vae":
    (x_hat, mu, logvar), inter = vae.make_model(config).apply(
        {"params": state.params["vae"]}, images, jax.random.key(3), **capture)
    outs = [x_hat, mu, logvar]
  else:
    generator, discriminator, encoder = gan.make_networks(config)
    z, inter_e = encoder.apply({"params": state.e_params}, images, **capture)
    fake, inter_g = generator.apply({"params": state.g_params}, z, **capture)
    (logits, features), inter_d = discriminator.apply(
        {"params": state.d_params, "batch_stats": state.d_stats}, fake,
        **capture)
    outs, inter = [z, fake, logits, features], [inter_e, inter_g, inter_d]
  return outs, jax.tree.leaves(inter)


def _perturbed(state, scale=0.05):
  """Every float parameter plus noise, so zero-initialised layers (output
  convs, posterior heads) compute something."""
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(0)
  leaves = [x + scale * rng.normal(size=x.shape).astype(np.float32)
            if jnp.issubdtype(x.dtype, jnp.floating) else x for x in leaves]
  return jax.tree.unflatten(treedef, leaves)


def _float_dtypes(tree):
  return {x.dtype for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("name", ["ddpm", "vae", "gan"])
def test_bfloat16_activations_float32_state(name):
  f32, bf16 = _config(name, "float32"), _config(name, "bfloat16")
  method = methods.get(bf16)
  state = jax.jit(method.init)(jax.random.key(0), _batch(0))
  assert _float_dtypes(state) == {jnp.dtype(jnp.float32)}

  params = _perturbed(state)
  images = _batch(1)["image"]
  outs_16, convs_16 = _forward(name, bf16, params, images)
  outs_32, convs_32 = _forward(name, f32, params, images)
  # Inside: every conv computes in bfloat16 (float32 by default).
  assert len(convs_16) >= 4
  assert {c.dtype for c in convs_16} == {jnp.dtype(jnp.bfloat16)}
  assert {c.dtype for c in convs_32} == {jnp.dtype(jnp.float32)}
  # Outside: float32, and within bfloat16's precision of the float32 pass.
  for a, b in zip(outs_16, outs_32):
    assert a.dtype == b.dtype == jnp.float32
    err = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    assert 0.0 < err < 0.05, err


@pytest.mark.parametrize("name", ["ddpm", "vae", "gan"])
def test_bfloat16_training_steps(name):
  batches = [_batch(i) for i in range(4)]
  losses, states = {}, {}
  for dtype in ("float32", "bfloat16"):
    method = methods.get(_config(name, dtype))
    state = jax.jit(method.init)(jax.random.key(0), batches[0])
    step = jax.jit(method.train_step)
    history = []
    for i, batch in enumerate(batches):
      state, metrics = step(state, batch, jax.random.key(10 + i))
      history.append([float(metrics[k]) for k in LOSSES[name]])
    losses[dtype], states[dtype] = np.array(history), state
  assert np.all(np.isfinite(losses["bfloat16"])), losses
  # Parameters, optimiser state (and EMA, SN statistics) stay float32.
  assert _float_dtypes(states["bfloat16"]) == {jnp.dtype(jnp.float32)}
  # The same steps in float32 and bfloat16 give about the same losses, and
  # not bit-identical ones (bfloat16 did run).
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"],
                             rtol=0.1, atol=0.02)
  assert not np.array_equal(losses["bfloat16"], losses["float32"])


def test_compute_dtype_is_validated():
  config = _config("ddpm", "float16")
  with pytest.raises(config_lib.ConfigError, match="compute_dtype.*loss "
                     "scaling"):
    config_lib.validate_train(config.train)
  with pytest.raises(config_lib.ConfigError, match="compute_dtype"):
    methods.get(config)
