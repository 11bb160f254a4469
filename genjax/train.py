"""The one training loop, and the modes built on a trained state.

It knows nothing about a particular method: it calls the method interface
(`genjax.methods`), jits the train step with the state donated, feeds global
batches sharded over the device mesh, checkpoints through `genjax.checkpoints`
(which owns the workdir, its saved config and restoring), and writes
TensorBoard events, log lines and sample grids with clu.

Per-step randomness is `fold_in(rng, step)` and the input pipeline starts at
the batch of the restored step, so a run restarted from a checkpoint
continues exactly as if it had never stopped.
"""

import glob
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
import tensorflow as tf
from tensorflow.core.util import event_pb2

from genjax import checkpoints
from genjax import methods
from genjax import optim
from genjax import parallel
from genjax import viz
from genjax.data import augment
from genjax.data import pipeline
from genjax.data import smote
# The workdir, saved config and checkpoints live in genjax.checkpoints; these
# names stay importable from here for the modes and scripts that use them.
# pylint: disable=unused-import,g-multiple-import
from genjax.checkpoints import (
    RESUMABLE_FIELDS, CheckpointCorruptError, CheckpointMismatchError,
    CheckpointReadError, WorkdirMismatchError, added_field_differences,
    check_compatible, check_workdir_config, checkpoint_manager,
    config_file_defaults, example_batch, flatten_config, load_state,
    restore_or_init)
# pylint: enable=unused-import,g-multiple-import


class NonFiniteError(FloatingPointError):
  """Training produced NaN/inf; no checkpoint of it was written."""


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
  method = methods.get(config)
  if not method.trainable:
    raise ValueError(
        f"config.method={config.method!r} has nothing to train: run "
        "--mode=detect directly.")
  checkpoints.check_workdir_config(config, workdir)
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_size(config.train.batch_size, mesh,
                             config.train.grad_accum_steps)
  step_rng, sample_rng = jax.random.split(jax.random.key(config.seed))
  # Initialisation draws one random tensor per parameter; XLA on CPU compiles
  # threefry draws slowly (17 s vs 3 s for a small UNet), so init uses 'rbg'.
  init_rng = jax.random.key(config.seed, impl="rbg")

  manager = checkpoints.checkpoint_manager(config, workdir)
  state, start_step = checkpoints.restore_or_init(method, config, manager,
                                                  mesh, init_rng)
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
      checkpoints.save(manager, done, state)
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
  method, state = checkpoints.load_state(config, workdir)
  out_dir = os.path.join(workdir, "sample")
  rng = jax.random.fold_in(jax.random.key(config.seed), 1_000_003)
  sample_fn = jax.jit(method.sample, static_argnums=2)
  images = write_samples(method._replace(sample=sample_fn), state, rng,
                         config.sample.num_samples,
                         os.path.join(out_dir, "grid.png"))
  np.save(os.path.join(out_dir, "samples.npy"), images)
  logging.info("Wrote %d samples to %s", len(images), out_dir)
  return images


