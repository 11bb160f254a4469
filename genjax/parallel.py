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


def initialize_distributed(coordinator_address=None, num_processes=None,
                           process_id=None):
  """Joins this process to a multi-process JAX job (`jax.distributed`).

  With no arguments JAX detects the job from its environment (Cloud TPU VMs,
  SLURM, Open MPI). Otherwise all three arguments are needed: that is how
  `launch.sh local-multiprocess` starts N processes on one machine (CPU
  devices talk over gloo) and how any other cluster can be driven by hand.
  Must run before anything touches a JAX device.

  Args:
    coordinator_address: "host:port" of process 0's coordinator service.
    num_processes: the number of processes in the job.
    process_id: this process, in [0, num_processes).

  Raises:
    ValueError: only some of the three arguments given, or inconsistent.
  """
  given = {"coordinator_address": coordinator_address,
           "num_processes": num_processes, "process_id": process_id}
  missing = [k for k, v in given.items() if v is None]
  if missing and len(missing) < len(given):
    raise ValueError(
        f"Multi-process flags need each other: {', '.join(missing)} "
        f"missing (given: {', '.join(k for k in given if k not in missing)})."
        " Pass --coordinator_address, --num_processes and --process_id "
        "together, or none of them to detect the job (TPU pod, SLURM).")
  if not missing:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(
          f"--process_id={process_id} must be in [0, --num_processes="
          f"{num_processes}).")
    if ":" not in coordinator_address:
      raise ValueError(
          f"--coordinator_address={coordinator_address!r} must be host:port, "
          "e.g. localhost:12355.")
  # CPU devices of different processes need a collectives implementation;
  # gloo (TCP) is JAX's default since 0.4.3x, set here for the versions
  # whose default is none. GPUs and TPUs use their own (NCCL, ICI/DCN).
  if getattr(jax.config, "jax_cpu_collectives_implementation", None) is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def device_report():
  """One line on what this process runs on, for the log of every run.

  E.g. "backend cpu, 8 x cpu devices (4 on this process), process 0 of 2".
  """
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f"backend {jax.default_backend()}, {len(devices)} x "
          f"{'/'.join(kinds)} device(s) ({jax.local_device_count()} on this "
          f"process), process {jax.process_index()} of {jax.process_count()}")
