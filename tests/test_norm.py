"""genjax's GroupNorm against flax.linen.GroupNorm (the reference).

All three networks use it, so checkpoints written with Flax's GroupNorm must
restore into it: same parameter names, shapes and dtypes, same outputs.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.nn import gan as gan_lib
from genjax.nn import norm
from genjax.nn import vae as vae_lib


def _perturbed_params(ref, x):
  params = ref.init(jax.random.key(1), x)
  return jax.tree.map(
      lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)


@pytest.mark.parametrize('shape,groups', [
    ((2, 8, 8, 16), 8),   # UNet / VAE feature maps
    ((3, 5, 7, 12), 4),   # odd spatial sizes
    ((4, 24), 6),         # a dense layer's output (no pixel axes)
    ((2, 4, 4, 8), 8),    # one channel per group
])
def test_matches_flax(shape, groups):
  x = 3.0 * jax.random.normal(jax.random.key(0), shape) + 1.0
  ref, ours = flax.linen.GroupNorm(groups), norm.GroupNorm(groups)
  params = _perturbed_params(ref, x)
  assert (jax.tree.map(lambda p: (p.shape, p.dtype), params)
          == jax.tree.map(lambda p: (p.shape, p.dtype),
                          ours.init(jax.random.key(1), x)))
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x),
                             atol=2e-5)


def test_gradients_match_flax():
  x = 2.0 * jax.random.normal(jax.random.key(0), (2, 6, 6, 16)) - 0.5
  ref, ours = flax.linen.GroupNorm(4), norm.GroupNorm(4)
  params = _perturbed_params(ref, x)
  weights = jax.random.normal(jax.random.key(3), x.shape)
  loss = lambda module: lambda p, x: jnp.sum(weights * module.apply(p, x))
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)


def test_bfloat16_output_float32_statistics():
  x = (50.0 + jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
       ).astype(jnp.bfloat16)
  ref = flax.linen.GroupNorm(4, dtype=jnp.bfloat16)
  ours = norm.GroupNorm(4, dtype=jnp.bfloat16)
  params = ref.init(jax.random.key(1), x)
  out = ours.apply(params, x)
  assert out.dtype == jnp.bfloat16
  # A large mean and unit spread: statistics reduced in bf16 would lose the
  # spread; both reduce in float32 and round only the output.
  expected = np.asarray(ref.apply(params, x.astype(jnp.float32)), np.float32)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected,
                             atol=0.02, rtol=0.01)


def _vae():
  model = vae_lib.VAE(channels=(8, 16), image_size=16, num_groups=4,
                      latent_dim=8)
  x = jnp.linspace(-1, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
  return model, (x, jax.random.key(5))


def _generator():
  model = gan_lib.Generator(image_size=16, base_channels=8, max_channels=16,
                            num_groups=4)
  return model, (jnp.linspace(-2, 2, 2 * 32).reshape(2, 32),)


@pytest.mark.parametrize('make,module', [(_vae, vae_lib), (_generator, gan_lib)])
def test_networks_match_flax_groupnorm(make, module, monkeypatch):
  # The VAE and GAN were built on flax.linen.GroupNorm: checkpoints written
  # then must restore (same tree) and give the same outputs.
  model, args = make()
  params = model.init(jax.random.key(0), *args)
  ours = model.apply(params, *args)
  with monkeypatch.context() as m:
    m.setattr(module, 'GroupNorm', flax.linen.GroupNorm)
    ref_params = model.init(jax.random.key(0), *args)
    ref = model.apply(params, *args)
  assert (jax.tree.map(lambda p: (p.shape, p.dtype), params)
          == jax.tree.map(lambda p: (p.shape, p.dtype), ref_params))
  # The network has norms (their 'scale'), so the comparison means something.
  assert any(k[-1] == 'scale' for k in
             flax.traverse_util.flatten_dict(params['params']))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, atol=1e-4)
