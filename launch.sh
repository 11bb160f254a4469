#!/usr/bin/env bash
# Launches genjax's entry point locally, as N processes of one job on this
# machine, on every worker of a TPU VM pod, or as one process per node under
# SLURM. It prints what it runs and installs nothing.
#
#   ./launch.sh local CONFIG [FLAGS...]
#   ./launch.sh local-multiprocess N CONFIG [FLAGS...]
#   ./launch.sh tpu-pod NAME ZONE CONFIG [FLAGS...]
#   ./launch.sh slurm CONFIG [FLAGS...]          # inside an sbatch script
#
# FLAGS go to `python -m experiments.main`, e.g. --workdir=gs://bucket/runs/ddpm
# --config.train.batch_size=512. On a pod the workdir must be a path every
# host sees (a gs:// bucket or a shared file system).
#
# local-multiprocess runs a multi-host job on one machine, to exercise pod
# code paths (per-host data shards, collectives across processes, process-0
# logging, multi-process checkpoints) on CPU devices talking over gloo:
#   XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
#     ./launch.sh local-multiprocess 2 configs/ddpm.py:smoke --workdir=/tmp/mp
# Output lines are prefixed with [process I]. The coordinator listens on
# localhost:$GENJAX_COORDINATOR_PORT (default: a free port). If one process
# fails the others are stopped and the launcher exits with its status.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
}

[ $# -ge 1 ] || usage
target=$1; shift
quote() { printf '%q ' "$@"; }

case "$target" in
  local)
    [ $# -ge 1 ] || usage
    config=$1; shift
    cmd=(python3 -m experiments.main "--config=$config" "$@")
    echo "+ $(quote "${cmd[@]}")"
    exec "${cmd[@]}"
    ;;
  local-multiprocess)
    [ $# -ge 2 ] || usage
    num=$1; config=$2; shift 2
    if ! [[ $num =~ ^[1-9][0-9]*$ ]]; then
      echo "local-multiprocess: N must be a positive integer, got '$num'." >&2
      exit 2
    fi
    port=${GENJAX_COORDINATOR_PORT:-$(python3 -c 'import socket
s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
    pids=()
    stop_all() {  # TERM, then KILL whatever is left after a grace period.
      local pid
      for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
      for _ in $(seq 20); do
        local alive=0
        for pid in "${pids[@]}"; do
          kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && return
        sleep 0.5
      done
      for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    }
    trap 'echo "Interrupted: stopping all processes." >&2; stop_all; exit 130' \
      INT TERM
    for ((i = 0; i < num; i++)); do
      cmd=(python3 -m experiments.main "--coordinator_address=localhost:$port"
           "--num_processes=$num" "--process_id=$i" "--config=$config" "$@")
      "${cmd[@]}" > >(awk -v p="[process $i] " '{print p $0; fflush()}') \
        2>&1 &
      pids+=($!)
      echo "+ [process $i, pid $!] $(quote "${cmd[@]}")"
    done
    # Wait for all; the first one to fail stops the others (a process left
    # alone would block in a collective until the coordinator times out).
    left=$num
    while [ "$left" -gt 0 ]; do
      for i in "${!pids[@]}"; do
        pid=${pids[$i]}
        [ "$pid" = done ] && continue
        kill -0 "$pid" 2>/dev/null && continue
        rc=0
        wait "$pid" || rc=$?
        pids[$i]=done
        left=$((left - 1))
        if [ "$rc" != 0 ]; then
          echo "Process $i (pid $pid) exited with status $rc: stopping the" \
            "others." >&2
          remaining=()
          for p in "${pids[@]}"; do [ "$p" = done ] || remaining+=("$p"); done
          pids=("${remaining[@]+"${remaining[@]}"}")
          [ ${#pids[@]} -gt 0 ] && stop_all
          exit "$rc"
        fi
      done
      [ "$left" -gt 0 ] && sleep 0.5
    done
    echo "All $num processes finished."
    ;;
  tpu-pod)
    [ $# -ge 3 ] || usage
    name=$1; zone=$2; config=$3; shift 3
    repo_dir=${GENJAX_REMOTE_DIR:-genjax}
    remote="cd $(quote "$repo_dir") && python3 -m experiments.main --distributed $(quote "--config=$config" "$@")"
    cmd=(gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all
         --command "$remote")
    echo "+ $(quote "${cmd[@]}")"
    exec "${cmd[@]}"
    ;;
  slurm)
    [ $# -ge 1 ] || usage
    config=$1; shift
    # One process per node (sbatch --ntasks-per-node=1 --gpus-per-node=N);
    # jax.distributed.initialize() reads the coordinator from SLURM's variables.
    cmd=(srun --ntasks-per-node=1 python3 -m experiments.main --distributed
         "--config=$config" "$@")
    echo "+ $(quote "${cmd[@]}")"
    exec "${cmd[@]}"
    ;;
  *)
    echo "Unknown target '$target'." >&2
    usage
    ;;
esac
