"""One ordered pass over a split on one host: shared by detect and eval.

`--mode=eval` and `--mode=detect` both stream every slice of a split through
one process, in the order the builders stored them (subject by subject), and
put each host batch on the device mesh.
"""

import re

import jax
import numpy as np

from genjax import parallel
from genjax.data import builders
from genjax.data import pipeline


def check_single_host():
  """eval/detect stream the whole split through one process."""
  if jax.process_count() > 1:
    raise RuntimeError(
        "--mode=eval/detect run on one host (they stream every test slice "
        f"through one process), but this job has {jax.process_count()} "
        "processes. Run it without --distributed on a single host.")


def batch_to_device(batch, mesh, batch_size):
  """(image, brain) of a host batch as jax.Arrays split over the mesh.

  Args:
    batch: a host batch of `eval_batches` (image, brain [B, H, W, 1]).
    mesh: the device mesh.
    batch_size: B, config.eval.batch_size.

  Returns:
    (images, brain): float32 [B, H, W, 1] jax.Arrays sharded over 'data'.
  """
  if batch_size % mesh.devices.size:
    raise ValueError(
        f"config.eval.batch_size={batch_size} must be divisible by the "
        f"number of devices ({mesh.devices.size}).")
  sharding = parallel.batch_sharding(mesh)
  return (jax.device_put(np.asarray(batch["image"], np.float32), sharding),
          jax.device_put(np.asarray(batch["brain"], np.float32), sharding))


def eval_batches(config, split):
  """One ordered pass over `split` in config.eval.batch_size batches."""
  return pipeline.eval_batches(config.data, split, config.eval.batch_size,
                               process_index=0, process_count=1)


def has_split(data_config, split):
  """Whether the dataset has every split named in `split`."""
  builder = builders.prepare(data_config)
  # 'validation[:50%]+test' -> validation, test (TFDS split syntax).
  names = [re.match(r"\s*([\w-]+)", part).group(1)
           for part in split.split("+") if part.strip()]
  return all(name in builder.info.splits for name in names)
