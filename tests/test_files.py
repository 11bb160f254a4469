"""genjax.files: local paths as os.path would make them, URLs untouched."""

import os

from genjax import checkpoints
from genjax import files


def test_relative_workdir_is_made_absolute_like_os_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  # The README's commands pass relative workdirs (runs/ddpm_cpu).
  assert str(files.absolute("runs/ddpm")) == os.path.abspath("runs/ddpm")
  assert str(checkpoints.checkpoint_dir("runs/ddpm")) == os.path.join(
      os.path.abspath("runs/ddpm"), "checkpoints")
  assert str(files.absolute(str(tmp_path))) == str(tmp_path)


def test_urls_keep_their_scheme():
  assert str(files.absolute("gs://bucket/runs/x")) == "gs://bucket/runs/x"
  assert files.join("gs://bucket/runs", "x", "config.json") == (
      "gs://bucket/runs/x/config.json")


def test_json_round_trip_on_a_relative_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  files.write_json("a/b/c.json", {"x": [1, 2]})
  assert files.read_json(os.path.join(tmp_path, "a", "b", "c.json")) == {
      "x": [1, 2]}
