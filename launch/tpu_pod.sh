#!/usr/bin/env bash
# Runs one kajax command on every worker of a Cloud TPU VM slice (one process per host,
# jax.distributed detects the slice by itself).
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--accelerator=v4-32] [--version=IMAGE]
#       [--project=PROJECT] [--data_dir=gs://BUCKET/tensorflow_datasets] [--dry_run]
#       -- --config=configs/nyu.py --workdir=gs://BUCKET/runs/nyu [--config.x=y ...]
#
# 1. creates the slice if no TPU VM of that name exists (otherwise reuses it);
# 2. copies this checkout to every worker (git archive of HEAD plus uncommitted changes are
#    NOT included: commit first) and runs launch/tpu_setup.sh there;
# 3. runs `python -m kajax.main --jax_distributed ARGS` on all workers at once.
# The workdir must be on gs://: the hosts of a slice share no disk. TFDS data is read from
# --data_dir (TFDS_DATA_DIR on every worker), normally a gs:// bucket too.
# --dry_run prints the gcloud commands instead of running them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$here/common.sh"
repo="$(dirname "$here")"

tpu="" zone="" accelerator="v4-32" version="tpu-ubuntu2204-base" project="" data_dir=""
kajax_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --data_dir=*) data_dir="${1#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    --) shift; kajax_args=("$@"); break ;;
    *) die "unknown argument $1 (kajax's own flags go after --)" ;;
  esac
  shift
done
[[ -n "$tpu" ]] || die "--tpu=NAME is required"
[[ -n "$zone" ]] || die "--zone=ZONE is required"
[[ ${#kajax_args[@]} -gt 0 ]] || die "give the kajax flags after --, e.g. -- --config=configs/nyu.py --workdir=gs://BUCKET/run"
workdir=""
for a in "${kajax_args[@]}"; do
  [[ "$a" == --workdir=* ]] && workdir="${a#--workdir=}"
done
[[ "$workdir" == gs://* ]] || die "--workdir must be a gs:// path on a TPU slice (its hosts share no disk); got '${workdir}'"

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
[[ -n "$project" ]] && where+=("--project=$project")

# 1. Create the slice unless it exists.
if [[ "$DRY_RUN" == 1 ]]; then
  echo "# if 'describe' fails (no such TPU VM):"
  run "${gcloud_tpu[@]}" describe "$tpu" "${where[@]}"
  run "${gcloud_tpu[@]}" create "$tpu" "${where[@]}" "--accelerator-type=$accelerator" "--version=$version"
elif ! "${gcloud_tpu[@]}" describe "$tpu" "${where[@]}" >/dev/null 2>&1; then
  run "${gcloud_tpu[@]}" create "$tpu" "${where[@]}" "--accelerator-type=$accelerator" "--version=$version"
fi

# 2. The code on every worker, then the per-host setup.
archive="${TMPDIR:-/tmp}/kajax-$tpu.tar.gz"
run git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
run "${gcloud_tpu[@]}" scp "$archive" "$tpu:kajax.tar.gz" "${where[@]}" --worker=all
run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all \
  "--command=rm -rf ~/kajax && mkdir -p ~/kajax && tar -xzf ~/kajax.tar.gz -C ~/kajax && bash ~/kajax/launch/tpu_setup.sh"

# 3. One command on all workers; quote keeps every flag one word for the remote shell.
remote="cd ~/kajax &&"
[[ -n "$data_dir" ]] && remote+=" TFDS_DATA_DIR=$(quote "$data_dir")"
remote+=" ~/kajax_venv/bin/python -m kajax.main --jax_distributed"
for a in "${kajax_args[@]}"; do
  remote+=" $(quote "$a")"
done
run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all "--command=$remote"
