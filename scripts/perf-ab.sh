#!/usr/bin/env bash
# Same-run A/B of two Berth binaries on this machine: both on fresh storage, measured in turn with
# berth-loadtest in AB_ROUNDS rounds (default 3; the order of the two alternates between rounds), then one
# `compare --input` table of after/before ratios (median over the rounds). For checking that a change leaves
# the single-node figures where they were (docs/performance.md, "Before and after").
#
#   scripts/perf-ab.sh BEFORE_BIN AFTER_BIN
#
# Environment: LOADTEST_BIN (default: the dist build), AB_OUT (reports; default target/perf-ab), AB_TESTS
# (default "push-mono:1MiB:8 push-mono:16MiB:64 push-chunked:16MiB:8 head:1MiB:32 manifest:1MiB:32 pull:1MiB:8",
# each test:size:concurrency), AB_SECONDS per test (default 5), AB_ROUNDS, AB_WORK (scratch; default /var/tmp).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BEFORE=${1:?usage: perf-ab.sh BEFORE_BIN AFTER_BIN}
AFTER=${2:?usage: perf-ab.sh BEFORE_BIN AFTER_BIN}
LT=${LOADTEST_BIN:-$ROOT/target/x86_64-unknown-linux-gnu/dist/berth-loadtest}
OUT=${AB_OUT:-$ROOT/target/perf-ab}
TESTS=${AB_TESTS:-"push-mono:1MiB:8 push-mono:16MiB:64 push-chunked:16MiB:8 head:1MiB:32 manifest:1MiB:32 pull:1MiB:8"}
SECS=${AB_SECONDS:-5}
ROUNDS=${AB_ROUNDS:-3}
for b in "$BEFORE" "$AFTER" "$LT"; do
  [[ -x $b ]] || { echo "perf-ab: $b is not an executable" >&2; exit 1; }
done
mkdir -p "$OUT"
rm -f "$OUT"/*.json
WORK=$(mktemp -d "${AB_WORK:-/var/tmp}/berth-ab.XXXXXX")
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start LABEL BIN: a berth on fresh storage; sets PORT_<LABEL> and PID_<LABEL>.
start() {
  local label=$1 bin=$2 p
  p=$(port)
  rm -rf "$WORK/$label"
  REGISTRY_HTTP_ADDR=127.0.0.1:$p REGISTRY_STORAGE_PATH=$WORK/$label REGISTRY_LOG_LEVEL=error \
    REGISTRY_LOG_ACCESSLOG_DISABLED=true "$bin" serve --no-config-file >"$WORK/$label.log" 2>&1 &
  PIDS+=("$!")
  printf -v "PID_$label" '%s' "$!"
  printf -v "PORT_$label" '%s' "$p"
  for _ in $(seq 1 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/v2/") == 200 ]] && return 0
    sleep 0.1
  done
  echo "perf-ab: $label does not answer" >&2
  exit 1
}

for round in $(seq 1 "$ROUNDS"); do
  start before "$BEFORE"
  start after "$AFTER"
  order=(after before)
  ((round % 2)) && order=(before after)
  for spec in $TESTS; do
    IFS=: read -r test size conc <<<"$spec"
    for label in "${order[@]}"; do
      p="PORT_$label"
      pid="PID_$label"
      "$LT" run --url "http://127.0.0.1:${!p}" --label "$label" --pid "${!pid}" --test "$test" --size "$size" \
        -c "$conc" --duration "${SECS}s" --round "$round" --no-progress \
        --json "$OUT/r$round-$label-$test-$size-c$conc.json" >>"$WORK/loadtest.log" 2>&1 ||
        { tail -n 20 "$WORK/loadtest.log"; echo "perf-ab: $label $test failed" >&2; exit 1; }
    done
  done
  stop_all
done
"$LT" compare $(printf -- '--input %s ' "$OUT"/*.json) --markdown "$OUT/ab.md"
echo "perf-ab: reports in $OUT (ratio = after / before when 'after' is listed first)"
