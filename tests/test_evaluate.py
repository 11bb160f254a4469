"""`--mode=eval` against scikit-image, scipy and known sample sets."""

import collections
import functools
import json

import jax
from jax.experimental import io_callback
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
from skimage import metrics as skm

from genjax import evaluate
from genjax import parallel
from genjax.data import pipeline
from genjax.methods import Method

FakeState = collections.namedtuple("FakeState", "step")
STATE = FakeState(jnp.zeros((), jnp.int32))


def _valid_slices(config, split, healthy_only=True):
  out = collections.defaultdict(list)
  for batch in pipeline.eval_batches(config.data, split,
                                     config.eval.batch_size):
    use = batch["valid"] & ((batch["label"] == 0) | (not healthy_only))
    for key in ("image", "brain"):
      out[key].append(batch[key][use])
  return {k: np.concatenate(v) for k, v in out.items()}


def _distort(x):
  return jnp.clip(0.8 * x + 0.05 * jnp.sin(7.0 * x), -1.0, 1.0)


def test_reconstruction_metrics_match_skimage(smoke_config):
  config = smoke_config()
  method = Method(None, None, None,
                  lambda state, images, rng: _distort(images))
  got, pairs = evaluate.reconstruction_quality(
      config, jax.jit(evaluate.make_quality_fn(method)), STATE, "test",
      jax.random.key(0), parallel.make_mesh(), keep=3)
  real = _valid_slices(config, "test")
  x = real["image"][..., 0].astype(np.float64)
  y = np.asarray(_distort(real["image"]))[..., 0].astype(np.float64)
  brain = real["brain"][..., 0] > 0.5
  # Only the valid healthy slices count (the split has lesion slices and a
  # padding example too).
  assert got["n_slices"] == len(x)
  ssim, ssim_brain, psnr, psnr_brain = [], [], [], []
  for a, b, m in zip(x, y, brain):
    s, smap = skm.structural_similarity(
        a, b, data_range=2.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, full=True)
    ssim.append(s)
    inner = np.zeros_like(m)
    inner[5:-5, 5:-5] = m[5:-5, 5:-5]  # Windows fully inside the slice.
    ssim_brain.append(smap[inner].mean())
    psnr.append(skm.peak_signal_noise_ratio(a, b, data_range=2.0))
    psnr_brain.append(10 * np.log10(4.0 / np.mean((a - b)[m] ** 2)))
  assert got["ssim"] == pytest.approx(np.mean(ssim), abs=1e-4)
  assert got["ssim_brain"] == pytest.approx(np.mean(ssim_brain), abs=1e-4)
  assert got["psnr"] == pytest.approx(np.mean(psnr), abs=1e-3)
  assert got["psnr_brain"] == pytest.approx(np.mean(psnr_brain), abs=1e-3)
  assert 0.0 < got["ms_ssim"] < 1.0
  assert got["sharpness"] < got["sharpness_input"]  # 0.8 x is flatter.
  assert len(pairs) == 3
  # The figure's pairs are healthy slices drawn over the whole split (not
  # the first subject's neighbours), each with its own reconstruction.
  rows = []
  for inp, rec in pairs:
    match = [i for i, r in enumerate(real["image"]) if np.array_equal(r, inp)]
    assert match, "a figure input is not a healthy slice of the split"
    rows.append(match[0])
    np.testing.assert_allclose(rec, np.asarray(_distort(inp)), atol=1e-6)
  assert len(set(rows)) == 3 and rows != [0, 1, 2]


def _frechet(f1, f2):
  """Fréchet distance with scipy's sqrtm (the reference formula)."""
  mu1, mu2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def _replaying_method(images):
  """A method whose `sample` returns `images`, batch after batch."""
  position = [0]

  def next_chunk(n):
    start = position[0]
    position[0] += int(n)
    idx = np.arange(start, start + int(n)) % len(images)
    return images[idx].astype(np.float32)

  def sample(state, rng, n):
    del state, rng
    return io_callback(
        functools.partial(next_chunk, n),
        jax.ShapeDtypeStruct((n,) + images.shape[1:], jnp.float32))
  return Method(None, None, sample, None)


@pytest.fixture
def real_healthy(smoke_config):
  config = smoke_config()
  return config, _valid_slices(config, config.data.eval_split)["image"]


def test_samples_equal_to_the_reals_are_at_distance_zero(real_healthy,
                                                          monkeypatch):
  config, real = real_healthy
  config.eval.num_samples = len(real)
  # A stand-in FID network (a fixed projection), to check that fid is
  # computed, and on the right images, when a feature network exists.
  projection = np.random.default_rng(0).normal(size=(32 * 32, 6))
  fid_net = lambda images: np.asarray(images).reshape(len(images), -1) @ (
      projection)
  from genjax.nn import inception  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(inception, "fid_features_fn",
                      lambda config: (fid_net, "ok: test projection"))
  got, _, _ = evaluate.synthesis_quality(
      config, _replaying_method(real), STATE, jax.random.key(0),
      parallel.make_mesh(), evaluate.eval_options(config))
  assert got["n_samples"] == got["n_real"] == len(real)
  assert got["fid"] == pytest.approx(0.0, abs=1e-6)
  assert got["fid_status"] == "ok: test projection"
  assert got["fd_random_conv"] == pytest.approx(0.0, abs=1e-6)
  assert got["sharpness_samples"] == pytest.approx(got["sharpness_real"])
  assert got["hf_energy_samples"] == pytest.approx(got["hf_energy_real"])


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_blurred_and_collapsed_samples(real_healthy, monkeypatch):
  config, real = real_healthy
  from genjax.nn import inception  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(inception, "fid_features_fn",
                      lambda config: (None, "no weights in this test"))
  blurred = scipy.ndimage.gaussian_filter(real, sigma=(0, 1.5, 1.5, 0))
  config.eval.num_samples = len(real)
  got, _, _ = evaluate.synthesis_quality(
      config, _replaying_method(blurred), STATE, jax.random.key(0),
      parallel.make_mesh(), evaluate.eval_options(config))
  assert got["fid"] is None and got["fid_status"] == "no weights in this test"
  features = evaluate.random_conv_features_fn()
  want = _frechet(np.asarray(features(blurred), np.float64),
                  np.asarray(features(real), np.float64))
  assert got["fd_random_conv"] == pytest.approx(want, rel=1e-4)
  assert got["fd_random_conv"] > 1e-3
  assert got["sharpness_samples"] < 0.8 * got["sharpness_real"]
  assert got["hf_energy_samples"] < got["hf_energy_real"]

  # One image repeated: a collapsed generator has pairwise MS-SSIM 1.
  config.eval.num_samples = 8
  collapsed = np.repeat(real[:1], 8, axis=0)
  got, _, _ = evaluate.synthesis_quality(
      config, _replaying_method(collapsed), STATE, jax.random.key(0),
      parallel.make_mesh(), evaluate.eval_options(config))
  assert got["diversity_ms_ssim_samples"] == pytest.approx(1.0, abs=1e-5)
  assert got["diversity_ms_ssim_real"] < 0.9


def test_eval_mode_end_to_end(smoke_config, tmp_path):
  from genjax import modes  # pylint: disable=g-import-not-at-top
  from genjax import train  # pylint: disable=g-import-not-at-top
  config = smoke_config()
  config.train.num_steps = 2
  config.train.sample_every = 100
  config.eval.num_samples = 4
  config.eval.inception_weights = ""
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  modes.run("eval", config, workdir)
  out = tmp_path / "eval"
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["step"] == 2
  for split in ("test", "validation"):
    for key in ("ssim", "ssim_brain", "ms_ssim", "psnr", "psnr_brain",
                "n_slices"):
      assert metrics["reconstruction"][split][key] is not None, (split, key)
  assert metrics["fid"] is None
  assert "inception_weights" in metrics["fid_status"]
  assert metrics["n_samples"] == 4
  for key in ("fd_random_conv", "kid_random_conv_mean", "sharpness_samples",
              "sharpness_real", "hf_energy_samples", "hf_energy_real",
              "diversity_ms_ssim_samples", "diversity_ms_ssim_real"):
    assert isinstance(metrics[key], float), key
  assert metrics["config"]["method"] == "ddpm"
  report = (out / "report.md").read_text()
  assert "--mode=eval" in report and "not FID" in report
  for name in ("samples", "reconstructions"):
    assert f"![{name}]({name}.png)" in report
    assert (out / f"{name}.png").exists()
