# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, not run): dry-run aware command execution.

DRY_RUN=0

# quote ARG: ARG as one shell word (bare when safe, else in single quotes).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# run CMD ARGS...: under --dry_run prints the command on one line, each argument one shell
# word (what a user can paste); otherwise runs it.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local out="" a
    for a in "$@"; do
      out+="${out:+ }$(quote "$a")"
    done
    echo "$out"
  else
    "$@"
  fi
}

die() {
  echo "error: $*" >&2
  exit 2
}
