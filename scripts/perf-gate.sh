#!/usr/bin/env bash
# A short `berth-loadtest compare` of Berth against the reference registry (Debian's docker-registry,
# distribution 2.8) in one run, failing only on a gross regression expressed as a ratio, never on an
# absolute time: monolithic 1 MiB pushes must stay >= PERF_MIN_PUSH times the reference's rate (default 2)
# and HEAD blob >= PERF_MIN_HEAD times (default 5). Typical ratios on a 2-core machine are 3-5x and 20-25x
# (docs/performance.md); the margins absorb a noisy shared machine.
#
# Environment: BERTH_BIN, LOADTEST_BIN (default: the dist builds under target/), PERF_SECONDS per test
# (default 3), PERF_KEEP=1 keeps the work directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIST="$ROOT/target/x86_64-unknown-linux-gnu/dist"
BERTH_BIN=${BERTH_BIN:-$DIST/berth}
LOADTEST_BIN=${LOADTEST_BIN:-$DIST/berth-loadtest}
MIN_PUSH=${PERF_MIN_PUSH:-2}
MIN_HEAD=${PERF_MIN_HEAD:-5}
SECS=${PERF_SECONDS:-3}

for b in "$BERTH_BIN" "$LOADTEST_BIN"; do
  [[ -x $b ]] || { echo "perf-gate: $b is missing (build with --profile dist)" >&2; exit 1; }
done
command -v docker-registry >/dev/null || { echo "perf-gate: docker-registry (Debian package) is missing" >&2; exit 1; }

WORK=$(mktemp -d /tmp/berth-perf.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ ${PERF_KEEP:-0} == 1 ]] && echo "perf-gate: kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(port)
BPORT=$(port)
cat >"$WORK/ref.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $WORK/ref-data}
  delete: {enabled: true}
  cache: {blobdescriptor: inmemory}
http: {addr: 127.0.0.1:$RPORT, secret: perf-gate}
EOF
docker-registry serve "$WORK/ref.yml" >"$WORK/ref.log" 2>&1 &
REF_PID=$!
PIDS+=("$REF_PID")
REGISTRY_HTTP_ADDR=127.0.0.1:$BPORT REGISTRY_STORAGE_PATH=$WORK/berth-data REGISTRY_LOG_LEVEL=error \
  REGISTRY_LOG_ACCESSLOG_DISABLED=true "$BERTH_BIN" serve --no-config-file >"$WORK/berth.log" 2>&1 &
BERTH_PID=$!
PIDS+=("$BERTH_PID")
for p in "$RPORT" "$BPORT"; do
  for _ in $(seq 1 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/v2/") == 200 ]] && break
    sleep 0.1
  done
done

"$LOADTEST_BIN" compare \
  --url "http://127.0.0.1:$BPORT" --label berth --pid "$BERTH_PID" \
  --url "http://127.0.0.1:$RPORT" --label distribution --pid "$REF_PID" \
  --test push-mono,head --size 1MiB -c 8 --duration "${SECS}s" --json "$WORK/perf.json" --markdown "$WORK/perf.md" \
  >"$WORK/loadtest.log" 2>&1 || { tail -n 30 "$WORK/loadtest.log"; echo "perf-gate: the load test failed" >&2; exit 1; }

python3 - "$WORK/perf.json" "$MIN_PUSH" "$MIN_HEAD" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
mins = {"push-mono": float(sys.argv[2]), "head": float(sys.argv[3])}
rate = {(r["label"], r["test"].split()[0]): r for r in report["results"]}
failed = False
for test, need in mins.items():
    b, d = rate[("berth", test)], rate[("distribution", test)]
    if b["errors"] or d["errors"]:
        print(f"perf-gate: {test}: errors (berth {b['errors']}, distribution {d['errors']})")
        failed = True
        continue
    ratio = b["ops_per_s"] / d["ops_per_s"]
    verdict = "ok" if ratio >= need else "REGRESSION"
    print(f"perf-gate: {test:9} berth {b['ops_per_s']:9.1f} ops/s  distribution {d['ops_per_s']:8.1f} ops/s  "
          f"ratio {ratio:5.1f}x (gate {need:g}x) {verdict}")
    failed |= ratio < need
sys.exit(1 if failed else 0)
EOF
