"""The one training loop, and the modes built on a trained state.

It knows nothing about a particular method: it calls the method interface
(`genjax.methods`), jits the train step with the state donated, feeds global
batches sharded over the device mesh, checkpoints with orbax, and writes
TensorBoard events, log lines and sample grids with clu.

Per-step randomness is `fold_in(rng, step)` and the input pipeline skips the
batches already consumed, so a run restarted from a checkpoint continues
exactly as if it had never stopped.
"""

import json
import logging as std_logging
import os
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from genjax import methods
from genjax import parallel
from genjax import viz
from genjax.data import augment
from genjax.data import pipeline

# Fields that may differ when a run is resumed (they do not change what is
# trained); anything else differing means the workdir belongs to another run.
RESUMABLE_FIELDS = (
    "train.num_steps", "train.log_every", "train.ckpt_every",
    "train.sample_every", "train.num_samples", "train.keep_checkpoints",
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


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


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
    a, b = _flatten(saved), _flatten(current)
    diff = sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k)
                  and not any(k == f or (f.endswith(".") and k.startswith(f))
                              for f in RESUMABLE_FIELDS))
    if diff:
      lines = "\n".join(f"  {k}: {a.get(k)!r} (workdir) vs {b.get(k)!r} (now)"
                        for k in diff)
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
          max_to_keep=config.train.keep_checkpoints, create=True))


def _abstract_state(method, config, mesh):
  abstract = jax.eval_shape(
      method.init, jax.random.key(0), example_batch(config))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract)


def restore_or_init(method, config, manager, mesh, rng):
  """The latest checkpoint's state, or a freshly initialised one."""
  step = manager.latest_step()
  if step is None:
    init = jax.jit(method.init, out_shardings=parallel.replicated(mesh))
    return init(rng, example_batch(config)), 0
  logging.info("Restoring checkpoint of step %d from %s", step,
               manager.directory)
  state = manager.restore(step, args=ocp.args.StandardRestore(
      _abstract_state(method, config, mesh)))
  return state, step


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
  """Augmentation + the method's step, jitted with the state donated."""
  def step_fn(state, batch, rng):
    aug_rng, step_rng = jax.random.split(rng)
    batch = augment.augment_batch(aug_rng, batch, config.augment)
    return method.train_step(state, batch, step_rng)
  rep = parallel.replicated(mesh)
  return jax.jit(step_fn, in_shardings=(rep, parallel.batch_sharding(mesh),
                                        rep),
                 out_shardings=(rep, rep), donate_argnums=0)


def _mean_metrics(history):
  """Mean of each metric over the steps since the last log; first bad step."""
  stacked = jax.device_get(history)
  keys = stacked[0].keys()
  means = {k: float(np.mean([m[k] for m in stacked])) for k in keys}
  for offset, m in enumerate(stacked):
    bad = [k for k in keys if not np.all(np.isfinite(m[k]))]
    if bad:
      return means, offset, bad
  return means, None, None


def write_samples(method, state, rng, n, path, writer=None, step=None):
  """Draws n samples, writes a PNG grid (and a TensorBoard image)."""
  images = np.asarray(jax.device_get(method.sample(state, rng, n)))
  tile = viz.image_grid(images, ncols=int(np.ceil(np.sqrt(n))), upscale=2)
  viz.save_png(path, tile)
  if writer is not None:
    writer.write_images(step, {"samples": tile[None, ..., None]})
  return images


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains `config.method` for config.train.num_steps, resuming if possible.

  Returns:
    The final state.
  """
  check_workdir_config(config, workdir)
  method = methods.get(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  init_rng, step_rng, sample_rng = jax.random.split(
      jax.random.key(config.seed), 3)

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
    is_last = done == num_steps
    if done % config.train.log_every == 0 or is_last or (
        done % config.train.ckpt_every == 0):
      means, bad_offset, bad_keys = _mean_metrics(history)
      if bad_offset is not None:
        bad_step = done - len(history) + bad_offset + 1
        manager.wait_until_finished()
        raise NonFiniteError(
            f"Non-finite {', '.join(bad_keys)} at step {bad_step}: stopped "
            f"without checkpointing it. The last good checkpoint is step "
            f"{manager.latest_step()} in {manager.directory}. Lower "
            "config.optim.learning_rate or check the data.")
      writer.write_scalars(done, means)
      history = []
    if done % config.train.ckpt_every == 0 or is_last:
      manager.save(done, args=ocp.args.StandardSave(state))
    if done % config.train.sample_every == 0 or is_last:
      write_samples(method_for_samples, state,
                    jax.random.fold_in(sample_rng, done),
                    config.train.num_samples,
                    os.path.join(workdir, "samples", f"step_{done:07d}.png"),
                    writer, done)
  manager.wait_until_finished()
  writer.flush()
  logging.info("Trained %d steps in %.1f s.", num_steps - start_step,
               time.time() - t_start)
  return state


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


