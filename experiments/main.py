r"""genjax's one entry point: `--config`, `--workdir`, `--mode`.

  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/ddpm_cpu
  python -m experiments.main --config=configs/ddpm.py:smoke --workdir=/tmp/x --mode=data
  python -m experiments.main --config=configs/ddpm.py --config.data.image_size=128 ...

Modes: data (dataset preview and statistics), train (default), sample, eval,
detect. Every config field can be overridden with `--config.FIELD=VALUE`; a
field that does not exist is rejected before anything runs.

One job over several processes (hosts): `--distributed` detects the job from
the environment (TPU pods, SLURM, Open MPI); `--coordinator_address`,
`--num_processes` and `--process_id` give it by hand (launch.sh
local-multiprocess runs N processes on one machine that way). Every run logs
one line on its devices: backend, device kind and count, process index/count.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from genjax import config as config_lib
from genjax import modes
from genjax import parallel

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/ddpm.py:cpu.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum(
    "mode", "train", modes.MODES, "What to run.")
_ALLOW_START_OVER = flags.DEFINE_bool(
    "allow_start_over", False,
    "Train from step 0 when every checkpoint in --workdir is damaged (set "
    "aside as checkpoints/unreadable_<step>); without it the run stops "
    "rather than throw its progress away. Has no effect while a readable "
    "checkpoint exists.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host: TPU pods, SLURM); "
    "launch.sh sets it. The job is detected from the environment unless "
    "--coordinator_address, --num_processes and --process_id say it.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0's coordinator (implies --distributed), e.g. "
    "localhost:12355; launch.sh local-multiprocess sets it.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None,
    "Number of processes of the job (with --coordinator_address).",
    lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None,
    "This process's index in [0, --num_processes) (with "
    "--coordinator_address).", lower_bound=0)
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv):
  """absl's flag parsing, with config mistakes turned into one clear line.

  ml_collections raises deep AttributeErrors/ValueErrors for an unknown
  `--config.x.y` or a bad variant; a researcher should see what was wrong.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"Flag error: {e}\nPass --helpshort to see the flags.")
  except (AttributeError, KeyError) as e:
    sys.exit(f"Config error: {config_lib.describe_override_error(e, argv)}")
  except (ValueError, TypeError) as e:
    sys.exit(f"Config error: {e}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _DISTRIBUTED.value or any(v is not None for v in explicit):
    try:
      parallel.initialize_distributed(*explicit)
    except ValueError as e:
      sys.exit(f"Flag error: {e}")
  # Before the config checks: their errors often name the device count.
  logging.info("Devices: %s", parallel.device_report())
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    sys.exit(f"Config error: {e}")
  logging.info("Mode %s, workdir %s, config:\n%s", _MODE.value,
               _WORKDIR.value, config)
  # pylint: disable=g-import-not-at-top
  from genjax import checkpoints
  from genjax import methods
  from genjax.data import builders
  from genjax.data import nifti
  from genjax.data import slices
  if _MODE.value == "train" and not methods.get(config).trainable:
    sys.exit(f"Config error: config.method={config.method!r} has nothing to "
             "train; run --mode=detect directly.")
  try:
    modes.run(_MODE.value, config, _WORKDIR.value,
              allow_start_over=_ALLOW_START_OVER.value)
  except (builders.DatasetError, nifti.NiftiError, slices.SliceError) as e:
    # The message names the file or folder and what to do; a traceback
    # through TFDS would only bury it.
    sys.exit(f"Data error: {e}")
  except checkpoints.NoReadableCheckpointError as e:
    sys.exit(f"Checkpoint error: {e}")
  except checkpoints.CheckpointReadError as e:
    # Nothing was moved; the cause is what the storage said.
    sys.exit(f"Checkpoint error: {e} (cause: {e.__cause__!r}). Nothing was "
             "changed in the workdir; rerun when the storage is readable.")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
