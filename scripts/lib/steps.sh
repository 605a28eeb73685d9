# shellcheck shell=bash
# The step framework of the end-to-end scripts (e2e.sh, scaleout.sh): timestamped log lines, named
# steps with their durations, commands whose output goes to a log file shown on failure. Source it
# after setting:
#   STEPS_TAG      the log prefix (e2e, scaleout)
#   CMD_TIMEOUT    seconds one client command may take; CMD_TIMEOUT_VAR names the variable that sets it
#   LOGS           the directory `run` writes NAME.log into (may be set later, before the first `run`)
#   SKOPEO_CACHE   root's skopeo blob-info cache file
#   STEP_WIDTH     (optional) width of a step's name in the summary, default 80
#   NEED_HINT      (optional) how to install a missing command, for `need`
# It keeps PASSED (the summary lines of the steps passed), STEP (the current step, "" between steps)
# and STEP_T0.

PASSED=()
STEP="setup"
STEP_T0=$EPOCHREALTIME

log() { printf '[%s %s] %s\n' "$STEPS_TAG" "$(date +%T)" "$*"; }
ok() { log "  ok: $*"; }
warn() { log "  WARNING: $*"; }
die() {
  log "FAIL: $*"
  exit 1
}

secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

step() {
  STEP=$1
  STEP_T0=$EPOCHREALTIME
  log "=== $STEP"
}

step_passed() {
  local t
  t=$(secs_since "$STEP_T0")
  PASSED+=("$(printf "%-${STEP_WIDTH:-80}s %7ss" "$STEP" "$t")")
  log "=== passed: $STEP (${t}s)"
  STEP=""
}

# run NAME CMD...: run CMD with its output in $LOGS/NAME.log; on failure print that log and fail.
run() {
  local name=$1
  shift
  log "  \$ $*"
  local rc=0
  timeout -k 10 "$CMD_TIMEOUT" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
  if ((rc != 0)); then
    ((rc == 124)) && log "  command timed out after ${CMD_TIMEOUT}s ($CMD_TIMEOUT_VAR)"
    log "  command failed (exit $rc): $*"
    log "  --- last 40 lines of its output ($LOGS/$name.log):"
    tail -n 40 "$LOGS/$name.log" | sed 's/^/  | /'
    die "$name failed"
  fi
}

# need CMD...: fail naming the first command not on PATH.
need() {
  local c
  for c in "$@"; do
    type -P "$c" >/dev/null 2>&1 || die "required command '$c' not found (${NEED_HINT:-scripts/install-deps.sh installs what the tests need})"
  done
}

curl() { command curl --max-time "$CMD_TIMEOUT" "$@"; }
# shellcheck disable=SC2032 # an EXIT trap may run the docker binary through xargs on purpose
docker() { timeout -k 10 "$CMD_TIMEOUT" docker "$@"; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Skopeo remembers which repositories hold which blobs and then mounts across repositories instead of
# uploading; forget that before a copy so that it really uploads.
forget_skopeo_cache() { rm -f "$SKOPEO_CACHE" "${XDG_DATA_HOME:-${HOME:-/nonexistent}/.local/share}/containers/cache/blob-info-cache-v1.boltdb"; }
