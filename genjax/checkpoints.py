"""The workdir: its saved config, its orbax checkpoints, and restoring them.

train, sample, eval and detect all read a run through this module:

  WORKDIR/config.json          the run's config (check_workdir_config)
  WORKDIR/checkpoints/<step>/  orbax checkpoints (checkpoint_manager, save)
  WORKDIR/checkpoints/unreadable_<step>/  a checkpoint proven bad, set aside
  WORKDIR/checkpoints/checksums/<step>.json  sha256 of every saved array

WORKDIR may be a local folder or any URL etils.epath supports (gs://bucket/
run): config.json goes through `genjax.files`, checkpoints through orbax.

Restoring tells a bad checkpoint from trouble reading a good one. Only a
checkpoint that is provably bad (a missing or unparseable metadata file, a
missing, truncated or undecodable array file) is set aside, and the one
before it is tried. Anything else (an I/O error other than a missing file,
a timeout, running out of host or device memory, an error this module does
not know) stops with `CheckpointReadError` naming the checkpoint and moves
nothing: starting a long run over because a disk hiccuped would throw the
run away. A checkpoint of another architecture is `CheckpointMismatchError`.

Orbax stores array bytes without a checksum: a flipped bit inside an array
file restores without any error, as a different number (9 of 12 random
single-bit flips in a smoke checkpoint did). So `save` also records the
sha256 of every array it saves, and a restore recomputes them: a mismatch
proves the checkpoint bad. A checkpoint without a checksum file (written
by an older genjax) is restored unverified, with a note in the log.

When every checkpoint has been set aside, the run stops
(`NoReadableCheckpointError`) instead of starting again from step 0, unless
the caller allows it (`experiments.main --allow_start_over`).
"""

import hashlib
import importlib
import json
import logging as std_logging

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from genjax import files
from genjax import methods
from genjax import parallel

# Fields that may differ when a run is resumed (they do not change what is
# trained); anything else differing means the workdir belongs to another run.
# compute_dtype and grad_accum_steps change how an update is computed, not
# which one (same parameters, same global batch), so a run can move to other
# hardware. autoddpm.* only changes how AutoDDPM reconstructs.
RESUMABLE_FIELDS = (
    "train.num_steps", "train.log_every", "train.ckpt_every",
    "train.sample_every", "train.num_samples", "train.keep_checkpoints",
    "train.compute_dtype", "train.grad_accum_steps",
    "data.data_dir", "data.manual_dir", "data.prefetch", "data.cache",
    "sample.", "anomaly.", "eval.", "autoddpm.",
)

# The item folder and tree metadata file orbax's StandardCheckpointHandler
# writes in every checkpoint (orbax-checkpoint 0.12).
_ITEM = "default"
_METADATA = "_METADATA"

# tensorstore status codes (the prefix of its error messages) that mean the
# stored bytes are missing or wrong, measured by damaging real checkpoints:
# a truncated array file is OUT_OF_RANGE ("Requested byte range ... is not
# valid for value of size ..."), an empty or missing one FAILED_PRECONDITION
# ("Truncated Zstd-compressed stream"), a garbled manifest DATA_LOSS, a
# missing manifest NOT_FOUND.
_CORRUPT_CODES = ("OUT_OF_RANGE:", "DATA_LOSS:", "NOT_FOUND:")
_CORRUPT_PRECONDITION = ("truncated", "compressed", "decod", "checksum",
                         "corrupt")
# Codes and messages of trouble that says nothing about the checkpoint.
_TROUBLE = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
            "PERMISSION_DENIED", "UNAUTHENTICATED", "ABORTED", "CANCELLED",
            "Out of memory", "out of memory")


def _quiet_orbax():
  """Orbax logs every save at INFO, several lines each; keep its warnings."""
  def keep(record):
    return (record.levelno >= std_logging.WARNING
            or "/orbax/" not in record.pathname)
  logging.get_absl_logger().addFilter(keep)


_quiet_orbax()


class WorkdirMismatchError(ValueError):
  """The workdir holds a run made with a different config."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the configured method/architecture."""


class CheckpointCorruptError(ValueError):
  """A checkpoint is provably bad: files missing, truncated or unparseable."""


class CheckpointReadError(RuntimeError):
  """A checkpoint could not be read for a reason that does not prove it bad.

  I/O errors, timeouts, out-of-memory and unknown errors: the run stops and
  the checkpoint is left where it is, so the same command resumes from it
  once the cause is gone.
  """


class NoReadableCheckpointError(RuntimeError):
  """Every checkpoint of a run was provably bad and has been set aside.

  Starting over would silently throw the run's progress away; the caller
  decides (`restore_or_init(..., allow_start_over=True)`).
  """


# --- The saved config ---------------------------------------------------------


def flatten_config(tree, prefix=""):
  """A nested dict (a config as JSON) -> {'a.b.c': value}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten_config(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_file_defaults(config):
  """flatten_config of `configs/<method>.py:<variant>` for this config.

  A field missing from a saved config was added to genjax after that run;
  the run behaved as the field's default does (new fields default to the old
  behaviour). Returns None when the config file cannot be built.
  """
  variant = config.get("variant", "") or None
  try:
    module = importlib.import_module(f"configs.{config.method}")
    default = module.get_config(variant)
  except Exception:  # pylint: disable=broad-except
    return None
  return flatten_config(json.loads(default.to_json_best_effort()))


def added_field_differences(saved_flat, config):
  """Fields the saved config lacks whose current value is not the default.

  Args:
    saved_flat: flatten_config of the saved config.
    config: the current ConfigDict.

  Returns:
    Sorted field names: fields added to genjax since `saved_flat` was
    written that `config` sets away from their default (so it asks for
    something the saved run did not do).
  """
  current = flatten_config(json.loads(config.to_json_best_effort()))
  added = [k for k in current if k not in saved_flat]
  if not added:
    return []
  defaults = config_file_defaults(config)
  if defaults is None:
    return []
  return sorted(k for k in added if k in defaults and current[k] != defaults[k])


def check_workdir_config(config, workdir):
  """Writes workdir/config.json, or checks the run there used this config.

  Raises:
    WorkdirMismatchError: listing the fields that differ.
  """
  path = files.join(workdir, "config.json")
  saved = None
  current = json.loads(config.to_json_best_effort())
  if files.exists(path):
    saved = files.read_json(path)
    a, b = flatten_config(saved), flatten_config(current)
    # Fields the saved config lacks were added to genjax since: at their
    # defaults they keep the old behaviour, so only those set away from their
    # default count (added_field_differences).
    resumable = lambda k: any(k == f or (f.endswith(".") and k.startswith(f))
                              for f in RESUMABLE_FIELDS)
    diff = sorted(k for k in a if a.get(k) != b.get(k) and not resumable(k))
    added = [k for k in added_field_differences(a, config)
             if not resumable(k)]
    if diff or added:
      lines = "\n".join(
          [f"  {k}: {a.get(k)!r} (workdir) vs {b.get(k)!r} (now)"
           for k in diff]
          + [f"  {k}: not in the workdir's config (added to genjax since; "
             f"that run used the default) vs {b.get(k)!r} (now)"
             for k in added])
      raise WorkdirMismatchError(
          f"{workdir} holds a run made with a different config:\n{lines}\n"
          "Use a new --workdir, or the same config to resume that run.")
  # Rewritten only when it changes (a resume with new resumable fields): on
  # a resume of a multi-process run the other processes read it meanwhile.
  if jax.process_index() == 0 and (saved is None or saved != current):
    files.write_json(path, current, indent=2)


# --- Checkpoints --------------------------------------------------------------


def example_batch(config):
  """Zeros shaped like one global training batch (for init and tracing)."""
  b, s = config.train.batch_size, config.data.image_size
  return {
      "image": jnp.zeros((b, s, s, 1), jnp.float32),
      "mask": jnp.zeros((b, s, s, 1), jnp.float32),
      "brain": jnp.zeros((b, s, s, 1), jnp.float32),
      "label": jnp.zeros((b,), jnp.int32),
  }


def checkpoint_dir(workdir):
  """WORKDIR/checkpoints as an absolute epath.Path (orbax needs one).

  A URL (gs://bucket/run) is kept as it is: orbax writes there through
  epath and tensorstore's own GCS driver.
  """
  return files.absolute(workdir) / "checkpoints"


def checkpoint_manager(config, workdir):
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.train.keep_checkpoints, create=True),
      item_handlers=ocp.StandardCheckpointHandler())


def save(manager, step, state):
  """Starts writing `state` as checkpoint `step` (asynchronously).

  The checksums are written first (process 0): a run killed before orbax
  finishes leaves a checksum file without a checkpoint, which is harmless
  (the next save of that step rewrites it), never the reverse.
  """
  if jax.process_index() == 0:
    _write_checksums(manager, step, fingerprint(state))
  manager.save(step, args=ocp.args.StandardSave(state))


# --- Checksums of the saved arrays ----------------------------------------------

_CHECKSUMS = "checksums"


def _host_array(leaf):
  """This process's copy of a leaf as numpy, or None if it holds only part.

  The TrainState is replicated (parallel.replicated), so every process holds
  all of it; a leaf sharded across hosts would be unverifiable here.
  """
  if isinstance(leaf, jax.Array):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if leaf.is_fully_addressable:
      return np.asarray(leaf)
    if leaf.is_fully_replicated:
      return np.asarray(leaf.addressable_data(0))
    return None
  return np.asarray(leaf)


def fingerprint(state):
  """{'params/conv_in/kernel': sha256 of dtype, shape and bytes} of `state`."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = _host_array(leaf)
    if array is None:
      continue
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    out[_leaf_name(path)] = digest.hexdigest()
  return out


def _checksum_path(manager, step):
  return epath.Path(manager.directory) / _CHECKSUMS / f"{step}.json"


def _write_checksums(manager, step, digests):
  """Writes checksums/<step>.json; drops those of checkpoints orbax deleted."""
  folder = epath.Path(manager.directory) / _CHECKSUMS
  files.write_json(_checksum_path(manager, step),
                   {"step": int(step), "sha256": digests})
  # Orbax deletes the oldest checkpoints (keep_checkpoints); a save still in
  # flight is newer than every listed step, so only files older than the
  # oldest listed checkpoint belong to deleted ones.
  kept = manager.all_steps()
  if kept:
    for path in folder.glob("*.json"):
      if path.stem.isdigit() and int(path.stem) < min(kept):
        path.unlink()


def verify_checksums(manager, step, state):
  """Raises CheckpointCorruptError if restored arrays differ from the saved.

  A checkpoint without a checksum file, or with one that cannot be parsed
  (the file, not the checkpoint, is damaged), is accepted unverified with a
  log line.
  """
  path = _checksum_path(manager, step)
  try:
    saved = json.loads(path.read_text())["sha256"]
  except FileNotFoundError:
    logging.info("No checksums for checkpoint %d (%s): restored unverified.",
                 step, path)
    return
  except (ValueError, KeyError, TypeError) as e:
    logging.warning("Checksum file %s is unreadable (%s): checkpoint %d "
                    "restored unverified.", path, e, step)
    return
  restored = fingerprint(state)
  bad = sorted(k for k in saved if k in restored and saved[k] != restored[k])
  if bad:
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more"
                                  if len(bad) > 5 else "")
    raise CheckpointCorruptError(
        f"{_step_path(manager, step)}: {len(bad)} of {len(saved)} arrays "
        f"restore to other bytes than were saved ({shown}; checksums in "
        f"{path})")


def abstract_state(method, config, mesh):
  """The TrainState's shapes and dtypes, replicated on `mesh` (no compute)."""
  abstract = jax.eval_shape(
      method.init, jax.random.key(0), example_batch(config))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract)


def _key_name(key):
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaf_name(path):
  """'params/conv_in/kernel' for a tree_flatten_with_path path: dataclass
  fields, dict keys and tuple indices all become parts, as in a checkpoint's
  metadata."""
  return "/".join(_key_name(k) for k in path)


def _shapes(tree):
  """{'params/conv_in/kernel': shape}: dataclass fields, dict keys and tuple
  indices all become path parts, as they are in a checkpoint's metadata."""
  return {_leaf_name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _step_path(manager, step):
  return epath.Path(manager.directory) / str(step)


def check_metadata_file(manager, step):
  """Raises CheckpointCorruptError if the tree metadata is missing or garbled.

  Orbax itself answers a missing metadata file with no metadata (None) and a
  garbled one with whatever its parser trips on (KeyError, AttributeError,
  ...), which could not be told from a bug; reading it here can. An OSError
  other than a missing file propagates: it proves nothing about the file.
  """
  path = _step_path(manager, step) / _ITEM / _METADATA
  try:
    raw = path.read_bytes()
  except FileNotFoundError as e:
    raise CheckpointCorruptError(f"{path} is missing") from e
  try:
    tree = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointCorruptError(f"{path} is not valid JSON ({e})") from e
  if not isinstance(tree, dict) or not tree.get("tree_metadata"):
    raise CheckpointCorruptError(f"{path} holds no tree metadata")


def check_compatible(manager, step, abstract, config):
  """Raises CheckpointMismatchError if the checkpoint's arrays do not fit.

  A checkpoint of another method or architecture would otherwise fail deep
  inside orbax/tensorstore; this lists what differs.

  Raises:
    CheckpointMismatchError: listing the parameters that differ.
    CheckpointCorruptError: orbax finds no metadata at all.
  """
  metadata = manager.item_metadata(step)
  if metadata is None:
    raise CheckpointCorruptError(
        f"orbax found no metadata in {_step_path(manager, step)}")
  saved = _shapes(getattr(metadata, "tree", metadata))
  wanted = _shapes(abstract)
  lines = [f"  {k}: {saved[k]} in the checkpoint, {wanted[k]} in the model"
           for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]
  lines += [f"  {k}: only in the checkpoint" for k in sorted(set(saved) -
                                                              set(wanted))]
  lines += [f"  {k}: only in the model" for k in sorted(set(wanted) -
                                                         set(saved))]
  if lines:
    shown = "\n".join(lines[:20])
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    raise CheckpointMismatchError(
        f"Checkpoint {manager.directory}/{step} does not fit "
        f"config.method={config.method!r} with this config "
        f"({len(lines)} parameter(s) differ):\n{shown}{more}\n"
        "It was written by another method or architecture: use its config "
        "or another --workdir.")


def _chain(error):
  """The error and its causes/contexts (orbax wraps tensorstore's errors)."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def is_corrupt(error):
  """True if `error` (raised reading a checkpoint) proves the files bad.

  Anything not positively recognised as damage is trouble: this errs on the
  side of stopping, which costs a rerun, never on the side of discarding a
  good checkpoint, which can cost the run.
  """
  chain = _chain(error)
  for e in chain:
    message = str(e)
    if isinstance(e, MemoryError) or any(t in message for t in _TROUBLE):
      return False
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
      return False
  for e in chain:
    message = str(e)
    if isinstance(e, (CheckpointCorruptError, FileNotFoundError)):
      return True
    if message.startswith(_CORRUPT_CODES):
      return True
    if message.startswith("FAILED_PRECONDITION:") and any(
        w in message.lower() for w in _CORRUPT_PRECONDITION):
      return True
  return False


def _describe(error):
  """'Type: message' of the error and the innermost cause, shortened."""
  chain = _chain(error)
  parts = [f"{type(e).__name__}: {str(e)[:300]}" for e in (chain[0],
                                                            chain[-1])]
  return parts[0] if len(chain) == 1 else f"{parts[0]} <- {parts[1]}"


def _set_aside(manager, step, error):
  """Moves a provably bad checkpoint out of the manager's way, keeping it."""
  path = _step_path(manager, step)
  target = epath.Path(manager.directory) / f"unreadable_{step}"
  logging.warning(
      "Checkpoint %s is unreadable (%s); moved it to %s and trying the one "
      "before.", path, _describe(error), target)
  if jax.process_index() == 0 and path.exists():
    path.rename(target)
    checksums = _checksum_path(manager, step)
    if checksums.exists():
      checksums.rename(checksums.parent / f"unreadable_{step}.json")
  manager.reload()


def set_aside_steps(manager):
  """Steps of the checkpoints set aside as unreadable_<step>, ascending."""
  folder = epath.Path(manager.directory)
  if not folder.exists():
    return []
  prefix = "unreadable_"
  return sorted(int(p.name[len(prefix):]) for p in folder.iterdir()
                if p.name.startswith(prefix) and p.name[len(prefix):].isdigit())


def _restore_step(manager, step, abstract, config):
  check_metadata_file(manager, step)
  check_compatible(manager, step, abstract, config)
  logging.info("Restoring checkpoint of step %d from %s", step,
               manager.directory)
  state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  verify_checksums(manager, step, state)
  return state


def restore_latest(method, config, manager, mesh):
  """The newest readable checkpoint's (state, step), or (None, None).

  A provably bad checkpoint (see the module docstring) is set aside as
  `unreadable_<step>` with a warning and the one before it is tried.

  Raises:
    CheckpointMismatchError: the checkpoint is of another architecture.
    CheckpointReadError: reading failed for another reason (I/O, memory,
      unknown); nothing was moved and the original error is the cause.
  """
  abstract = None
  for step in sorted(manager.all_steps(), reverse=True):
    if abstract is None:
      abstract = abstract_state(method, config, mesh)
    try:
      return _restore_step(manager, step, abstract, config), step
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # A checkpoint folder that is gone as a whole (an unmounted disk, a
      # bucket this host cannot see) is missing files, but says nothing
      # about the checkpoints: falling back would start the run over.
      if not is_corrupt(e) or not _step_path(manager, step).exists():
        raise CheckpointReadError(
            f"Could not read checkpoint {_step_path(manager, step)}: "
            f"{_describe(e)}\nThis does not show the checkpoint is damaged, "
            "so it was left in place and the run stopped rather than start "
            "over. Fix the cause (disk, network, permissions, memory) and "
            "run the same command again to resume from it.") from e
      _set_aside(manager, step, e)
  return None, None


def restore_or_init(method, config, manager, mesh, rng,
                    allow_start_over=False):
  """The newest readable checkpoint's state, or a freshly initialised one.

  Args:
    method, config, manager, mesh: the run's.
    rng: initialises the state when there is nothing to restore.
    allow_start_over: when every checkpoint of the run has been set aside as
      provably bad (now or by an earlier attempt), start from step 0 rather
      than stop.

  Returns:
    (state, step) with step 0 for a state initialised from `rng`.

  Raises:
    NoReadableCheckpointError: no readable checkpoint, some set aside, and
      not allow_start_over.
    CheckpointMismatchError, CheckpointReadError: see restore_latest.
  """
  state, step = restore_latest(method, config, manager, mesh)
  if state is not None:
    return state, step
  damaged = set_aside_steps(manager)
  if damaged and not allow_start_over:
    names = ", ".join(f"unreadable_{s}" for s in damaged)
    raise NoReadableCheckpointError(
        f"Every checkpoint in {manager.directory} is damaged and has been "
        f"set aside ({names}; the warnings above say what is wrong with "
        "each). Starting again from step 0 would throw the run's progress "
        "away, so the run stopped. To start over on purpose, run the same "
        "command with --allow_start_over (the damaged checkpoints stay where "
        "they are); to try one anyway, rename checkpoints/unreadable_<step> "
        "back to checkpoints/<step>.")
  if damaged:
    logging.warning("Every checkpoint in %s is damaged (set aside as "
                    "unreadable_*): starting over from step 0, as "
                    "--allow_start_over asks.", manager.directory)
  init = jax.jit(method.init, out_shardings=parallel.replicated(mesh))
  return init(rng, example_batch(config)), 0


def load_state(config, workdir, mesh=None):
  """The latest checkpointed state of the run in `workdir` (for sample, ...).

  Returns:
    (method, state); a method that is not `trainable` starts from its init.

  Raises:
    FileNotFoundError: no checkpoint, or none readable (all set aside).
    CheckpointMismatchError, CheckpointReadError: see restore_latest.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  method = methods.get(config)
  if not method.trainable:  # Nothing learnt, nothing saved: the floor.
    init = jax.jit(method.init, out_shardings=parallel.replicated(mesh))
    return method, init(jax.random.key(config.seed), example_batch(config))
  manager = checkpoint_manager(config, workdir)
  if manager.latest_step() is None:
    raise FileNotFoundError(
        f"No checkpoint in {manager.directory}: train first with "
        f"--mode=train --workdir={workdir}.")
  state, _ = restore_latest(method, config, manager, mesh)
  if state is None:
    raise FileNotFoundError(
        f"No readable checkpoint in {manager.directory}: every one was "
        "damaged and has been set aside as unreadable_<step>.")
  return method, state
