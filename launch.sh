#!/usr/bin/env bash
# Launches genjax's entry point locally, on every worker of a TPU VM pod, or as
# one process per node under SLURM. It prints what it runs and installs nothing.
#
#   ./launch.sh local CONFIG [FLAGS...]
#   ./launch.sh tpu-pod NAME ZONE CONFIG [FLAGS...]
#   ./launch.sh slurm CONFIG [FLAGS...]          # inside an sbatch script
#
# FLAGS go to `python -m experiments.main`, e.g. --workdir=gs://bucket/runs/ddpm
# --config.train.batch_size=512. On a pod the workdir must be a path every
# host sees (a gs:// bucket or a shared file system).
set -euo pipefail

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
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
