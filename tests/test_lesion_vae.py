"""The mask-conditioned VAE: its condition channels and where the networks
see them, the conditional ELBO against numpy, generate and paint through
the Method interface, and experiments/synthesize.py end to end on a :smoke
model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import lesion_vae as lesion_vae_config
from configs import vae as vae_config
from experiments import synthesize
from genjax import methods
from genjax.config import ConfigError
from genjax.methods import lesion_ddpm
from genjax.methods import lesion_vae
from genjax.methods import vae
from tests.test_lesion_ddpm import _images
from tests.test_lesion_ddpm import _masks


def _batch(n=2, size=32):
  images, masks = _images(0, n, size), _masks(n, size)
  return {"image": images, "mask": masks,
          "brain": jnp.ones_like(images),
          "label": jnp.ones((n,), jnp.int32)}


@pytest.fixture(scope="module")
def perturbed():
  """(config, method, state) of :smoke, every parameter moved off its init
  (the posterior head is zero-initialised: q = the prior, KL = 0)."""
  config = lesion_vae_config.get_config("smoke")
  method = methods.get(config)
  state = jax.jit(method.init)(jax.random.key(0, impl="rbg"), _batch())
  rng = np.random.default_rng(9)
  deltas = jax.tree_util.tree_map(
      lambda p: 0.05 * rng.standard_normal(p.shape).astype(np.float32),
      state.params)
  params = jax.jit(lambda p, d: jax.tree_util.tree_map(jnp.add, p, d))(
      state.params, deltas)
  return config, method, state.replace(params=params)


def _hand_channels(image, mask, context):
  """The four condition channels, built in numpy."""
  m = (np.asarray(mask) > 0.5).astype(np.float32)
  ones = np.ones_like(m)
  if context:
    return np.concatenate([m, ones, np.asarray(image) * (1 - m), ones], -1)
  zeros = np.zeros_like(m)
  return np.concatenate([m, ones, zeros, zeros], -1)


# --- The condition and where the networks see it ------------------------------


def test_condition_channels_and_context_dropout():
  batch = _batch()
  got = lesion_vae.condition_of_batch(batch)
  np.testing.assert_array_equal(
      got, _hand_channels(batch["image"], batch["mask"], True))
  got = lesion_vae.condition_of_batch({"mask": batch["mask"]})
  np.testing.assert_array_equal(
      got, _hand_channels(None, batch["mask"], False))
  # Training: each example's context is dropped with the given probability.
  n = 4000
  many = {"image": jnp.ones((n, 2, 2, 1)), "mask": jnp.zeros((n, 2, 2, 1))}
  got = np.asarray(lesion_vae.condition_of_batch(many, jax.random.key(3),
                                                 0.3))
  context_on = got[:, 0, 0, 3]
  assert abs(context_on.mean() - 0.7) < 0.03
  np.testing.assert_array_equal(got[..., 2], got[..., 3])  # ones * flag
  np.testing.assert_array_equal(got[..., 1], 1.0)  # The mask always given.
  with pytest.raises(ValueError, match=r"batch\['mask'\]"):
    lesion_vae.condition_of_batch({"image": batch["image"]})


def test_encoder_sees_the_condition_and_the_decoder_at_every_scale():
  """Input widths of the convolutions: + 4 channels at the encoder input and
  after every upsampling of the decoder; the plain VAE's are unchanged."""
  def decoder_in_widths(config, method):
    params = jax.eval_shape(method.init, jax.random.key(0),
                            _batch()).params["vae"]
    return (params["encoder"]["conv_in"]["kernel"].shape[2],
            [params["decoder"][f"up{level}_block0"]["Conv_0"]["kernel"]
             .shape[2] for level in range(len(config.model.channels))])

  config = lesion_vae_config.get_config("smoke")
  channels = list(config.model.channels)  # (8, 16)
  # Level l's first conv takes the level above's width (the bottleneck's
  # width for the last level) plus the condition.
  above = channels[1:] + [channels[-1]]
  got = decoder_in_widths(config, methods.get(config))
  k = lesion_vae.CONDITION_CHANNELS  # mask, flag, context, flag
  assert k == 4 and got == (1 + k, [w + k for w in above])
  config = vae_config.get_config("smoke")
  assert decoder_in_widths(config, methods.get(config)) == (1, above)
  assert methods.get(config).generate is None


def test_changing_the_mask_changes_the_output(perturbed):
  config, method, state = perturbed
  size = config.data.image_size
  gen = jax.jit(lambda s, r, m: method.generate(s, r, {"mask": m}))
  key = jax.random.key(1)
  masks = _masks()
  a, again = np.asarray(gen(state, key, masks)), np.asarray(gen(state, key,
                                                                masks))
  b = np.asarray(gen(state, key, _masks(offset=3)))
  assert a.shape == (2, size, size, 1) and a.dtype == np.float32
  assert np.all(np.abs(a) <= 1.0) and np.all(np.isfinite(a))
  np.testing.assert_array_equal(a, again)  # Only the rng draws.
  assert np.abs(a - b).max() > 1e-3
  # Another rng draws other latents.
  c = np.asarray(gen(state, jax.random.key(2), masks))
  assert np.abs(a - c).max() > 1e-4


def test_paint_leaves_every_pixel_outside_the_mask_bit_identical(perturbed):
  _, method, state = perturbed
  images, masks = _images(4), _masks()
  key = jax.random.key(5)
  painted = np.asarray(jax.jit(lambda s, r: lesion_ddpm.paint(
      method, s, r, images, masks, 1.0))(state, key))
  outside = np.asarray(masks) == 0
  np.testing.assert_array_equal(painted[outside], np.asarray(images)[outside])
  # Inside: the decoder's output given the mask and the context.
  decoded = np.asarray(method.generate(state, key,
                                       {"mask": masks, "image": images}))
  np.testing.assert_allclose(painted[~outside], decoded[~outside], atol=1e-6)
  assert np.abs(painted[~outside] - np.asarray(images)[~outside]).max() > 0.1
  # The context reaches the decoder: another slice, another painting.
  other = np.asarray(method.generate(state, key,
                                     {"mask": masks, "image": _images(6)}))
  assert np.abs(other[~outside] - decoded[~outside]).max() > 1e-4


def test_guidance_other_than_one_is_refused(perturbed):
  _, method, state = perturbed
  for scale in (2.0, 0.0, True, jnp.float32(1.0)):
    with pytest.raises(ValueError, match="guidance"):
      method.generate(state, jax.random.key(0), {"mask": _masks()}, scale)
  method.generate(state, jax.random.key(0), {"mask": _masks()}, 1)


def test_config_checks():
  for field, value, match in (("model.context_dropout", 1.0,
                               "context_dropout"),
                              ("sample.guidance_scale", 2.0,
                               "guidance_scale"),
                              ("data.train_split", "train", "train_mixed"),
                              ("vae.likelihood", "l3", "vae.likelihood")):
    config = lesion_vae_config.get_config("smoke")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=match):
      methods.validate(config)
  for variant in ("", "cpu", "smoke"):
    config = lesion_vae_config.get_config(variant)
    methods.validate(config)
    assert config.data.train_split == "train_mixed"
    assert config.data.lesion_fraction == 0.5
    assert config.sample.guidance_scale == 1.0


# --- The objective -----------------------------------------------------------


def test_conditional_elbo_by_hand(perturbed):
  """make_loss's value and terms from the network's (x̂, mu, logvar) under
  hand-built condition channels, in numpy: sum (x - x̂)² + β_t KL."""
  _, _, state = perturbed
  config = lesion_vae_config.get_config("smoke")
  config.model.context_dropout = 0.0  # Every example sees its context.
  conditioning = lesion_vae.make_conditioning(config)
  loss_fn = vae.make_loss(config, conditioning)
  batch, rng, step = _batch(), jax.random.key(11), 1
  loss, terms = loss_fn(state.params, batch, rng, step)

  z_rng, _ = jax.random.split(rng)  # make_loss's documented split.
  channels = _hand_channels(batch["image"], batch["mask"], True)
  x_hat, mu, logvar = (np.asarray(a, np.float64) for a in vae.make_model(
      config).apply({"params": state.params["vae"]}, batch["image"], z_rng,
                    jnp.asarray(channels)))
  x = np.asarray(batch["image"], np.float64)
  recon = ((x - x_hat) ** 2).sum(axis=(1, 2, 3))
  kl = 0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar).sum(axis=1)
  beta_t = config.vae.beta * min(1.0, step / config.vae.kl_warmup_steps)
  assert kl.min() > 1e-3 and math.isclose(beta_t, 0.5)
  np.testing.assert_allclose(terms["recon"], recon.mean(), rtol=1e-5)
  np.testing.assert_allclose(terms["kl"], kl.mean(), rtol=1e-4)
  np.testing.assert_allclose(loss, (recon + beta_t * kl).mean(), rtol=1e-5)
  # Without the condition (zeros) the network gives another loss.
  zero = vae.Conditioning(
      of_batch=lambda b, r: jnp.zeros((*b["mask"].shape[:3], 4),
                                      jnp.float32),
      default=conditioning.default)
  other, _ = vae.make_loss(config, zero)(state.params, batch, rng, step)
  assert abs(float(other) - float(loss)) > 1e-3


# --- Training and experiments/synthesize.py end to end ---------------------


@pytest.fixture(scope="module")
def trained_lesion_vae(tmp_path_factory, phantom_data_dir):
  """A :smoke lesion_vae trained for 4 steps on train_mixed (config,
  workdir)."""
  from genjax import train  # pylint: disable=g-import-not-at-top
  config = lesion_vae_config.get_config("smoke")
  config.data.data_dir = phantom_data_dir
  workdir = str(tmp_path_factory.mktemp("lesion_vae"))
  train.train_and_evaluate(config, workdir)
  losses = train.read_scalars(workdir, "loss")
  assert [s for s, _ in losses] == [1, 2, 3, 4]
  assert all(np.isfinite(v) for _, v in losses)
  return config, workdir


def test_trains_through_methods_get(trained_lesion_vae):
  """The loop's 4 updates (methods.get's train_step, on train_mixed) moved
  the parameters off their init; sample and reconstruct (a healthy slice,
  an empty mask) lie in [-1, 1]."""
  from genjax import checkpoints  # pylint: disable=g-import-not-at-top
  config, workdir = trained_lesion_vae
  method, state = checkpoints.load_state(config, workdir)
  assert method.generate is not None and int(state.step) == 4
  init = jax.jit(method.init)(jax.random.key(config.seed, impl="rbg"),
                              checkpoints.example_batch(config))
  moved = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: bool(jnp.any(a != b)), init.params, state.params))
  assert sum(moved) > len(moved) // 2
  assert all(np.isfinite(np.asarray(p)).all()
             for p in jax.tree_util.tree_leaves(state.params))
  size = config.data.image_size
  images = jax.jit(method.sample, static_argnums=2)(
      state, jax.random.key(2), 3)
  recon = jax.jit(method.reconstruct)(state, _images(1, 4), None)
  assert images.shape == (3, size, size, 1) and recon.shape == (4, size,
                                                                 size, 1)
  assert np.all(np.abs(images) <= 1.0) and np.all(np.abs(recon) <= 1.0)


def test_synthesize_generate_and_paint_end_to_end(trained_lesion_vae,
                                                  tmp_path):
  config, workdir = trained_lesion_vae
  size = config.data.image_size
  out = synthesize.synthesize(config, workdir, "generate",
                              masks_from="phantom", num=2,
                              out=str(tmp_path / "generate"))
  assert out["images"].shape == out["masks"].shape == (2, size, size, 1)
  assert np.all(np.abs(out["images"]) <= 1.0)
  saved = np.load(tmp_path / "generate" / "synthesis.npz")
  np.testing.assert_array_equal(saved["images"], out["images"])
  assert float(saved["guidance_scale"]) == 1.0
  assert (tmp_path / "generate" / "grid.png").exists()

  folder = tmp_path / "masks"
  folder.mkdir()
  m = np.zeros((size, size), np.uint8)
  m[12:20, 8:14] = 1
  Image.fromarray(m * 255).save(folder / "lesion.png")
  out = synthesize.synthesize(config, workdir, "paint", masks=str(folder),
                              num=3, out=str(tmp_path / "paint"))
  healthy, painted = out["healthy"], out["images"]
  assert painted.shape == healthy.shape == (3, size, size, 1)
  outside = np.broadcast_to(out["masks"] == 0, painted.shape)
  np.testing.assert_array_equal(painted[outside], healthy[outside])
  assert not np.array_equal(painted, healthy)
  assert (tmp_path / "paint" / "grid.png").exists()

  with pytest.raises(ValueError, match="guidance"):
    synthesize.synthesize(config, workdir, "generate", masks_from="phantom",
                          num=1, guidance=2.0, out=str(tmp_path / "g2"))
