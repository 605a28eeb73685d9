#!/usr/bin/env bash
# Performance of the pull-through cache: `berth-loadtest pull-through` against two Berths started here
# on free loopback ports, an open upstream and a mirror of it (prefix `up`), each on fresh storage.
# It measures cold and warm pulls through the mirror against the same pulls straight from the upstream,
# and the upstream requests of concurrent cold pulls of one blob (see loadtest/src/pull_through.rs).
#
#   scripts/mirror-perf.sh [PULL-THROUGH-ARGS...]     # e.g. --rounds 3, --size 1GiB, --json out.json
#
# Builds nothing. Environment:
#   BERTH_BIN, LOADTEST_BIN  the binaries (default: the dist builds under target/x86_64-unknown-linux-gnu/dist,
#                            else target/release)
#   MIRROR_PERF_WORK         scratch directory on a real disk (default /var/tmp); about 3.5 GB for the
#                            default 5 rounds of 100 MiB blobs
#   MIRROR_PERF_KEEP         1: keep the scratch directory (storage and the servers' logs)
#   MIRROR_PERF_LINK         a rate such as 250MB: the upstream sits behind `berth-loadtest link`, a relay
#                            that limits what the upstream sends to that many bytes per second, all
#                            connections together -- a network link between the upstream and both the
#                            direct pulls and the mirror (default: none, loopback at full speed)
# Exit status: the scenario's (0 when every pull worked, whether or not the targets are met).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"

log() { printf 'mirror-perf: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

PIDS=()
cleanup() {
  local rc=$? p
  for p in "${PIDS[@]}"; do stop_pid "$p" berth 10 || true; done
  if [[ -z $WORK ]]; then
    return
  elif [[ ${MIRROR_PERF_KEEP:-0} == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  return "$rc"
}
WORK=""
trap cleanup EXIT

# pick NAME: the binary NAME from $2 when set, else the dist build, else the release build.
pick() {
  local name=$1 given=${2:-} dist="$ROOT/target/x86_64-unknown-linux-gnu/dist/$1"
  if [[ -n $given ]]; then
    echo "$given"
  elif [[ -x $dist ]]; then
    echo "$dist"
  else
    echo "$ROOT/target/release/$name"
  fi
}
BERTH=$(pick berth "${BERTH_BIN:-}")
LT=$(pick berth-loadtest "${LOADTEST_BIN:-}")
for b in "$BERTH" "$LT"; do
  [[ -x $b ]] || die "$b is missing (cargo build --release -p berth-server -p berth-loadtest, or set BERTH_BIN / LOADTEST_BIN)"
done
command -v curl >/dev/null || die "curl is missing"
WORK=$(mktemp -d "${MIRROR_PERF_WORK:-/var/tmp}/berth-mirror-perf.XXXXXX")


# start NAME PORT [VAR=VALUE ...]: `berth serve` on 127.0.0.1:PORT with storage $WORK/NAME; waits for /v2/.
start() {
  local name=$1 port=$2 code i
  shift 2
  mkdir -p "$WORK/$name"
  env REGISTRY_HTTP_ADDR="127.0.0.1:$port" REGISTRY_STORAGE_PATH="$WORK/$name" \
    REGISTRY_LOG_LEVEL=warn REGISTRY_LOG_ACCESSLOG_DISABLED=true "$@" \
    "$BERTH" serve --no-config-file >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  for i in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/v2/" || true)
    [[ $code == 200 ]] && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$WORK/$name.log" >&2 || true
  die "$name did not answer on 127.0.0.1:$port (after $i tries)"
}

UPORT=$(free_port) || die "no free port"
MPORT=$(free_port) || die "no free port"
while [[ $MPORT == "$UPORT" ]]; do MPORT=$(free_port) || die "no free port"; done

start upstream "$UPORT"
UPSTREAM="127.0.0.1:$UPORT"
if [[ -n ${MIRROR_PERF_LINK:-} ]]; then
  LPORT=$(free_port) || die "no free port"
  "$LT" link --listen "127.0.0.1:$LPORT" --to "$UPSTREAM" --rate "$MIRROR_PERF_LINK" 2>"$WORK/link.log" &
  PIDS+=("$!")
  for i in $(seq 1 50); do
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$LPORT/v2/" && break
    sleep 0.1
  done
  UPSTREAM="127.0.0.1:$LPORT"
  echo "mirror-perf: the upstream is behind a link of $MIRROR_PERF_LINK/s (berth-loadtest link on $UPSTREAM)"
fi
start mirror "$MPORT" REGISTRY_MIRRORS="[{name: up, url: 'http://$UPSTREAM', prefix: up}]"

echo "mirror-perf: $(lscpu | grep 'Model name' | sed 's/  */ /g'), $(nproc) CPUs, Linux $(uname -r)"
echo "mirror-perf: $("$BERTH" --version 2>/dev/null | head -1 || echo 'berth ?'): upstream $UPSTREAM, mirror 127.0.0.1:$MPORT; storage in $WORK"
"$LT" pull-through --upstream "http://$UPSTREAM" --mirror "http://127.0.0.1:$MPORT" --prefix up "$@"
