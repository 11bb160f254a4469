"""A workdir on a non-local filesystem: gs:// on a fake, offline GCS.

Every output genjax writes under a workdir goes through `etils.epath`
(genjax.files), orbax (epath + tensorstore) or TensorFlow's summary writer,
all of which take gs:// URLs. Offline there is no GCS, so `fake_gcs` serves
gs://fake-bucket/... from a folder, at the three places the ecosystem's
GCS clients sit, and nowhere in genjax:

  * epath: gs:// paths get a backend that maps them into the folder
    (instead of tf.io.gfile's GCS client);
  * orbax/tensorstore: orbax's `gcs_utils.get_kvstore_for_gcs` (the one
    place orbax turns a gs:// checkpoint path into tensorstore's `gcs`
    kvstore) returns a `file` kvstore on the same folder, and the bucket is
    said to have no hierarchical namespace (orbax asks google-cloud-storage);
  * TensorBoard events: `tf.summary.create_file_writer` (what clu's writer
    calls) gets the mapped folder.

What this does not test: the bytes going over the wire (tensorstore's GCS
driver and TensorFlow's GCS filesystem, both the libraries' own code).
What it does test: genjax passes the workdir URL unchanged to every writer
and reader (a path that went through os.path would land in a local folder
named `gs:` under the current directory, which is checked to not exist),
and that train, resume, sample, detect and read_scalars all find their
files there.
"""

import os

from etils.epath import backend as epath_backend
from etils.epath import gpath
import numpy as np
from orbax.checkpoint._src.path import gcs_utils
import pytest
import tensorflow as tf

from genjax import files
from genjax import modes
from genjax import train

BUCKET = "gs://fake-bucket"


class _MirrorBackend(epath_backend._OsPathBackend):  # pylint: disable=protected-access
  """The os backend on `root/<bucket>/...` for gs://<bucket>/... paths."""

  def __init__(self, root):
    self.root = str(root)

  def local(self, path):
    path = os.fspath(path)
    assert path.startswith("gs://"), path
    return os.path.join(self.root, path[len("gs://"):])

  def url(self, local):
    return "gs://" + os.path.relpath(local, self.root)

  def open(self, path, mode):
    return super().open(self.local(path), mode)

  def exists(self, path):
    return super().exists(self.local(path))

  def isdir(self, path):
    return super().isdir(self.local(path))

  def listdir(self, path):
    return super().listdir(self.local(path))

  def glob(self, path):
    return [self.url(p) for p in super().glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for folder, dirs, names in super().walk(self.local(top), top_down=top_down,
                                            on_error=on_error):
      yield self.url(folder), dirs, names

  def makedirs(self, path, *, exist_ok=False, mode=None):
    return super().makedirs(self.local(path), exist_ok=exist_ok)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    return super().mkdir(self.local(path), exist_ok=exist_ok)

  def rmtree(self, path):
    return super().rmtree(self.local(path))

  def remove(self, path):
    return super().remove(self.local(path))

  def rename(self, path, dst):
    return super().rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    return super().replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    return super().copy(self.local(path), self.local(dst), overwrite)

  def stat(self, path):
    return super().stat(self.local(path))


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """gs://fake-bucket/... served from tmp_path/gcs; returns the backend.

  The current directory is an empty tmp_path/cwd, so that any write through
  a local path made from the URL shows up there.
  """
  root = tmp_path / "gcs"
  (root / "fake-bucket").mkdir(parents=True)
  mirror = _MirrorBackend(root)
  original = gpath._GPath._backend  # pylint: disable=protected-access

  def backend(self):
    if self._uri_scheme == "gs":  # pylint: disable=protected-access
      return mirror
    return original.fget(self)

  monkeypatch.setattr(gpath._GPath, "_backend", property(backend))  # pylint: disable=protected-access
  monkeypatch.setattr(
      gcs_utils, "get_kvstore_for_gcs",
      lambda path: {"driver": "file", "path": mirror.local(path)})
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled",
                      lambda path: False)
  create_file_writer = tf.summary.create_file_writer

  def file_writer(logdir, *args, **kwargs):
    logdir = os.fspath(logdir)
    if logdir.startswith("gs://"):
      logdir = mirror.local(logdir)
    return create_file_writer(logdir, *args, **kwargs)

  monkeypatch.setattr(tf.summary, "create_file_writer", file_writer)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  return mirror


def _local_leaks(mirror):
  """Anything written outside the fake bucket under a URL-derived name."""
  leaks = [p for p in os.listdir(".")]
  leaks += [p for p in ("/gs", "/gs:") if os.path.exists(p)]
  assert os.listdir(mirror.root) == ["fake-bucket"]
  return leaks


def test_train_resume_sample_detect_on_gs(smoke_config, fake_gcs):
  workdir = f"{BUCKET}/run"
  config = smoke_config()
  config.train.num_steps = 2
  config.train.log_every = 1
  config.train.ckpt_every = 2
  config.train.sample_every = 2
  train.train_and_evaluate(config, workdir)
  run = fake_gcs.local(workdir)
  assert os.path.isfile(os.path.join(run, "config.json"))
  assert os.path.isdir(os.path.join(run, "checkpoints", "2"))
  assert os.path.isfile(os.path.join(run, "samples", "step_0000002.png"))

  config.train.num_steps = 4  # Resume from step 2.
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  assert "4" in os.listdir(os.path.join(run, "checkpoints"))
  assert [s for s, _ in train.read_scalars(workdir, "loss")] == [1, 2, 3, 4]
  assert any(n.startswith("events.out.tfevents.") for n in os.listdir(run))

  images = modes.run("sample", config, workdir)
  assert images.shape == (config.sample.num_samples, 32, 32, 1)
  assert os.path.isfile(os.path.join(run, "sample", "grid.png"))
  np.testing.assert_array_equal(
      files.load_npy(f"{workdir}/sample/samples.npy"), images)

  config.anomaly.write_maps = True
  metrics = modes.run("detect", config, workdir)
  detect_dir = os.path.join(run, "detect")
  for name in ("metrics.json", "report.md", "subject_histograms.npz"):
    assert os.path.isfile(os.path.join(detect_dir, name)), name
  assert metrics["maps"] and all(
      os.path.isfile(os.path.join(detect_dir, m)) for m in metrics["maps"])
  assert files.read_json(f"{workdir}/detect/metrics.json")["step"] == 4
  assert not _local_leaks(fake_gcs)


def test_paths_keep_the_scheme(fake_gcs):
  assert files.join(BUCKET, "run", "x.png") == f"{BUCKET}/run/x.png"
  assert files.relpath(f"{BUCKET}/run/a/b.png", f"{BUCKET}/run") == "a/b.png"
  assert str(files.absolute(BUCKET)) == BUCKET
  files.save_npz(f"{BUCKET}/a/h.npz", x=np.arange(3))
  with files.load_npz(f"{BUCKET}/a/h.npz") as f:
    np.testing.assert_array_equal(f["x"], np.arange(3))
  assert files.glob(f"{BUCKET}/a", "*.npz") == [f"{BUCKET}/a/h.npz"]
  assert files.glob(f"{BUCKET}/missing", "*") == []
  with pytest.raises(FileNotFoundError, match="fake-bucket/nothing.json"):
    files.read_json(f"{BUCKET}/nothing.json")
  assert not _local_leaks(fake_gcs)


def test_noise_level_ablation_on_gs(smoke_config, fake_gcs):
  """The cheapest ablation end to end with its workdir on gs://: every table,
  figure and cached detector output lands in the bucket, and a rerun reuses
  them; the benchmark and detect_table read the same run from there."""
  from experiments import benchmark
  from experiments import detect_table
  from experiments.ablations import common
  from experiments.ablations import noise_level
  workdir = f"{BUCKET}/ddpm"
  config = smoke_config()
  config.train.num_steps = 2
  config.train.ckpt_every = 2
  config.train.sample_every = 100  # No sample grids: not what is tested.
  train.train_and_evaluate(config, workdir)
  config = common.config_from_workdir(workdir)  # config.json from gs://.
  assert config.train.num_steps == 2
  common.apply_overrides(config, ["anomaly.write_maps=False"])

  first = noise_level.run(config, workdir, (10,), ("gaussian",),
                          num_resamples=5)
  assert first["computed"] == [("gaussian", 10)]
  root = first["root"]
  assert root == f"{workdir}/ablations/noise_level"
  local = fake_gcs.local(root)
  outputs = first["outputs"]
  for key, name in (("markdown", "results.md"), ("csv", "results.csv"),
                    ("json", "results.json"), ("plot", "metrics.png"),
                    ("residuals_gaussian", "residuals_gaussian.png")):
    assert outputs[key] == f"{root}/{name}"
    assert os.path.getsize(os.path.join(local, name)) > 0, name
  level = os.path.join(local, "gaussian_t0010")
  for name in ("metrics.json", "subject_histograms.npz", "examples.npz"):
    assert os.path.isfile(os.path.join(level, name)), name
  rows = common.read_csv(outputs["csv"])
  metrics = files.read_json(f"{root}/gaussian_t0010/metrics.json")
  assert [float(r["auprc"]) for r in rows] == [metrics["auprc"]]
  assert files.read_json(outputs["json"])["chosen"] == {"gaussian": 10}
  assert common.fmt(metrics["auprc"], 3) in files.read_text(
      outputs["markdown"])

  stamp = os.path.getmtime(os.path.join(level, "metrics.json"))
  second = noise_level.run(config, workdir, (10,), ("gaussian",),
                           num_resamples=5)
  assert second["computed"] == []
  assert second["rows"] == first["rows"]
  assert os.path.getmtime(os.path.join(level, "metrics.json")) == stamp

  # The other readers of a gs:// run: benchmark's config, detect_table.
  assert benchmark.workdir_config(workdir).model.base_channels == (
      config.model.base_channels)
  assert detect_table.detect_folder(f"{root}/gaussian_t0010") == (
      f"{root}/gaussian_t0010")
  assert detect_table.detect_folder(workdir) is None
  table = detect_table.table([("t10", f"{root}/gaussian_t0010")], 5)
  assert "| t10 | ddpm |" in table
  assert not _local_leaks(fake_gcs)
