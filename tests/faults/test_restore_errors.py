"""Fault class: a checkpoint that cannot be read. Damage proven by the files
sets the checkpoint aside; anything else (I/O, memory, unknown) stops the run
and moves nothing, and the same command then resumes from it."""

import errno
import hashlib
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import ddpm
from genjax import checkpoints
from genjax import methods
from genjax import parallel
from genjax import train
from tests.faults.helpers import train_for as _train

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _config(data_dir):
  config = ddpm.get_config("smoke")
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope="module")
def trained(phantom_data_dir, tmp_path_factory):
  """A workdir with checkpoints 2 and 4 of the smoke DDPM.

  Written as the loop writes them (check_workdir_config, then
  checkpoints.save of a TrainState) from an initial state relabelled with
  each step: restoring cares about the files, not about trained weights,
  and this spares compiling a train step and a sampler.
  """
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = _config(phantom_data_dir)
  config.train.num_steps, config.train.ckpt_every = 4, 2
  config.train.sample_every = 100000
  checkpoints.check_workdir_config(config, workdir)
  mesh = parallel.make_mesh()
  init = jax.jit(methods.get(config).init,
                 out_shardings=parallel.replicated(mesh))
  state = init(jax.random.key(0, impl="rbg"), checkpoints.example_batch(config))
  manager = checkpoints.checkpoint_manager(config, workdir)
  for step in (2, 4):
    checkpoints.save(manager, step, state.replace(step=jnp.int32(step)))
  manager.wait_until_finished()
  manager.close()
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  """A fresh copy of the trained workdir, for a test to damage."""
  path = str(tmp_path / "run")
  shutil.copytree(trained, path, symlinks=True)
  return path


_METHODS = {}


def _method(config):
  """methods.get(config), built once per config for this module.

  Every restore traces the method's init for the checkpoint's abstract state
  (jax.eval_shape); jax reuses that trace only for the same function, so one
  Method spares ~20 retraces of the UNet's init. The Method is a pure
  function of the config (the tests' configs are all the same).
  """
  key = config.to_json()
  if key not in _METHODS:
    _METHODS[key] = methods.get(config)
  return _METHODS[key]


def _restore(config, workdir):
  manager = checkpoints.checkpoint_manager(config, workdir)
  return checkpoints.restore_or_init(_method(config), config, manager,
                                     parallel.make_mesh(), None)


def _snapshot(workdir):
  """{relative path: sha256 or link target} of everything under checkpoints/."""
  root = os.path.join(workdir, "checkpoints")
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      key = os.path.relpath(path, root)
      if os.path.islink(path):
        out[key] = "-> " + os.readlink(path)
      else:
        with open(path, "rb") as f:
          out[key] = hashlib.sha256(f.read()).hexdigest()
  return out


def _listing(workdir):
  """The checkpoint folders (and set-aside ones) of WORKDIR/checkpoints."""
  return sorted(n for n in os.listdir(os.path.join(workdir, "checkpoints"))
                if n != "checksums")


def _checksum_files(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints", "checksums")))


def _ckpt(workdir, step, *parts):
  return os.path.join(workdir, "checkpoints", str(step), *parts)


def _data_files(workdir, step):
  folder = _ckpt(workdir, step, "default", "ocdbt.process_0", "d")
  return sorted((os.path.join(folder, n) for n in os.listdir(folder)),
                key=os.path.getsize)


# --- Provably bad: set aside, the one before is used --------------------------


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 3)


def _write(path, data):
  with open(path, "wb") as f:
    f.write(data)


DAMAGE = {
    "largest array file truncated": lambda w: _truncate(_data_files(w, 4)[-1]),
    "array file missing": lambda w: os.remove(_data_files(w, 4)[-1]),
    "metadata missing": lambda w: os.remove(_ckpt(w, 4, "default",
                                                  "_METADATA")),
    "metadata not JSON": lambda w: _write(
        _ckpt(w, 4, "default", "_METADATA"), b"{\"tree_metadata\": {"),
    "metadata binary": lambda w: _write(_ckpt(w, 4, "default", "_METADATA"),
                                        bytes(range(256))),
    "metadata without a tree": lambda w: _write(
        _ckpt(w, 4, "default", "_METADATA"), b"{}"),
    "manifest garbled": lambda w: _write(
        _ckpt(w, 4, "default", "manifest.ocdbt"), b"not a manifest"),
    "item folder missing": lambda w: shutil.rmtree(_ckpt(w, 4, "default")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_provably_bad_checkpoint_is_set_aside(phantom_data_dir, workdir,
                                              damage):
  DAMAGE[damage](workdir)
  state, step = _restore(_config(phantom_data_dir), workdir)
  assert step == 2 and int(state.step) == 2
  assert _listing(workdir) == ["2", "unreadable_4"]
  assert _checksum_files(workdir) == ["2.json", "unreadable_4.json"]


# --- Trouble: the run stops, nothing moves, the rerun resumes from it ---------


def _eio_readable():
  try:
    with open("/proc/self/mem", "rb") as f:
      f.read(1)
  except OSError as e:
    return e.errno == errno.EIO
  return False


@pytest.mark.skipif(not _eio_readable(),
                    reason="reading /proc/self/mem does not give EIO here")
def test_real_io_error_on_metadata_stops_and_moves_nothing(phantom_data_dir,
                                                           workdir):
  # A real EIO from the kernel: the metadata file becomes a link to
  # /proc/self/mem, whose offset 0 is unmapped memory.
  metadata = _ckpt(workdir, 4, "default", "_METADATA")
  os.rename(metadata, metadata + ".good")
  os.symlink("/proc/self/mem", metadata)
  before = _snapshot(workdir)
  config = _config(phantom_data_dir)
  with pytest.raises(checkpoints.CheckpointReadError) as error:
    _restore(config, workdir)
  message = str(error.value)
  assert _ckpt(workdir, 4) in message and "Input/output error" in message
  assert isinstance(error.value.__cause__, OSError)
  assert _snapshot(workdir) == before  # Nothing moved, renamed or written.

  os.remove(metadata)
  os.rename(metadata + ".good", metadata)
  state, step = _restore(config, workdir)
  assert step == 4 and int(state.step) == 4


def _fail_array_reads(monkeypatch, error, times=1):
  """Array reads (orbax -> tensorstore) raise `error` the first `times`."""
  original = ocp.type_handlers.ArrayHandler.deserialize
  calls = {"failed": 0}

  async def deserialize(self, *args, **kwargs):
    if calls["failed"] < times:
      calls["failed"] += 1
      raise error
    return await original(self, *args, **kwargs)
  monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "deserialize",
                      deserialize)
  return calls


TROUBLE = {
    "EIO": OSError(errno.EIO, "Input/output error", "d/0a1b"),
    "ETIMEDOUT": TimeoutError(errno.ETIMEDOUT, "Connection timed out"),
    "permission": PermissionError(errno.EACCES, "Permission denied"),
    "host memory": MemoryError(),
    "device memory": jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
        "17179869184 bytes."),
    "tensorstore unavailable": ValueError(
        "UNAVAILABLE: Error reading \"params.conv_in.kernel/0.0.0.0\": "
        "connection reset"),
    "unknown": RuntimeError("something nobody foresaw"),
}


@pytest.mark.parametrize("trouble", list(TROUBLE))
def test_read_trouble_stops_and_moves_nothing(phantom_data_dir, workdir,
                                              monkeypatch, trouble):
  calls = _fail_array_reads(monkeypatch, TROUBLE[trouble])
  before = _snapshot(workdir)
  with pytest.raises(checkpoints.CheckpointReadError) as error:
    _restore(_config(phantom_data_dir), workdir)
  assert calls["failed"] == 1
  assert _ckpt(workdir, 4) in str(error.value)
  assert type(TROUBLE[trouble]).__name__ in str(error.value)
  assert error.value.__cause__ is TROUBLE[trouble]
  assert _snapshot(workdir) == before


def test_checkpoint_vanishing_after_listing_is_not_damage(phantom_data_dir,
                                                         workdir):
  # Its files are missing because the folder went away after the manager
  # listed it (an unmounted disk): neither it nor the checkpoint before may
  # be given up for that.
  config = _config(phantom_data_dir)
  manager = checkpoints.checkpoint_manager(config, workdir)
  assert manager.all_steps() == [2, 4]
  os.rename(_ckpt(workdir, 4), _ckpt(workdir, 4) + ".elsewhere")
  with pytest.raises(checkpoints.CheckpointReadError, match="checkpoints/4"):
    checkpoints.restore_or_init(_method(config), config, manager,
                                parallel.make_mesh(), None)
  assert _listing(workdir) == ["2", "4.elsewhere"]


def test_rerun_after_a_transient_error_resumes_at_the_same_step(
    phantom_data_dir, workdir, monkeypatch):
  # The real entry point, told to train to step 4: after the restore it has
  # nothing left to do, so this checks where a rerun resumes without
  # compiling a train step (test_train.py checks the training that follows).
  config = _config(phantom_data_dir)
  _fail_array_reads(monkeypatch, OSError(errno.EIO, "Input/output error"))
  with pytest.raises(train.CheckpointReadError, match="checkpoints/4"):
    _train(config, workdir, steps=4, ckpt_every=2)
  assert _listing(workdir) == ["2", "4"]
  # The same command again, the disk healthy: it resumes from step 4.
  state = _train(config, workdir, steps=4, ckpt_every=2)
  assert int(state.step) == 4
  assert _listing(workdir) == ["2", "4"]


def test_load_state_with_no_readable_checkpoint_is_a_clear_error(
    phantom_data_dir, workdir):
  for step in (2, 4):
    os.remove(_ckpt(workdir, step, "default", "_METADATA"))
  with pytest.raises(FileNotFoundError, match="No readable checkpoint"):
    checkpoints.load_state(_config(phantom_data_dir), workdir)
  assert _listing(workdir) == ["unreadable_2", "unreadable_4"]


# --- Silent damage: bytes that still decode, caught by the checksums ----------


def _orbax_restore(config, workdir, step):
  """Checkpoint `step` read by orbax alone: no genjax checks or checksums."""
  manager = checkpoints.checkpoint_manager(config, workdir)
  abstract = checkpoints.abstract_state(_method(config), config,
                                        parallel.make_mesh())
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
  finally:
    manager.close()


def _same(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _flip_a_bit_orbax_misses(config, workdir, step):
  """Flips one bit of an array file such that orbax restores other numbers.

  Tries bytes of the largest array file in a fixed order until a flip
  decodes without error to different arrays (most do: orbax keeps no
  checksum of the array bytes). Returns the path of the damaged file.
  """
  good = _orbax_restore(config, workdir, step)
  path = _data_files(workdir, step)[-1]
  with open(path, "rb") as f:
    original = f.read()
  for position in np.random.default_rng(0).permutation(len(original))[:20]:
    damaged = bytearray(original)
    damaged[position] ^= 0x10
    _write(path, bytes(damaged))
    try:
      restored = _orbax_restore(config, workdir, step)
    except Exception:  # pylint: disable=broad-except
      continue  # This byte's damage is loud; the test wants a silent one.
    if not _same(restored, good):
      return path
  raise AssertionError(f"no silent single-bit flip found in {path}")


def test_flipped_bit_orbax_restores_silently_is_set_aside(phantom_data_dir,
                                                          workdir, caplog):
  config = _config(phantom_data_dir)
  _flip_a_bit_orbax_misses(config, workdir, 4)
  state, step = _restore(config, workdir)
  assert step == 2 and int(state.step) == 2
  assert _listing(workdir) == ["2", "unreadable_4"]
  assert "restore to other bytes than were saved" in caplog.text


def test_without_checksums_the_same_flip_goes_unnoticed(phantom_data_dir,
                                                        workdir, caplog):
  # The control for the test above: a checkpoint written before genjax kept
  # checksums restores unverified (with a log line), damage and all.
  config = _config(phantom_data_dir)
  good = _orbax_restore(config, workdir, 4)
  _flip_a_bit_orbax_misses(config, workdir, 4)
  os.remove(os.path.join(workdir, "checkpoints", "checksums", "4.json"))
  caplog.set_level("INFO")
  state, step = _restore(config, workdir)
  assert step == 4 and not _same(state, good)
  assert "restored unverified" in caplog.text


def test_unreadable_checksum_file_does_not_condemn_the_checkpoint(
    phantom_data_dir, workdir, caplog):
  _write(os.path.join(workdir, "checkpoints", "checksums", "4.json"),
         b"{\"step\": 4, \"sha2")
  state, step = _restore(_config(phantom_data_dir), workdir)
  assert step == 4 and int(state.step) == 4
  assert _listing(workdir) == ["2", "4"]
  assert "is unreadable" in caplog.text and "unverified" in caplog.text


def test_checksums_are_sha256_of_the_saved_arrays(phantom_data_dir, workdir):
  # Against hashlib directly, leaf by leaf, on the arrays orbax restores.
  config = _config(phantom_data_dir)
  saved = checkpoints.files.read_json(
      os.path.join(workdir, "checkpoints", "checksums", "4.json"))
  assert saved["step"] == 4
  restored = _orbax_restore(config, workdir, 4)
  leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
  assert len(saved["sha256"]) == len(leaves)
  for path, leaf in leaves:
    array = np.asarray(leaf)
    name = "/".join(checkpoints._key_name(k) for k in path)
    expected = hashlib.sha256(f"{array.dtype}{array.shape}".encode()
                              + array.tobytes()).hexdigest()
    assert saved["sha256"][name] == expected, name


def test_checksums_of_deleted_checkpoints_are_removed(phantom_data_dir,
                                                      tmp_path):
  config = _config(phantom_data_dir)
  config.train.keep_checkpoints = 2
  workdir = str(tmp_path / "run")
  init = jax.jit(_method(config).init)
  state = init(jax.random.key(0, impl="rbg"),
               checkpoints.example_batch(config))
  manager = checkpoints.checkpoint_manager(config, workdir)
  for step in (2, 4, 6, 8):
    checkpoints.save(manager, step, state.replace(step=jnp.int32(step)))
    manager.wait_until_finished()
  manager.close()
  assert _listing(workdir) == ["6", "8"]
  # Orbax deletes step 4 when step 8 is written; its file goes at the next
  # save (each save removes those older than the oldest listed checkpoint).
  assert _checksum_files(workdir) == ["4.json", "6.json", "8.json"]


# --- Every checkpoint bad: stop, unless told to start over -------------------


def _damage_all(workdir):
  for step in (2, 4):
    os.remove(_ckpt(workdir, step, "default", "_METADATA"))


def test_every_checkpoint_bad_stops_instead_of_starting_over(
    phantom_data_dir, workdir):
  config = _config(phantom_data_dir)
  _damage_all(workdir)
  with pytest.raises(checkpoints.NoReadableCheckpointError) as error:
    _train(config, workdir, steps=4, ckpt_every=2)
  message = str(error.value)
  assert "unreadable_2, unreadable_4" in message
  assert "--allow_start_over" in message
  assert _listing(workdir) == ["unreadable_2", "unreadable_4"]
  # The rerun finds no checkpoint left to try, and still refuses.
  with pytest.raises(checkpoints.NoReadableCheckpointError):
    _train(config, workdir, steps=4, ckpt_every=2)
  # Asked to, it starts over: a freshly initialised state at step 0 (the
  # loop is not run here), the damaged checkpoints kept.
  manager = checkpoints.checkpoint_manager(config, workdir)
  state, step = checkpoints.restore_or_init(
      _method(config), config, manager, parallel.make_mesh(),
      jax.random.key(0, impl="rbg"), allow_start_over=True)
  assert step == 0 and int(state.step) == 0
  assert _listing(workdir) == ["unreadable_2", "unreadable_4"]


def test_command_line_names_the_way_to_start_over(phantom_data_dir, workdir):
  _damage_all(workdir)
  common = [sys.executable, "-m", "experiments.main",
            "--config=configs/ddpm.py:smoke", f"--workdir={workdir}",
            f"--config.data.data_dir={phantom_data_dir}",
            "--config.train.num_steps=4", "--config.train.ckpt_every=2",
            "--config.train.sample_every=100000"]
  run = subprocess.run(common, capture_output=True, text=True, timeout=600,
                       cwd=_REPO)
  assert run.returncode != 0
  assert "Checkpoint error: Every checkpoint" in run.stderr
  assert "Traceback" not in run.stderr
  assert _listing(workdir) == ["unreadable_2", "unreadable_4"]
