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

import signal
import struct
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
from genjax import files
from genjax import methods
from genjax import optim
from genjax import parallel
from genjax import viz
from genjax.data import augment
from genjax.data import pipeline
from genjax.data import smote
from genjax.diffusion import samplers
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


class Preempted(Exception):
  """SIGTERM stopped sampling or detection between two chunks of work.

  Nothing of the interrupted output was written; the same command redoes it.
  """


class Preemption:
  """Turns SIGTERM into a flag checked between chunks of work.

  Training checks it after every step (`reached`); sampling between chunks of
  its steps and detection between batches (`stop_requested`). On several
  hosts a training stop must happen at the same step everywhere, so there
  orbax's coordinated `reached_preemption` decides instead of the local flag,
  and sampling is not stopped part-way (every host must run it whole).
  """

  def __init__(self, manager=None):
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
    what = ("saving a checkpoint after this step" if self.manager is not None
            else "stopping after this chunk, writing nothing of it")
    logging.warning("SIGTERM received: %s.", what)
    self.requested = True

  def reached(self, step):
    if jax.process_count() > 1:
      return bool(self.manager.reached_preemption(step))
    return self.requested

  def stop_requested(self):
    """Whether to stop between chunks (never part-way on several hosts)."""
    return self.requested and jax.process_count() == 1


_Preemption = Preemption  # The name tests and older scripts use.


# Seconds between two progress lines of sampling and detection.
PROGRESS_EVERY_S = 30.0


class Progress:
  """Logs 'what: done/total unit (pct), elapsed, ETA' as work advances.

  At most one line every `every_s` seconds, plus the first and the last.
  The rate (and so the ETA) is measured from the first report on, so that
  compilation before it does not count.
  """

  def __init__(self, what, unit="steps", total=None, every_s=None):
    self.what, self.unit, self.total = what, unit, total
    self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
    self._first = self._last = None

  def __call__(self, done, total=None, final=False):
    """Reports `done` (of `total`); `final` forces the line (the last)."""
    total = self.total if total is None else total
    now = time.time()
    if self._first is None:
      self._first = (now, done)
    elif (now - self._last < self.every_s and not final
          and not (total is not None and done >= total)):
      return
    self._last = now
    t0, done0 = self._first
    rate = (done - done0) / (now - t0) if now > t0 and done > done0 else None
    if total:
      line = f"{done}/{total} {self.unit} ({100.0 * done / total:.0f}%)"
    else:
      line = f"{done} {self.unit}"
    line += f", {now - t0:.1f} s"
    if rate:
      line += f", {rate:.3g} {self.unit}/s"
      if total and done < total:
        line += f", ETA {(total - done) / rate:.0f} s"
    logging.info("%s: %s", self.what, line)


# Sampling steps between two progress reports / SIGTERM checks.
SAMPLE_CHUNK_STEPS = 50


def make_sample_fn(method, chunk_steps=SAMPLE_CHUNK_STEPS):
  """jit(method.sample) whose sampler runs in chunks (`samplers.chunked`).

  The chunks report progress and stop on SIGTERM through `draw_samples`;
  without a stop the samples equal the unchunked sampler's exactly.
  """
  def sample(state, rng, n):
    with samplers.chunked(chunk_steps):
      return method.sample(state, rng, n)
  return jax.jit(sample, static_argnums=2)


def _in_thread(fn):
  """fn() run in a worker thread while this one waits in Python.

  A SIGTERM's Python handler runs only between bytecodes of the main
  thread; blocked in a jitted call (which may run synchronously), the main
  thread would set the stop flag only once the whole run is done. Waiting
  here, it sets it at once, and the next chunk's callback reads it.
  """
  out = {}

  def work():
    try:
      out["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      out["error"] = e
  worker = threading.Thread(target=work, name="genjax-sampling", daemon=True)
  worker.start()
  while worker.is_alive():
    worker.join(0.05)
  if "error" in out:
    raise out["error"]
  return out["value"]


def draw_samples(sample_fn, state, rng, n, preemption=None, what="Sampling"):
  """sample_fn(state, rng, n) on the host, with progress and SIGTERM.

  Args:
    sample_fn: from `make_sample_fn` (any sample function works; one without
      chunks reports nothing and is not stopped part-way).
    state, rng, n: its arguments.
    preemption: a `Preemption` (None: no stop).
    what: the log lines' prefix.

  Returns:
    numpy [n, H, W, 1] samples.

  Raises:
    Preempted: SIGTERM arrived; the samples were abandoned.
  """
  progress = Progress(f"{what} {n} samples")
  stopping = lambda: preemption is not None and preemption.stop_requested()

  def on_chunk(done, total):
    progress(done, total)
    return stopping()

  with samplers.monitor(on_chunk):
    images = _in_thread(lambda: np.asarray(jax.device_get(
        sample_fn(state, rng, n))))
  if stopping():
    raise Preempted(f"{what}: stopped by SIGTERM before the samples were "
                    "complete; nothing was written.")
  return images


def write_samples(method, state, rng, n, path, writer=None, step=None,
                  preemption=None):
  """Draws n samples, writes a PNG grid (and a TensorBoard image).

  `method.sample` should come from `make_sample_fn` for progress lines and a
  clean stop on SIGTERM (`Preempted`, with nothing written).
  """
  images = draw_samples(method.sample, state, rng, n, preemption)
  tile = viz.image_grid(images, ncols=int(np.ceil(np.sqrt(n))), upscale=2)
  # Every process samples (the sampler is one sharded program); only
  # process 0 writes, as with the events and config.json.
  if jax.process_index() == 0:
    viz.save_png(path, tile)
  if writer is not None:
    writer.write_images(step, {"samples": tile[None, ..., None]})
  return images


def _grid_path(workdir, step):
  return files.join(workdir, "samples", f"step_{step:07d}.png")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None, allow_start_over=False):
  """Trains `config.method` for config.train.num_steps, resuming if possible.

  Args:
    config: the experiment config.
    workdir: checkpoints, logs and samples go here.
    devices: the devices to train on; None means all devices of all hosts.
    allow_start_over: start from step 0 when every checkpoint in `workdir`
      is damaged (set aside) instead of raising NoReadableCheckpointError.

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
  state, start_step = checkpoints.restore_or_init(
      method, config, manager, mesh, init_rng,
      allow_start_over=allow_start_over)
  num_steps = config.train.num_steps
  if start_step >= num_steps:
    logging.info("Checkpoint at step %d >= num_steps=%d: nothing to train.",
                 start_step, num_steps)
    if start_step == num_steps and not files.exists(
        _grid_path(workdir, num_steps)):
      # A SIGTERM stopped the last grid after the last checkpoint: redo it.
      with Preemption(manager) as preemption:
        try:
          write_samples(method._replace(sample=make_sample_fn(method)), state,
                        jax.random.fold_in(sample_rng, num_steps),
                        config.train.num_samples,
                        _grid_path(workdir, num_steps),
                        preemption=preemption)
        except Preempted as e:
          logging.warning("%s", e)
    return state

  batches = pipeline.train_iterator(
      config.data, config.train.batch_size, seed=config.seed,
      start_step=start_step)
  train_step = _make_train_step(method, config, mesh)
  sample_fn = make_sample_fn(method)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer,
      every_steps=config.train.log_every)
  method_for_samples = method._replace(sample=sample_fn)

  logging.info("Training %s from step %d to %d on %d device(s).",
               config.method, start_step, num_steps, mesh.devices.size)
  with Preemption(manager) as preemption:
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
      try:
        write_samples(method, state, jax.random.fold_in(sample_rng, done),
                      config.train.num_samples, _grid_path(workdir, done),
                      writer, done, preemption)
      except Preempted:
        if manager.latest_step() != done:
          checkpoints.save(manager, done, state)
        manager.wait_until_finished()
        logging.warning("Preempted while drawing the samples of step %d: "
                        "saved step %d in %s, no grid; run the same command "
                        "again to resume.", done, done, manager.directory)
        return state
  logging.info("Trained %d steps in %.1f s.", num_steps - start_step,
               time.time() - t_start)
  return state


def _tfrecords(data):
  """The records of a TFRecord file's bytes (lengths read, CRCs skipped)."""
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    start = offset + 12
    if start + length + 4 > len(data):
      return  # A record still being written.
    yield data[start:start + length]
    offset = start + length + 4


def read_scalars(workdir, tag):
  """Sorted (step, value) pairs of one scalar tag from the event files."""
  points = {}
  for path in files.glob(workdir, "events.out.tfevents.*"):
    for record in _tfrecords(files.read_bytes(path)):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        if value.tag == tag:
          points[event.step] = float(tf.make_ndarray(value.tensor))
  return sorted(points.items())


def sample_mode(config, workdir):
  """`--mode=sample`: DIR/sample/grid.png and DIR/sample/samples.npy.

  Progress is logged with an ETA; a SIGTERM stops between chunks of steps
  with `Preempted` and writes nothing (the same command starts over).
  """
  method, state = checkpoints.load_state(config, workdir)
  out_dir = files.join(workdir, "sample")
  rng = jax.random.fold_in(jax.random.key(config.seed), 1_000_003)
  with Preemption() as preemption:
    images = write_samples(method._replace(sample=make_sample_fn(method)),
                           state, rng, config.sample.num_samples,
                           files.join(out_dir, "grid.png"),
                           preemption=preemption)
  files.save_npy(files.join(out_dir, "samples.npy"), images)
  logging.info("Wrote %d samples to %s", len(images), out_dir)
  return images


