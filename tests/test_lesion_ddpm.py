"""The lesion-conditioned DDPM: the mask and context conditioning, its
dropout, classifier-free guidance, painting, mask files, and
experiments/synthesize.py end to end on a :smoke model."""

import os
import re

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
from PIL import Image
import pytest

from configs import lesion_ddpm as lesion_config
from experiments import synthesize
from genjax import methods
from genjax.methods import ddpm
from genjax.methods import lesion_ddpm


def _images(seed, n=2, size=32):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, 1),
                            minval=-1.0, maxval=1.0)


def _masks(n=2, size=32, offset=0):
  """Square lesions, one per example, at different places."""
  m = np.zeros((n, size, size, 1), np.float32)
  for i in range(n):
    r = 6 + 5 * i + offset
    m[i, r:r + 6, r:r + 7] = 1.0
  return jnp.asarray(m)


@pytest.fixture(scope="module")
def perturbed():
  """(config, method, state) of :smoke, every parameter moved off its init
  (the output conv is zero-initialised: the untrained network predicts 0)."""
  config = lesion_config.get_config("smoke")
  method = methods.get(config)
  s = config.data.image_size
  batch = {"image": _images(0, 2, s), "mask": _masks(2, s)}
  state = jax.jit(method.init)(jax.random.key(0, impl="rbg"), batch)
  rng = np.random.default_rng(9)
  deltas = jax.tree_util.tree_map(
      lambda p: 0.05 * rng.standard_normal(p.shape).astype(np.float32),
      state.params)
  # One program (eagerly, each leaf's add would compile on its own).
  params = jax.jit(lambda p, d: jax.tree_util.tree_map(jnp.add, p, d))(
      state.params, deltas)
  return config, method, state.replace(params=params, ema_params=params)


def test_condition_reaches_the_network_and_guidance_is_composed_by_hand(
    perturbed, monkeypatch):
  """Through `generate`: guidance 1 is the conditional network, 0 the
  unconditional one, s = 2.5 is u + s (c - u); a dropped condition is the
  unconditional network; another mask gives another prediction."""
  config, method, state = perturbed
  captured = []

  def fake_sampler(model_fn, schedule, rng, x_start, t_start, **kwargs):
    del schedule, rng, t_start
    captured.append((model_fn, kwargs))
    return x_start
  monkeypatch.setattr(ddpm.samplers, "get_sampler", lambda name: fake_sampler)
  masks, other = _masks(), _masks(offset=3)
  key = jax.random.key(1)
  for scale in (1.0, 0.0, 2.5):
    method.generate(state, key, {"mask": masks}, scale)
  method.generate(state, key, {"mask": other}, 1.0)
  nets = [net for net, _ in captured]
  assert all("known" not in kwargs for _, kwargs in captured)

  model = lesion_ddpm.make_model(config)
  apply = lambda x, t, c: model.apply({"params": state.ema_params}, x, t,
                                      condition=c)
  x, t = _images(2), jnp.array([40, 900])

  @jax.jit
  def outputs(x, t):
    cond = lesion_ddpm.make_condition(masks)
    dropped = lesion_ddpm.make_condition(masks, x, keep_mask=jnp.zeros(2))
    return ([net(x, t) for net in nets],
            apply(x, t, cond), apply(x, t, None), apply(x, t, dropped))

  (g1, g0, g25, g_other), c, u, d = outputs(x, t)
  np.testing.assert_array_equal(g1, c)
  np.testing.assert_array_equal(g0, u)
  np.testing.assert_allclose(g25, u + 2.5 * (c - u), atol=1e-5)
  np.testing.assert_array_equal(d, u)
  # The condition reaches the network: a mask changes the prediction, and
  # another mask changes it again.
  assert np.abs(c - u).max() > 1e-3
  assert np.abs(g_other - c).max() > 1e-3


def test_condition_of_a_batch_and_its_dropout():
  config = lesion_config.get_config("smoke")
  config.model.cond_dropout, config.model.context_dropout = 0.2, 0.5
  condition = lesion_ddpm.batch_condition(config)
  n, size = 2000, 4
  image = jax.random.uniform(jax.random.PRNGKey(0), (n, size, size, 1),
                             minval=-1.0, maxval=1.0)
  mask = (jax.random.uniform(jax.random.PRNGKey(1), image.shape) > 0.7
          ).astype(jnp.float32)
  c = condition({"image": image, "mask": mask}, jax.random.key(2))
  mask_on, context_on = np.asarray(c["mask_on"]), np.asarray(c["context_on"])
  assert abs(mask_on.mean() - 0.8) < 0.03
  assert abs(context_on.mean() - 0.4) < 0.03
  assert np.all(context_on <= mask_on)  # No context without its mask.
  on = lambda v: np.asarray(v)[:, None, None, None]
  np.testing.assert_array_equal(c["mask"], mask * on(mask_on))
  np.testing.assert_array_equal(c["context"],
                                image * (1.0 - mask) * on(context_on))
  # Without an rng (generate): the mask, and the context only from an image.
  c = condition({"mask": mask}, None)
  assert np.all(c["mask_on"] == 1) and np.all(c["context_on"] == 0)
  assert not np.asarray(c["context"]).any()
  with pytest.raises(ValueError, match=r"batch\['mask'\]"):
    condition({"image": image}, None)


def test_paint_leaves_every_pixel_outside_the_mask_unchanged(perturbed):
  _, method, state = perturbed
  images, masks = _images(4), _masks()
  painted = np.asarray(jax.jit(lambda s, r: lesion_ddpm.paint(
      method, s, r, images, masks, 2.0))(state, jax.random.key(5)))
  outside = np.asarray(masks) == 0
  np.testing.assert_array_equal(painted[outside], np.asarray(images)[outside])
  inside = ~outside
  assert np.abs(painted[inside] - np.asarray(images)[inside]).max() > 0.1
  assert np.all(np.abs(painted) <= 1.0)


def test_inpainting_needs_a_discrete_sampler():
  config = lesion_config.get_config("smoke")
  config.sample.sampler, config.sample.num_steps = "ode", 4
  method = methods.get(config)
  # Refused before the network is bound: no parameters needed.
  state = ddpm.State(step=0, params=None, ema_params=None, opt_state=None)
  with pytest.raises(ValueError, match="cannot inpaint"):
    lesion_ddpm.paint(method, state, jax.random.key(0), _images(1),
                      _masks(), 1.0)


def test_only_conditioned_variants_generate():
  assert methods.get(lesion_config.get_config("smoke")).generate is not None
  from configs import ddpm as ddpm_config  # pylint: disable=g-import-not-at-top
  assert methods.get(ddpm_config.get_config("smoke")).generate is None


def test_config_checks():
  from genjax import config as config_lib  # pylint: disable=g-import-not-at-top
  for field, value, match in (("model.cond_dropout", 0.0, "cond_dropout"),
                              ("model.context_dropout", 1.0,
                               "context_dropout"),
                              ("sample.guidance_scale", -1.0,
                               "guidance_scale")):
    config = lesion_config.get_config("smoke")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=match):
      methods.validate(config)
  config = lesion_config.get_config("cpu")
  methods.validate(config)
  assert config.data.train_split == "train_mixed"


# --- Mask files -------------------------------------------------------------


def _nifti(path, data):
  nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)),
           str(path))


def test_masks_from_a_folder_of_nifti_and_png(tmp_path):
  folder = tmp_path / "masks"
  folder.mkdir()
  # A 2D NIfTI (values 0/3: binarised), displayed like the pipeline's slices.
  m2d = np.zeros((16, 16))
  m2d[2:6, 10:14] = 3.0
  _nifti(folder / "a_slice.nii.gz", m2d)
  # A 3D NIfTI: two of its four axial slices have lesion.
  m3d = np.zeros((16, 16, 4))
  m3d[4:8, 4:8, 1] = 1.0
  m3d[8:12, 8:10, 3] = 1.0
  _nifti(folder / "b_volume.nii", m3d)
  # A 64 x 48 PNG (H x W): fitted to 32 x 24, padded to 32 x 32.
  png = np.zeros((64, 48), np.uint8)
  png[10:30, 20:40] = 255
  Image.fromarray(png).save(folder / "c.png")
  (folder / "notes.txt").write_text("ignored")

  masks, sources = synthesize.load_masks(str(folder), 8 * 4)
  assert masks.shape == (4, 32, 32, 1)
  assert sources == ["a_slice.nii.gz", "b_volume.nii[0]", "b_volume.nii[1]",
                     "c.png"]
  assert set(np.unique(masks)) == {0.0, 1.0}
  # Nearest neighbour at 2x: the 4 x 4 lesion becomes 8 x 8, rotated as
  # `display_slice` rotates it.
  want = np.rot90(m2d > 0).repeat(2, 0).repeat(2, 1)
  np.testing.assert_array_equal(masks[0, ..., 0], want)
  assert masks[1].sum() == 64 and masks[2].sum() == 32
  # PNG: rows 10:30 -> 5:15, cols 20:40 -> 10:20, then 4 columns of padding.
  assert masks[3].sum() == 10 * 10
  np.testing.assert_array_equal(masks[3, 5:15, 14:24, 0], 1.0)


def test_bad_mask_files_and_folders_are_clear_errors(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(synthesize.SynthesisError,
                     match=re.escape(str(empty)) + ".*no "):
    synthesize.load_masks(str(empty), 32)
  with pytest.raises(synthesize.SynthesisError, match="no such folder"):
    synthesize.load_masks(str(tmp_path / "missing"), 32)
  cases = {
      "four_d.nii.gz": lambda p: _nifti(p, np.ones((8, 8, 3, 2))),
      "blank.png": lambda p: Image.fromarray(np.zeros((8, 8), np.uint8)
                                             ).save(p),
      "broken.png": lambda p: p.write_bytes(b"\x89PNG not really"),
      "broken.nii": lambda p: p.write_bytes(b"not a nifti header"),
  }
  messages = {"four_d.nii.gz": "4D", "blank.png": "empty mask",
              "broken.png": "cannot read", "broken.nii": "cannot read"}
  for name, write in cases.items():
    folder = tmp_path / name.replace(".", "_")
    folder.mkdir()
    write(folder / name)
    with pytest.raises(synthesize.SynthesisError) as e:
      synthesize.load_masks(str(folder), 32)
    assert str(folder / name) in str(e.value)
    assert messages[name] in str(e.value)


# --- Training and experiments/synthesize.py end to end ---------------------


@pytest.fixture(scope="module")
def trained_lesion_ddpm(tmp_path_factory, phantom_data_dir):
  """A :smoke lesion_ddpm trained for 4 steps on train_mixed (config,
  workdir)."""
  from genjax import train  # pylint: disable=g-import-not-at-top
  config = lesion_config.get_config("smoke")
  config.data.data_dir = phantom_data_dir
  workdir = str(tmp_path_factory.mktemp("lesion_ddpm"))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_trains_on_mixed_batches_with_masks(trained_lesion_ddpm):
  from genjax import train  # pylint: disable=g-import-not-at-top
  from genjax.data import pipeline  # pylint: disable=g-import-not-at-top
  config, workdir = trained_lesion_ddpm
  batches = pipeline.train_iterator(config.data, 8, seed=0)
  batch = next(batches)
  assert batch["mask"].shape == batch["image"].shape
  # lesion_fraction 0.5: lesion slices (with their masks) in every batch.
  assert batch["label"].sum() >= 1 and batch["mask"].sum() > 0
  assert (batch["label"] == 0).any()
  losses = train.read_scalars(workdir, "loss")
  assert [s for s, _ in losses] == [1, 2, 3, 4]
  assert all(np.isfinite(v) for _, v in losses)


def test_synthesize_generate_and_paint_end_to_end(trained_lesion_ddpm,
                                                  tmp_path):
  config, workdir = trained_lesion_ddpm
  size = config.data.image_size
  out = synthesize.synthesize(config, workdir, "generate",
                              masks_from="phantom", num=2,
                              out=str(tmp_path / "generate"))
  assert out["images"].shape == out["masks"].shape == (2, size, size, 1)
  assert out["masks"].sum(axis=(1, 2, 3)).min() > 0
  assert np.all(np.abs(out["images"]) <= 1.0)
  saved = np.load(tmp_path / "generate" / "synthesis.npz")
  np.testing.assert_array_equal(saved["images"], out["images"])
  assert float(saved["guidance_scale"]) == config.sample.guidance_scale
  grid = np.asarray(Image.open(tmp_path / "generate" / "grid.png"))
  assert grid.shape[1] > 4 * size  # Two examples, mask | generated each.

  folder = tmp_path / "masks"
  folder.mkdir()
  m = np.zeros((size, size), np.uint8)
  m[12:20, 8:14] = 1
  Image.fromarray(m * 255).save(folder / "lesion.png")
  out = synthesize.synthesize(config, workdir, "paint", masks=str(folder),
                              num=3, guidance=1.0,
                              out=str(tmp_path / "paint"))
  healthy, painted = out["healthy"], out["images"]
  assert painted.shape == healthy.shape == (3, size, size, 1)
  outside = np.broadcast_to(out["masks"] == 0, painted.shape)
  np.testing.assert_array_equal(painted[outside], healthy[outside])
  assert not np.array_equal(painted, healthy)
  assert list(out["sources"]) == ["lesion.png"] * 3
  assert os.path.exists(tmp_path / "paint" / "grid.png")

  with pytest.raises(synthesize.SynthesisError, match="exactly one"):
    synthesize.synthesize(config, workdir, "generate")
