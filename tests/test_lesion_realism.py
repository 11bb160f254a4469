"""Realism and diversity of synthesised lesions: the measures of
genjax/metrics/lesion_synthesis.py by hand, and
experiments/ablations/lesion_realism.py end to end on :smoke generators."""

import os

import jax
import numpy as np
from PIL import Image
import pytest
import scipy.ndimage

from configs import ddpm as ddpm_config
from configs import lesion_ddpm as lesion_ddpm_config
from configs import lesion_vae as lesion_vae_config
from experiments import synthesize
from experiments.ablations import lesion_realism
from genjax import evaluate
from genjax import viz
from genjax.metrics import distribution
from genjax.metrics import lesion_synthesis


def _disc(size, centre, radius):
  y, x = np.mgrid[:size, :size]
  return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2


# --- lesion_contrast ----------------------------------------------------------


def test_lesion_contrast_of_a_disc_in_a_brain_by_hand():
  size, a, b = 40, 0.75, 0.25  # Exact in float32: the means are exact.
  brain = _disc(size, (20, 20), 14)
  centre_lesion = _disc(size, (20, 20), 4)
  edge_lesion = _disc(size, (20, 32), 3) & brain  # At the brain's edge.
  images, masks = [], []
  for lesion in (centre_lesion, edge_lesion, np.zeros_like(brain), brain):
    image = np.where(brain, b, -1.0)
    images.append(np.where(lesion, a, image))
    masks.append(lesion)
  images = np.stack(images)[..., None].astype(np.float32)
  masks = np.stack(masks)[..., None].astype(np.float32)

  out = lesion_synthesis.lesion_contrast(images, masks, ring=3)
  # A lesion of value a in tissue of value b: exactly a - b.
  assert out["inside"][0] == a and out["ring"][0] == b
  assert out["contrast"][0] == a - b
  # At the brain's edge the dilated ring reaches the background (-1); only
  # its brain pixels count, so the ring is still exactly b.
  ring = scipy.ndimage.binary_dilation(edge_lesion, iterations=3) & ~edge_lesion
  assert (ring & ~brain).any() and (ring & brain).any()
  assert out["ring"][1] == b and out["contrast"][1] == a - b
  # Without the restriction (every pixel called brain) the background
  # pulls the ring down: the mean over the whole dilated ring.
  everything = lesion_synthesis.lesion_contrast(
      images[1:2], masks[1:2], brains=np.ones_like(masks[1:2]), ring=3)
  assert everything["ring"][0] == pytest.approx(
      np.where(brain, b, -1.0)[ring].mean())
  assert everything["ring"][0] < b
  # An empty mask: NaN; a mask covering the whole brain: no ring, NaN.
  assert np.isnan([out["inside"][2], out["ring"][2],
                   out["contrast"][2]]).all()
  assert out["inside"][3] == a and np.isnan(out["ring"][3])
  assert np.isnan(out["contrast"][3])


def test_lesion_contrast_against_an_independent_computation():
  rng = np.random.default_rng(0)
  n, size = 5, 24
  images = rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32)
  images[:, :3] = -1.0  # Background rows (excluded from rings).
  masks = np.zeros((n, size, size, 1), np.float32)
  for i in range(n):
    masks[i, ..., 0] = _disc(size, rng.integers(2, size - 2, 2),
                             rng.integers(1, 5))
  for ring_width in (1, 3):
    out = lesion_synthesis.lesion_contrast(images, masks, ring=ring_width)
    for i in range(n):
      image, m = images[i, ..., 0].astype(np.float64), masks[i, ..., 0] > 0
      band = (scipy.ndimage.binary_dilation(m, iterations=ring_width) & ~m
              & (image > -1 + 1e-3))
      assert out["inside"][i] == pytest.approx(image[m].mean())
      assert out["ring"][i] == pytest.approx(image[band].mean())
      assert out["contrast"][i] == pytest.approx(image[m].mean()
                                                 - image[band].mean())


# --- visible_fraction ---------------------------------------------------------


def test_visible_fraction_hyper_and_hypointense():
  real = np.arange(1.0, 11.0)  # 10th percentile: 1.9.
  generated = np.array([0.0, 1.5, 2.0, 5.0, np.nan])  # NaN left out.
  assert lesion_synthesis.visible_fraction(generated, real) == 0.5
  # Real lesions score 1 - percentile / 100.
  assert lesion_synthesis.visible_fraction(real, real) == 0.9
  assert lesion_synthesis.visible_fraction(real, real, percentile=50) == 0.5
  # Hypointense (median < 0): more negative is more conspicuous, and a
  # bright "lesion" is not.
  generated = np.array([0.0, -1.5, -2.0, -5.0, 3.0])
  assert lesion_synthesis.visible_fraction(generated, -real) == 0.4
  # Scored against hyperintense real lesions, only the bright one counts.
  assert lesion_synthesis.visible_fraction(generated, real) == 0.2
  assert np.isnan(lesion_synthesis.visible_fraction([np.nan], real))
  with pytest.raises(ValueError, match="percentile"):
    lesion_synthesis.visible_fraction(real, real, percentile=110)


# --- region_diversity ---------------------------------------------------------


def test_region_diversity_against_a_double_loop():
  rng = np.random.default_rng(1)
  k, size = 5, 12
  draws = rng.normal(size=(k, size, size, 1))
  mask = rng.random((size, size, 1)) < 0.3
  pairs = []
  for i in range(k):
    for j in range(i + 1, k):
      d = (draws[i] - draws[j])[mask]
      pairs.append(np.sqrt(np.mean(d ** 2)))
  assert lesion_synthesis.region_diversity(draws, mask) == pytest.approx(
      np.mean(pairs))
  # Identical draws, or draws that differ only outside the mask: 0.
  same = np.repeat(draws[:1], k, axis=0)
  assert lesion_synthesis.region_diversity(same, mask) == 0.0
  outside = same + rng.normal(size=same.shape) * ~mask
  assert lesion_synthesis.region_diversity(outside, mask) == 0.0
  assert np.isnan(lesion_synthesis.region_diversity(draws,
                                                    np.zeros_like(mask)))
  with pytest.raises(ValueError, match="2 draws"):
    lesion_synthesis.region_diversity(draws[:1], mask)


# --- The study end to end -----------------------------------------------------


def _trained(module, tmp_path_factory, data_dir, name):
  """A :smoke config of `module` trained for 4 steps (config, workdir)."""
  from genjax import train  # pylint: disable=g-import-not-at-top
  config = module.get_config("smoke")
  config.data.data_dir = data_dir
  config.train.sample_every = 1000  # No sample grid: only the checkpoint.
  workdir = str(tmp_path_factory.mktemp(name))
  train.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture(scope="module")
def trained_ddpm(tmp_path_factory, phantom_data_dir):
  return _trained(lesion_ddpm_config, tmp_path_factory, phantom_data_dir,
                  "lesion_ddpm")


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory, phantom_data_dir):
  return _trained(lesion_vae_config, tmp_path_factory, phantom_data_dir,
                  "lesion_vae")


@pytest.fixture(scope="module")
def study(trained_ddpm, trained_vae, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("realism"))
  kwargs = dict(ddpm_config=trained_ddpm[0], ddpm_workdir=trained_ddpm[1],
                vae_config=trained_vae[0], vae_workdir=trained_vae[1],
                guidances=(0, 1), num=4, command="python -m test")
  return workdir, kwargs, lesion_realism.run(workdir, **kwargs)


def test_study_rows_files_and_floor_by_hand(study, trained_ddpm):
  workdir, _, result = study
  config = trained_ddpm[0]
  names = [r["name"] for r in result["rows"]]
  assert names == ["real_floor", "ddpm_s0", "ddpm_s1", "vae"]
  assert [r["label"] for r in result["rows"][1:]] == [
      "DDPM, s=0 (unconditional)", "DDPM, s=1", "VAE"]
  assert result["generated"] == names[1:] and result["reused"] == []
  for name in ("lesion_realism.md", "lesion_realism.json",
               "lesion_realism_grid.png", "lesion_realism_diversity.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  report = open(os.path.join(workdir, "lesion_realism.md")).read()
  assert "python -m test" in report and "| DDPM, s=1 |" in report

  # The floor: real lesion slices of another split (the phantom's
  # validation split is healthy: train_mixed) against the test ones, FD and
  # KID of the random-conv features computed here.
  real, masks, _ = synthesize.split_slices(config, "test", True, 4)
  split = result["floor_split"]
  assert split == config.data.train_split
  floor, floor_masks, _ = synthesize.split_slices(config, split, True,
                                                  len(real))
  features = jax.jit(evaluate.random_conv_features_fn())
  f_real, f_floor = (np.asarray(features(x), np.float64)
                     for x in (real, floor))
  mu1, s1 = distribution.feature_statistics(f_floor)
  mu2, s2 = distribution.feature_statistics(f_real)
  row = result["rows"][0]
  assert row["n"] == len(floor) == 4
  assert row["fd_random_conv"] == pytest.approx(
      distribution.frechet_distance(mu1, s1, mu2, s2), rel=1e-5)
  kid = distribution.kid(f_floor, f_real, num_subsets=100, subset_size=4,
                         rng=config.seed)
  assert row["kid_random_conv_mean"] == pytest.approx(kid[0], rel=1e-5,
                                                      abs=1e-9)
  contrast = lesion_synthesis.lesion_contrast(floor, floor_masks)["contrast"]
  assert row["contrast_median"] == pytest.approx(np.nanmedian(contrast))
  assert row["fid"] is None and result["inception_status"]

  # Generated rows: the cached images are at the test masks, in [-1, 1],
  # and the contrast is theirs at those masks.
  for row in result["rows"][1:]:
    with np.load(os.path.join(workdir, "rows", row["name"] + ".npz")) as z:
      images, draws = z["images"], z["draws"]
      np.testing.assert_array_equal(z["masks"], masks)
    assert images.shape == real.shape and draws.shape == (24, 32, 32, 1)
    assert np.abs(images).max() <= 1.0
    contrast = lesion_synthesis.lesion_contrast(images, masks)["contrast"]
    assert row["contrast_median"] == pytest.approx(np.nanmedian(contrast))
    assert 0.0 <= row["diversity_ms_ssim"] <= 1.0
    assert row["region_diversity"] > 0.0 and row["seconds_per_slice"] > 0

  # The grid: 4 masks x (real + 3 generator rows) labelled tiles of
  # 32 px x 6, the mask outlined in red.
  up = lesion_realism.tile_upscale(32)
  assert up == 6 and lesion_realism.tile_upscale(64) == 3
  th, tw = lesion_realism.TITLE_HEIGHT + 32 * up, 32 * up
  grid = np.asarray(Image.open(os.path.join(workdir,
                                            "lesion_realism_grid.png")))
  assert grid.shape == (4 * (th + 2) + 2, 4 * (tw + 2) + 2, 3)
  assert (grid == viz.LESION_RGB).all(axis=-1).sum() > 0
  # Diversity: 2 masks x 3 generators rows of the real slice + 6 draws.
  div = np.asarray(Image.open(os.path.join(workdir,
                                           "lesion_realism_diversity.png")))
  assert div.shape == (6 * (th + 2) + 2, 7 * (tw + 2) + 2, 3)


def test_rerun_reuses_the_cached_rows(study, monkeypatch):
  workdir, kwargs, first = study

  def refuse(*args, **kwargs):
    raise AssertionError("generated again")
  monkeypatch.setattr(synthesize, "generate_images", refuse)
  again = lesion_realism.run(workdir, **kwargs)
  assert again["generated"] == [] and again["reused"] == [
      "ddpm_s0", "ddpm_s1", "vae"]
  for a, b in zip(first["rows"], again["rows"]):
    assert a["fd_random_conv"] == b["fd_random_conv"]
    assert a["contrast_median"] == b["contrast_median"]
  # Other inputs (a guidance never generated) or --force: generated.
  with pytest.raises(AssertionError, match="generated again"):
    lesion_realism.run(workdir, **dict(kwargs, guidances=(2,)))
  with pytest.raises(AssertionError, match="generated again"):
    lesion_realism.run(workdir, **kwargs, force=True)


def test_bad_inputs_are_clear_errors(trained_ddpm, trained_vae, tmp_path):
  run = lambda **kw: lesion_realism.run(str(tmp_path / "out"), num=4, **kw)
  vae = trained_vae[0].copy_and_resolve_references()
  vae.sample.guidance_scale = 2.0
  with pytest.raises(lesion_realism.RealismError,
                     match=r"--vae_config.sample.guidance_scale=2.0.*must "
                     "be 1"):
    run(vae_config=vae, vae_workdir=trained_vae[1])
  missing = tmp_path / "untrained"
  with pytest.raises(lesion_realism.RealismError,
                     match=r"--ddpm_workdir=.*untrained: no checkpoint"):
    run(ddpm_config=trained_ddpm[0], ddpm_workdir=str(missing))
  assert not missing.exists()  # A mistyped workdir is not created.
  missing.mkdir()
  with pytest.raises(lesion_realism.RealismError, match="no checkpoint"):
    run(ddpm_config=trained_ddpm[0], ddpm_workdir=str(missing))
  with pytest.raises(lesion_realism.RealismError, match="--ddpm_workdir"):
    run(ddpm_config=trained_ddpm[0])
  with pytest.raises(lesion_realism.RealismError, match="Give a generator"):
    run()
  plain = ddpm_config.get_config("smoke")
  plain.data.data_dir = trained_ddpm[0].data.data_dir
  with pytest.raises(lesion_realism.RealismError,
                     match=r"--ddpm_config: config.method='ddpm'.*generate"):
    run(ddpm_config=plain, ddpm_workdir=trained_ddpm[1])
  # Each generator in its own flag: the rows are labelled by it.
  with pytest.raises(lesion_realism.RealismError,
                     match="--ddpm_config is a lesion_vae config"):
    run(ddpm_config=trained_vae[0], ddpm_workdir=trained_vae[1],
        guidances=(1,))
  with pytest.raises(lesion_realism.RealismError,
                     match="--vae_config: config.method='lesion_ddpm'"):
    run(vae_config=trained_ddpm[0], vae_workdir=trained_ddpm[1])
