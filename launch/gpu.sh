#!/usr/bin/env bash
# Runs kajax on the GPUs of this host, or of several hosts (one process per host).
#
#   launch/gpu.sh [--setup] [--dry_run] -- --config=configs/nyu.py --workdir=DIR [--config.x=y]
#
# One host: one process uses every local GPU (data parallel over the device mesh).
# Several hosts: run this script on each of them with
#   JAX_COORDINATOR_ADDRESS=host0:1234  (process 0's address and a free port)
#   JAX_NUM_PROCESSES=N                 (number of hosts)
#   JAX_PROCESS_ID=i                    (0 on host0, then 1 .. N-1)
# (under SLURM with one task per node nothing is needed: jax.distributed reads SLURM's
# variables). The workdir must be visible to every host (a shared filesystem or gs://).
# --setup first creates $KAJAX_VENV (default ~/kajax_venv) with kajax's CUDA extra.
# --dry_run prints the commands instead of running them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$here/common.sh"
repo="$(dirname "$here")"
venv="${KAJAX_VENV:-$HOME/kajax_venv}"

setup=0
kajax_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --setup) setup=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    --) shift; kajax_args=("$@"); break ;;
    *) die "unknown argument $1 (kajax's own flags go after --)" ;;
  esac
  shift
done
[[ ${#kajax_args[@]} -gt 0 ]] || die "give the kajax flags after --, e.g. -- --config=configs/nyu.py --workdir=/shared/run"

if [[ "$setup" == 1 ]]; then
  [[ "$DRY_RUN" == 1 ]] && echo "# only if $venv does not exist yet:"
  if [[ "$DRY_RUN" == 1 ]] || [[ ! -x "$venv/bin/python" ]]; then
    run python3.11 -m venv "$venv"
  fi
  run "$venv/bin/python" -m pip install --quiet -e "${repo}[cuda]"
fi

python="$venv/bin/python"
[[ -x "$python" || "$DRY_RUN" == 1 ]] || python="python"
distributed=()
num_processes="${JAX_NUM_PROCESSES:-${SLURM_NTASKS:-1}}"
if [[ "$num_processes" -gt 1 ]]; then
  distributed=(--jax_distributed)
  if [[ -n "${JAX_NUM_PROCESSES:-}" ]]; then
    [[ -n "${JAX_COORDINATOR_ADDRESS:-}" ]] || die "JAX_NUM_PROCESSES=$JAX_NUM_PROCESSES needs JAX_COORDINATOR_ADDRESS=host0:port"
    [[ -n "${JAX_PROCESS_ID:-}" ]] || die "JAX_NUM_PROCESSES=$JAX_NUM_PROCESSES needs JAX_PROCESS_ID (0 .. $((JAX_NUM_PROCESSES - 1)))"
    distributed+=("--coordinator_address=$JAX_COORDINATOR_ADDRESS"
                  "--num_processes=$JAX_NUM_PROCESSES" "--process_id=$JAX_PROCESS_ID")
  fi
fi
cd "$repo"
run "$python" -m kajax.main "${distributed[@]}" "${kajax_args[@]}"
