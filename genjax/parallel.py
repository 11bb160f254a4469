"""Data parallelism: one ('data',) Mesh over every device of every host.

Parameters and optimiser state are replicated; the batch is split along its
first axis over the `data` axis. `jax.jit` with these shardings is the whole
mechanism: the same code runs on 1 CPU, 8 GPUs or a multi-host TPU pod.
"""

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None):
  """A 1-D mesh over all devices (all hosts), axis name 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharding(mesh):
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size, mesh, grad_accum_steps=1):
  """The global batch must split evenly over devices, hosts and micro-batches.

  With gradient accumulation every device's share of the batch is split into
  `grad_accum_steps` micro-batches (genjax.optim.micro_batches), so the batch
  must divide by grad_accum_steps x devices.
  """
  n_dev, n_proc, k = mesh.devices.size, jax.process_count(), grad_accum_steps
  if global_batch_size % (n_dev * k) or global_batch_size % n_proc:
    accum = (f" times config.train.grad_accum_steps ({k})" if k > 1 else "")
    raise ValueError(
        f"config.train.batch_size={global_batch_size} must be divisible by the "
        f"number of devices ({n_dev}){accum} and hosts ({n_proc}); choose a "
        f"multiple of {np.lcm(n_dev * k, n_proc)}.")


def to_global(local_batch, mesh):
  """Host-local numpy batch -> global jax.Arrays sharded over `data`.

  Non-numeric entries (subject ids) stay on the host and are dropped here:
  jitted steps only see arrays.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "biuf":
      out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out
