#!/usr/bin/env bash
# Per-host bootstrap of a Cloud TPU VM worker (safe to re-run): Python 3.11, a virtualenv at
# $KAJAX_VENV (default ~/kajax_venv) and kajax with its TPU extra, from the checkout this
# script lives in.
#
#   launch/tpu_setup.sh [--dry_run]
#
# launch/tpu_pod.sh runs it on every worker (--worker=all) after copying the code.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$here/common.sh"
repo="$(dirname "$here")"
venv="${KAJAX_VENV:-$HOME/kajax_venv}"

for arg in "$@"; do
  case "$arg" in
    --dry_run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) die "unknown argument $arg (tpu_setup.sh takes only --dry_run)" ;;
  esac
done

# TPU VM images ship an older Python; kajax pins Python 3.11 (see setup.cfg).
[[ "$DRY_RUN" == 1 ]] && echo "# only if python3.11 is missing:"
if [[ "$DRY_RUN" == 1 ]] || ! command -v python3.11 >/dev/null; then
  run sudo apt-get update -q
  run sudo apt-get install -y -q python3.11 python3.11-venv
fi
[[ "$DRY_RUN" == 1 ]] && echo "# only if $venv does not exist yet:"
if [[ "$DRY_RUN" == 1 ]] || [[ ! -x "$venv/bin/python" ]]; then
  run python3.11 -m venv "$venv"
fi
run "$venv/bin/python" -m pip install --quiet --upgrade pip
# Editable: a re-run after new code was copied needs no reinstall, pip only checks the pins.
run "$venv/bin/python" -m pip install --quiet -e "${repo}[tpu]"
