"""Tests of genjax.nn.unet: shapes, conditioning, dropout, attention, MONAI parity."""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.nn import unet as unet_lib

SMALL = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
             attention_resolutions=(1,), head_channels=8, num_groups=4, out_channels=1)


def init(model, shape=(2, 16, 16, 1)):
  # jit, since eager (op-by-op) init compiles every op on its own; and an 'rbg'
  # key, since XLA's CPU compile of one threefry draw per parameter tensor
  # dominates init (measured: 17 s with threefry, 3 s with rbg for SMALL).
  x = jnp.zeros(shape)
  rng = jax.random.key(0, impl='rbg')
  return jax.jit(model.init)({'params': rng}, x, jnp.zeros((shape[0],)))['params']


def shapes(model, shape=(2, 16, 16, 1)):
  """The parameter tree as ShapeDtypeStructs, without compiling anything."""
  return jax.eval_shape(lambda: init(model, shape))


def random_params(model, shape=(2, 16, 16, 1), scale=0.2):
  """Noise for every parameter (numpy: nothing to compile). At init the
  zero-initialised output conv and residual branches would hide any
  dependence on t and on dropout."""
  rng = np.random.default_rng(42)
  return jax.tree.map(lambda l: jnp.asarray(scale * rng.standard_normal(l.shape), l.dtype),
                      shapes(model, shape))


@pytest.fixture(scope='module')
def small():
  model = unet_lib.UNet(**SMALL)
  return model, init(model)


def test_output_shape_and_zero_init(small):
  model, params = small
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  out = jax.jit(model.apply)({'params': params}, x, jnp.array([3, 700]))
  assert out.shape == (2, 16, 16, 1) and out.dtype == jnp.float32
  # The zero-initialised final conv makes the untrained model predict 0.
  np.testing.assert_array_equal(out, 0.0)
  two = unet_lib.UNet(**{**SMALL, 'out_channels': 2})
  y = jax.eval_shape(two.apply, {'params': shapes(two, (1, 8, 8, 3))}, jnp.ones((1, 8, 8, 3)),
                     jnp.array([1.5]))
  assert y.shape == (1, 8, 8, 2)


def test_time_embedding_changes_the_output(small):
  model, _ = small
  params = random_params(model)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  apply = jax.jit(lambda t: model.apply({'params': params}, x, t))
  a, b, c = apply(jnp.array([10, 10])), apply(jnp.array([500, 500])), apply(jnp.array([10.0, 10.0]))
  assert float(jnp.abs(a - b).mean()) > 1e-2 * float(jnp.abs(a).mean())
  np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)  # int and float t agree.
  # A scalar t is broadcast over the batch.
  np.testing.assert_allclose(apply(jnp.array(10)), a, rtol=1e-5, atol=1e-6)


def test_timestep_embedding_is_monai_formula():
  t = jnp.array([0.0, 3.0, 999.0])
  emb = unet_lib.timestep_embedding(t, 8)
  freqs = np.exp(-math.log(10000.0) * np.arange(4) / 4)
  args = np.array([0.0, 3.0, 999.0])[:, None] * freqs
  np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], -1),
                             rtol=1e-5, atol=1e-4)


def test_dropout_only_in_train_mode(small):
  model = unet_lib.UNet(**{**SMALL, 'dropout': 0.3})
  params = random_params(model)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  t = jnp.array([5, 50])
  apply = jax.jit(model.apply, static_argnames='train')
  run = lambda train, rng=None: apply({'params': params}, x, t, train=train,
                                      rngs=None if rng is None else {'dropout': rng})
  np.testing.assert_array_equal(run(False), run(False))
  np.testing.assert_array_equal(run(False), run(False, jax.random.key(3)))
  key = lambda i: jax.random.key(i, impl='rbg')  # Cheaper to compile than threefry.
  a, b = run(True, key(1)), run(True, key(2))
  assert float(jnp.abs(a - b).mean()) > 1e-3
  np.testing.assert_array_equal(a, run(True, key(1)))
  with pytest.raises(flax.errors.InvalidRngError):
    run(True)


def test_attention_where_configured():
  model = unet_lib.UNet(base_channels=8, channel_mult=(1, 1, 2), num_res_blocks=2,
                        attention_resolutions=(0, 2), head_channels=4, num_groups=4)
  params = shapes(model, (1, 16, 16, 1))
  attn = sorted(k for k in params if 'attn' in k)
  assert attn == sorted(['down0_attn0', 'down0_attn1', 'down2_attn0', 'down2_attn1',
                         'mid_attn', 'up0_attn0', 'up0_attn1', 'up0_attn2',
                         'up2_attn0', 'up2_attn1', 'up2_attn2'])
  assert set(params['down2_attn0']) == {'norm', 'query', 'key', 'value', 'out'}
  # Level 1 has residual blocks but no attention; decoders have one block more.
  assert {'down1_res0', 'down1_res1', 'up1_res2', 'down0_downsample', 'up2_upsample'} <= set(params)
  assert 'down2_downsample' not in params and 'up0_upsample' not in params
  with pytest.raises(ValueError, match='level indices'):
    shapes(unet_lib.UNet(**{**SMALL, 'attention_resolutions': (16,)}))


def test_bad_sizes_give_clear_errors():
  with pytest.raises(ValueError, match='divisible by 4'):
    shapes(unet_lib.UNet(**{**SMALL, 'channel_mult': (1, 2, 2)}), (1, 18, 18, 1))
  with pytest.raises(ValueError, match='num_groups'):
    shapes(unet_lib.UNet(**{**SMALL, 'num_groups': 3}))


def test_resblock_updown_and_bf16():
  model = unet_lib.UNet(**{**SMALL, 'resblock_updown': True, 'dtype': jnp.bfloat16})
  params = shapes(model)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert {'down0_downsample', 'up1_upsample'} <= set(params)
  assert 'conv1' in params['down0_downsample']  # A residual block, not a conv.
  out = jax.jit(model.apply)({'params': random_params(model)}, jnp.ones((2, 16, 16, 1)),
                             jnp.array([1, 2]))
  assert out.dtype == jnp.float32 and out.shape == (2, 16, 16, 1)
  assert bool(jnp.all(jnp.isfinite(out)))


def test_param_count_helper(small):
  _, params = small
  assert unet_lib.param_count(params) == sum(p.size for p in jax.tree.leaves(params))
  assert unet_lib.param_count({'a': jnp.zeros((3, 4)), 'b': [jnp.zeros(5)]}) == 17


# Parameter counts of monai.networks.nets.DiffusionModelUNet(spatial_dims=2,
# in_channels=1, out_channels=1, **config), measured with MONAI 1.6.1 and
# torch 2.13.0 (CPU) as sum(p.numel() for p in model.parameters()).
MONAI_COUNTS = [
    ('monai_default', dict(channels=(32, 64, 64, 64), attention_levels=(False, False, True, True),
                           num_res_blocks=2, num_head_channels=8, norm_num_groups=32), 2328449),
    ('monai_tutorial_2d_ddpm', dict(channels=(128, 256, 256), attention_levels=(False, True, True),
                                    num_res_blocks=1, num_head_channels=256,
                                    norm_num_groups=32), 18500993),
    ('small_resblock_updown', dict(channels=(16, 32, 64), attention_levels=(False, True, False),
                                   num_res_blocks=(1, 2, 1), num_head_channels=16,
                                   norm_num_groups=8, resblock_updown=True), 778353),
]


@pytest.mark.parametrize('name,config,monai_count', MONAI_COUNTS, ids=[c[0] for c in MONAI_COUNTS])
def test_param_count_matches_monai(name, config, monai_count):
  model = unet_lib.unet_from_monai_config(**config)
  # eval_shape: the 18.5M-parameter model is counted without being materialised.
  count = unet_lib.param_count(shapes(model, (1, 16, 16, 1)))
  # The benchmark needs 5%; the layers are the same, so the counts are equal,
  # and equality also catches a missing block (one is < 1% of the total).
  assert abs(count - monai_count) <= 0.05 * monai_count, (name, count, monai_count)
  assert count == monai_count, (name, count, monai_count)
