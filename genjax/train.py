"""The one training loop, and the modes built on a trained state.

It knows nothing about a particular method: it calls the method interface
(`genjax.methods`), jits the train step with the state donated, feeds global
batches sharded over the device mesh, checkpoints with orbax, and writes
TensorBoard events, log lines and sample grids with clu.

Per-step randomness is `fold_in(rng, step)` and the input pipeline skips the
batches already consumed, so a run restarted from a checkpoint continues
exactly as if it had never stopped.
"""

import glob
import importlib
import json
import logging as std_logging
import os
import signal
import threading
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
from tensorflow.core.util import event_pb2

from genjax import methods
from genjax import optim
from genjax import parallel
from genjax import viz
from genjax.data import augment
from genjax.data import pipeline
from genjax.data import smote

# Fields that may differ when a run is resumed (they do not change what is
# trained); anything else differing means the workdir belongs to another run.
# compute_dtype and grad_accum_steps change how an update is computed, not
# which one (same parameters, same global batch), so a run can move to other
# hardware.
RESUMABLE_FIELDS = (
    "train.num_steps", "train.log_every", "train.ckpt_every",
    "train.sample_every", "train.num_samples", "train.keep_checkpoints",
    "train.compute_dtype", "train.grad_accum_steps",
    "data.data_dir", "data.manual_dir", "data.prefetch", "data.cache",
    "sample.", "anomaly.", "eval.",
)


def _quiet_orbax():
  """Orbax logs every save at INFO, several lines each; keep its warnings."""
  def keep(record):
    return (record.levelno >= std_logging.WARNING
            or "/orbax/" not in record.pathname)
  logging.get_absl_logger().addFilter(keep)


_quiet_orbax()


class NonFiniteError(FloatingPointError):
  """Training produced NaN/inf; no checkpoint of it was written."""


class WorkdirMismatchError(ValueError):
  """The workdir holds a run made with a different config."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the configured method/architecture."""


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
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
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
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(current, f, indent=2)


def example_batch(config):
  """Zeros shaped like one global training batch (for init and tracing)."""
  b, s = config.train.batch_size, config.data.image_size
  return {
      "image": jnp.zeros((b, s, s, 1), jnp.float32),
      "mask": jnp.zeros((b, s, s, 1), jnp.float32),
      "brain": jnp.zeros((b, s, s, 1), jnp.float32),
      "label": jnp.zeros((b,), jnp.int32),
  }


def checkpoint_manager(config, workdir):
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.train.keep_checkpoints, create=True),
      item_handlers=ocp.StandardCheckpointHandler())


def _abstract_state(method, config, mesh):
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


def _shapes(tree):
  """{'params/conv_in/kernel': shape}: dataclass fields, dict keys and tuple
  indices all become path parts, as they are in a checkpoint's metadata."""
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_compatible(manager, step, abstract, config):
  """Raises CheckpointMismatchError if the checkpoint's arrays do not fit.

  A checkpoint of another method or architecture would otherwise fail deep
  inside orbax/tensorstore; this lists what differs.
  """
  metadata = manager.item_metadata(step)
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


def _set_aside(manager, step, error):
  """Moves an unreadable checkpoint out of the manager's way, keeping it."""
  path = os.path.join(manager.directory, str(step))
  target = os.path.join(manager.directory, f"unreadable_{step}")
  logging.warning(
      "Checkpoint %s is unreadable (%s: %s); moved it to %s and trying the "
      "one before.", path, type(error).__name__, str(error)[:300], target)
  if jax.process_index() == 0 and os.path.exists(path):
    os.replace(path, target)
  manager.reload()


def restore_or_init(method, config, manager, mesh, rng):
  """The newest readable checkpoint's state, or a freshly initialised one.

  A truncated or corrupted checkpoint is set aside with a warning and the one
  before it is used; a checkpoint of another architecture is an error.

  Returns:
    (state, step) with step 0 for a fresh state.
  """
  abstract = None
  for step in sorted(manager.all_steps(), reverse=True):
    if abstract is None:
      abstract = _abstract_state(method, config, mesh)
    try:
      check_compatible(manager, step, abstract, config)
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(manager, step, e)
      continue
    logging.info("Restoring checkpoint of step %d from %s", step,
                 manager.directory)
    try:
      return manager.restore(
          step, args=ocp.args.StandardRestore(abstract)), step
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(manager, step, e)
  init = jax.jit(method.init, out_shardings=parallel.replicated(mesh))
  return init(rng, example_batch(config)), 0


def load_state(config, workdir, mesh=None):
  """The latest checkpointed state of the run in `workdir` (for sample, ...)."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  method = methods.get(config)
  manager = checkpoint_manager(config, workdir)
  if manager.latest_step() is None:
    raise FileNotFoundError(
        f"No checkpoint in {manager.directory}: train first with "
        f"--mode=train --workdir={workdir}.")
  state, _ = restore_or_init(method, config, manager, mesh, None)
  return method, state


def _make_train_step(method, config, mesh):
  """Augmentation + the method's step, jitted with the state donated.

  With config.train.skip_nonfinite, an update whose metrics or new state hold
  NaN/inf is dropped (the state passes through unchanged) and counted in the
  `skipped` metric, instead of stopping the run.
  """
  skip = config.train.skip_nonfinite

  def step_fn(state, batch, rng):
    aug_rng, step_rng = jax.random.split(rng)
    batch = augment.augment_batch(aug_rng, batch, config.augment)
    batch = smote.synthesize(jax.random.fold_in(aug_rng, 1), batch,
                             config.smote)
    new_state, metrics = method.train_step(state, batch, step_rng)
    if skip:
      ok = optim.tree_is_finite(metrics) & optim.tree_is_finite(new_state)
      # A cond, not a per-leaf jnp.where: with `where`, XLA on CPU fuses the
      # finiteness reductions into every parameter's update and compiles the
      # smoke DDPM's step in 155 s instead of 12 s (same runtime either way).
      new_state = jax.lax.cond(ok, lambda: new_state, lambda: state)
      metrics = dict(metrics, skipped=(~ok).astype(jnp.float32))
    return new_state, metrics
  rep = parallel.replicated(mesh)
  return jax.jit(step_fn, in_shardings=(rep, parallel.batch_sharding(mesh),
                                        rep),
                 out_shardings=(rep, rep), donate_argnums=0)


def _mean_metrics(history, skip_nonfinite, first_step=0, reported=None):
  """Means over the steps since the last log, and the first non-finite step.

  Args:
    history: the metrics dicts of consecutive steps.
    skip_nonfinite: config.train.skip_nonfinite.
    first_step: the (pre-update) step of history[0].
    reported: the method's `reported(step, name)`, or None (all reported).
      A metric's mean is over the steps that report it; a metric no step
      reports is left out.

  Returns:
    (means, offset, keys): offset (into history) and metric names of the
    first step with a non-finite metric, or (means, None, None). With
    skip_nonfinite, skipped steps are left out of the means, `skipped` is
    their count, and nothing is reported as non-finite.
  """
  history = jax.device_get(history)
  keys = [k for k in history[0] if k != "skipped"]
  use = lambda i, k: reported is None or reported(first_step + i, k)
  kept = [i for i, m in enumerate(history)
          if not (skip_nonfinite and m["skipped"])]
  means = {}
  for k in keys:
    values = [history[i][k] for i in kept if use(i, k)]
    if values:
      means[k] = float(np.mean(values))
    elif skip_nonfinite and any(use(i, k) for i in range(len(history))):
      means[k] = float("nan")  # Reported, but every such step was skipped.
  if skip_nonfinite:
    means["skipped"] = float(sum(m["skipped"] for m in history))
    return means, None, None
  for offset, m in enumerate(history):
    bad = [k for k in keys if not np.all(np.isfinite(m[k]))]
    if bad:
      return means, offset, bad
  return means, None, None


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after every step.

  On several hosts the stop must happen at the same step everywhere, so there
  orbax's coordinated `reached_preemption` decides instead of the local flag.
  """

  def __init__(self, manager):
    self.manager = manager
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint after this step.")
    self.requested = True

  def reached(self, step):
    if jax.process_count() > 1:
      return bool(self.manager.reached_preemption(step))
    return self.requested


def write_samples(method, state, rng, n, path, writer=None, step=None):
  """Draws n samples, writes a PNG grid (and a TensorBoard image)."""
  images = np.asarray(jax.device_get(method.sample(state, rng, n)))
  tile = viz.image_grid(images, ncols=int(np.ceil(np.sqrt(n))), upscale=2)
  viz.save_png(path, tile)
  if writer is not None:
    writer.write_images(step, {"samples": tile[None, ..., None]})
  return images


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None):
  """Trains `config.method` for config.train.num_steps, resuming if possible.

  Args:
    config: the experiment config.
    workdir: checkpoints, logs and samples go here.
    devices: the devices to train on; None means all devices of all hosts.

  Returns:
    The final state.
  """
  check_workdir_config(config, workdir)
  method = methods.get(config)
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_size(config.train.batch_size, mesh,
                             config.train.grad_accum_steps)
  step_rng, sample_rng = jax.random.split(jax.random.key(config.seed))
  # Initialisation draws one random tensor per parameter; XLA on CPU compiles
  # threefry draws slowly (17 s vs 3 s for a small UNet), so init uses 'rbg'.
  init_rng = jax.random.key(config.seed, impl="rbg")

  manager = checkpoint_manager(config, workdir)
  state, start_step = restore_or_init(method, config, manager, mesh, init_rng)
  num_steps = config.train.num_steps
  if start_step >= num_steps:
    logging.info("Checkpoint at step %d >= num_steps=%d: nothing to train.",
                 start_step, num_steps)
    return state

  batches = pipeline.train_iterator(
      config.data, config.train.batch_size, seed=config.seed,
      start_step=start_step)
  train_step = _make_train_step(method, config, mesh)
  sample_fn = jax.jit(method.sample, static_argnums=2)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer,
      every_steps=config.train.log_every)
  method_for_samples = method._replace(sample=sample_fn)

  logging.info("Training %s from step %d to %d on %d device(s).",
               config.method, start_step, num_steps, mesh.devices.size)
  with _Preemption(manager) as preemption:
    state = _train_loop(config, workdir, mesh, method_for_samples, state,
                        start_step, batches, train_step, manager, writer,
                        progress, preemption, (step_rng, sample_rng))
  manager.wait_until_finished()
  writer.flush()
  return state


def _train_loop(config, workdir, mesh, method, state, start_step, batches,
                train_step, manager, writer, progress, preemption, rngs):
  """Steps from start_step to num_steps (or a preemption), with side effects."""
  step_rng, sample_rng = rngs
  num_steps = config.train.num_steps
  history = []
  t_start = time.time()
  for step in range(start_step, num_steps):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = parallel.to_global(next(batches), mesh)
      state, metrics = train_step(state, batch,
                                  jax.random.fold_in(step_rng, step))
    history.append(metrics)
    done = step + 1
    progress(done)
    preempted = preemption.reached(done)
    is_last = done == num_steps or preempted
    if done % config.train.log_every == 0 or is_last or (
        done % config.train.ckpt_every == 0):
      means, bad_offset, bad_keys = _mean_metrics(
          history, config.train.skip_nonfinite, done - len(history),
          method.reported)
      if bad_offset is not None:
        bad_step = done - len(history) + bad_offset + 1
        manager.wait_until_finished()
        raise NonFiniteError(
            f"Non-finite {', '.join(bad_keys)} at step {bad_step}: stopped "
            f"without checkpointing it. The last good checkpoint is step "
            f"{manager.latest_step()} in {manager.directory}. Lower the "
            "learning rate(s) (config.optim*), check the data, or set "
            "config.train.skip_nonfinite=True to drop such updates.")
      writer.write_scalars(done, means)
      history = []
    if done % config.train.ckpt_every == 0 or is_last:
      manager.save(done, args=ocp.args.StandardSave(state))
    if preempted:
      manager.wait_until_finished()
      logging.warning("Preempted: saved step %d in %s; run the same command "
                      "again to resume.", done, manager.directory)
      return state
    if done % config.train.sample_every == 0 or is_last:
      write_samples(method, state,
                    jax.random.fold_in(sample_rng, done),
                    config.train.num_samples,
                    os.path.join(workdir, "samples", f"step_{done:07d}.png"),
                    writer, done)
  logging.info("Trained %d steps in %.1f s.", num_steps - start_step,
               time.time() - t_start)
  return state


def read_scalars(workdir, tag):
  """Sorted (step, value) pairs of one scalar tag from the event files."""
  points = {}
  pattern = os.path.join(workdir, "events.out.tfevents.*")
  for path in sorted(glob.glob(pattern)):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == tag:
          points[event.step] = float(tf.make_ndarray(value.tensor))
  return sorted(points.items())


def sample_mode(config, workdir):
  """`--mode=sample`: DIR/sample/grid.png and DIR/sample/samples.npy."""
  method, state = load_state(config, workdir)
  out_dir = os.path.join(workdir, "sample")
  rng = jax.random.fold_in(jax.random.key(config.seed), 1_000_003)
  sample_fn = jax.jit(method.sample, static_argnums=2)
  images = write_samples(method._replace(sample=sample_fn), state, rng,
                         config.sample.num_samples,
                         os.path.join(out_dir, "grid.png"))
  np.save(os.path.join(out_dir, "samples.npy"), images)
  logging.info("Wrote %d samples to %s", len(images), out_dir)
  return images


