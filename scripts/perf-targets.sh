#!/usr/bin/env bash
# The performance targets of docs/performance.md in one run: Berth and the reference registry (Debian's
# docker-registry, distribution 2.8) side by side on this machine, each step against fresh storage, then one
# `berth-loadtest compare --input ...` table over every step's JSON report. Also the peak RSS of a 4 GiB push
# during 64 concurrent uploads, the push ceiling of this machine (`berth-loadtest sink`: receive and hash,
# store nothing; and `berth-loadtest hashrate` before every push round: SHA-256 on one and two threads)
# and (when nginx is installed) the nginx sendfile calibration for pulls.
#
#   scripts/perf-targets.sh            # needs the dist builds (scripts/test.sh builds them), docker-registry,
#                                      # curl, python3; nginx optional. About 12 minutes, ~13 GB of scratch disk.
#
# The push steps run in PERF_ROUNDS rounds (default 3), each on fresh storage, PERF_REST seconds apart
# (default 30), and so do the small requests (the four registries in turn in each round): on a shared
# machine one round's ratio moves by 10-20 %, so the table gives the median of the rounds' ratios, and
# every round's ratio beside it.
#
# Environment: BERTH_BIN, LOADTEST_BIN (default: the dist builds), PERF_OUT (reports; default
# target/perf-targets), PERF_WORK (scratch directory on a real disk; default /var/tmp), PERF_ROUNDS, PERF_REST.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIST="$ROOT/target/x86_64-unknown-linux-gnu/dist"
BERTH_BIN=${BERTH_BIN:-$DIST/berth}
LT=${LOADTEST_BIN:-$DIST/berth-loadtest}
OUT=${PERF_OUT:-$ROOT/target/perf-targets}
for b in "$BERTH_BIN" "$LT"; do
  [[ -x $b ]] || { echo "perf-targets: $b is missing (build with --profile dist)" >&2; exit 1; }
done
command -v docker-registry >/dev/null || { echo "perf-targets: docker-registry is missing" >&2; exit 1; }
ROUNDS=${PERF_ROUNDS:-3}
REST=${PERF_REST:-30}
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log
WORK=$(mktemp -d "${PERF_WORK:-/var/tmp}/berth-targets.XXXXXX")
chmod 755 "$WORK"
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {
  for _ in $(seq 1 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/v2/") =~ ^(200|401)$ ]] && return 0
    sleep 0.1
  done
  echo "perf-targets: nothing answers on port $1" >&2
  exit 1
}

# Token signing key and a bcrypt cost-10 htpasswd, shared by every run.
"$BERTH_BIN" keygen --key "$WORK/token.pem" --cert "$WORK/token.crt" >/dev/null
echo "lt-pass" | "$BERTH_BIN" htpasswd lt --cost 10 >"$WORK/htpasswd"

# start NAME [VAR=VALUE ...]: a registry on fresh storage; sets NAME_PORT and NAME_PID.
start() {
  local name=$1
  shift
  local p
  p=$(port)
  rm -rf "${WORK:?}/$name"
  mkdir -p "$WORK/$name"
  if [[ $name == distribution ]]; then
    cat >"$WORK/ref.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $WORK/$name}
  delete: {enabled: true}
  cache: {blobdescriptor: inmemory}
http: {addr: 127.0.0.1:$p, secret: perf-targets}
EOF
    docker-registry serve "$WORK/ref.yml" >"$WORK/$name.log" 2>&1 &
  else
    env "$@" REGISTRY_HTTP_ADDR="127.0.0.1:$p" REGISTRY_STORAGE_PATH="$WORK/$name" REGISTRY_LOG_LEVEL=warn \
      REGISTRY_LOG_ACCESSLOG_DISABLED=true "$BERTH_BIN" serve --no-config-file >"$WORK/$name.log" 2>&1 &
  fi
  local pid=$!
  PIDS+=("$pid")
  wait_up "$p"
  printf -v "${name//-/_}_PORT" '%s' "$p"
  printf -v "${name//-/_}_PID" '%s' "$pid"
}

# step NAME ROUNDS LOADTEST-ARGS...: berth vs distribution, each round on fresh storage (and after a rest
# once the last round's storage is deleted: see the ext4 note in docs/performance.md). Reports go to
# NAME.rK.json; `compare --input` pairs the two registries within each round and prints the median.
step() {
  local name=$1 rounds=$2
  shift 2
  local k stamp=()
  for k in $(seq 1 "$rounds"); do
    ((rounds > 1)) && stamp=(--round "$k")
    sync
    start berth
    start distribution
    echo "== $name, round $k of $rounds: $*"
    if [[ $name == push-* ]]; then
      # SHA-256 on one thread and two, right before the pushes: the bound of one upload in this round.
      "$LT" hashrate --threads 1,2 --seconds 2 | sed "s/^/$name r$k: /" | tee -a "$OUT/hashrate.txt"
    fi
    if [[ ${WARM:-0} == 1 ]]; then
      # The same test once, unmeasured: the blobs are then in the page cache ("pull from a warm cache").
      "$LT" compare --no-progress \
        --url "http://127.0.0.1:$berth_PORT" --label berth --url "http://127.0.0.1:$distribution_PORT" \
        --label distribution "$@" >"$OUT/$name.r$k.warm.log" 2>&1 || { tail -n 30 "$OUT/$name.r$k.warm.log"; exit 1; }
    fi
    "$LT" compare --no-progress \
      --url "http://127.0.0.1:$berth_PORT" --label berth --pid "$berth_PID" \
      --url "http://127.0.0.1:$distribution_PORT" --label distribution --pid "$distribution_PID" \
      "${stamp[@]}" "$@" --json "$OUT/$name.r$k.json" >"$OUT/$name.r$k.log" 2>&1 ||
      { tail -n 30 "$OUT/$name.r$k.log"; exit 1; }
    grep -E '^(berth|distribution) ' "$OUT/$name.r$k.log" || true
    stop_all
    rm -rf "${WORK:?}/berth" "$WORK/distribution"
    if ((k < rounds)); then sleep "$REST"; fi
  done
}

echo "perf-targets: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
step push-1gib "$ROUNDS" --test push-mono,push-chunked --size 1GiB --chunk-size 64MiB -c 1 -n 3
step push-16mib-c64 "$ROUNDS" --test push-mono --size 16MiB -c 64 -n 192 --reset-peak-rss
WARM=1 step pull-1gib 1 --test pull --size 1GiB -c 1 -n 4

# HEAD and manifest GET, 32 keep-alive connections: no auth, token, basic (bcrypt cost 10), the reference.
sync
start berth
start berth-token REGISTRY_AUTH_TYPE=token REGISTRY_AUTH_TOKEN_REALM=http://127.0.0.1/auth \
  REGISTRY_AUTH_TOKEN_SERVICE=perf REGISTRY_AUTH_TOKEN_ISSUER=berth REGISTRY_AUTH_TOKEN_SERVER_ENABLED=true \
  REGISTRY_AUTH_TOKEN_SERVER_KEY="$WORK/token.pem" REGISTRY_AUTH_HTPASSWD="$WORK/htpasswd"
start berth-basic REGISTRY_AUTH_TYPE=basic REGISTRY_AUTH_HTPASSWD="$WORK/htpasswd"
start distribution
TOKEN=$(REGISTRY_AUTH_TYPE=token REGISTRY_AUTH_TOKEN_REALM=http://127.0.0.1/auth REGISTRY_AUTH_TOKEN_SERVICE=perf \
  REGISTRY_AUTH_TOKEN_ISSUER=berth REGISTRY_AUTH_TOKEN_SERVER_ENABLED=true REGISTRY_AUTH_TOKEN_SERVER_KEY="$WORK/token.pem" \
  REGISTRY_AUTH_HTPASSWD="$WORK/htpasswd" "$BERTH_BIN" token --no-config-file --user lt \
  --scope repository:berth-lt/pull-1mib:pull,push)
# In rounds too, the four registries in turn in each: the auth targets are ratios of two 10 s runs.
SMALL=()
for k in $(seq 1 "$ROUNDS"); do
  echo "== small requests, round $k of $ROUNDS: --test head,manifest -c 32 --duration 10s"
  stamp=()
  ((ROUNDS > 1)) && stamp=(--round "$k")
  for spec in "berth $berth_PORT $berth_PID" "distribution $distribution_PORT $distribution_PID" \
    "berth-token $berth_token_PORT $berth_token_PID --token $TOKEN" \
    "berth-basic $berth_basic_PORT $berth_basic_PID --user lt --password lt-pass"; do
    read -r label p pid auth <<<"$spec"
    out="$OUT/small-$label.r$k"
    # shellcheck disable=SC2086
    "$LT" --no-progress --url "http://127.0.0.1:$p" --label "$label" --pid "$pid" $auth "${stamp[@]}" \
      --test head,manifest --size 1MiB -c 32 --duration 10s --json "$out.json" \
      >"$out.log" 2>&1 || { tail -n 30 "$out.log"; exit 1; }
    grep -E "^$label " "$out.log" || true
    SMALL+=(--input "$out.json")
  done
done
stop_all

# Peak RSS: a 4 GiB push while 64 clients push 16 MiB blobs, against one fresh Berth.
sync
start berth
"$LT" --no-progress --url "http://127.0.0.1:$berth_PORT" --label berth-4gib --repo rss-big \
  --test push-mono --size 4GiB -c 1 -n 1 --json "$OUT/rss-4gib.json" >"$OUT/rss-4gib.log" 2>&1 &
BIG=$!
sleep 2
"$LT" --no-progress --url "http://127.0.0.1:$berth_PORT" --label berth-64 --repo rss-many \
  --test push-mono --size 16MiB -c 64 -n 256 >"$OUT/rss-64.log" 2>&1
wait "$BIG" || { tail -n 20 "$OUT/rss-4gib.log"; exit 1; }
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$berth_PID/status")
echo "peak RSS through a 4 GiB push plus 64 concurrent 16 MiB uploads: $((RSS / 1024)) MiB" | tee "$OUT/rss.txt"
stop_all

# Pull calibration: the same 1 GiB file through nginx (sendfile on and off) and through Berth, with curl.
if command -v nginx >/dev/null; then
  sync
  start berth
  mkdir -p "$WORK/www"
  head -c 1073741824 /dev/urandom >"$WORK/www/blob"
  D=sha256:$(sha256sum "$WORK/www/blob" | cut -d' ' -f1)
  LOC=$(curl -sf -D - -o /dev/null -X POST "http://127.0.0.1:$berth_PORT/v2/cal/blobs/uploads/" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  [[ $LOC == http* ]] || LOC="http://127.0.0.1:$berth_PORT$LOC"
  [[ $LOC == *\?* ]] && LOC="$LOC&digest=$D" || LOC="$LOC?digest=$D"
  curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$WORK/www/blob" "$LOC"
  cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
  measure() { # LABEL PID URL
    curl -sf -o /dev/null "$3"
    local t0 s0 t1 s1
    t0=$(cpu "$2")
    s0=$(date +%s.%N)
    for _ in 1 2 3 4 5 6; do curl -sf -o /dev/null "$3"; done
    s1=$(date +%s.%N)
    t1=$(cpu "$2")
    python3 -c "t=($t1-$t0)/$(getconf CLK_TCK); s=$s1-$s0; gb=6*1073741824/1e9; print(f'$1: {gb/s:.2f} GB/s, {t/gb:.3f} server CPU-s per GB')"
  }
  {
    measure "berth (memory-mapped)" "$berth_PID" "http://127.0.0.1:$berth_PORT/v2/cal/blobs/$D"
    for sf in on off; do
      np=$(port)
      cat >"$WORK/nginx-$sf.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $WORK/nginx-$sf.pid;
error_log $WORK/nginx-$sf.err;
events { worker_connections 64; }
http { access_log off; sendfile $sf; tcp_nopush on; server { listen 127.0.0.1:$np; root $WORK/www; } }
EOF
      nginx -c "$WORK/nginx-$sf.conf" &
      ng=$!
      sleep 0.7
      measure "nginx sendfile $sf" "$(pgrep -P "$ng" | head -1)" "http://127.0.0.1:$np/blob"
      kill "$ng"
      wait "$ng" 2>/dev/null || true
    done
  } | tee "$OUT/calibration.txt"
  stop_all
fi

# Push calibration: the same pushes into `berth-loadtest sink`, which receives and SHA-256s every
# body (hashing beside receiving) and stores nothing: what this machine can take at all.
p=$(port)
"$LT" sink --listen "127.0.0.1:$p" --hash pipelined 2>"$WORK/sink.log" &
SINK=$!
PIDS+=("$SINK")
wait_up "$p"
{
  for args in "--test push-mono,push-chunked --size 1GiB --chunk-size 64MiB -c 1 -n 3" \
    "--test push-mono --size 16MiB -c 64 -n 192"; do
    # shellcheck disable=SC2086 # the arguments are split on purpose
    "$LT" --no-progress --url "http://127.0.0.1:$p" --label sink --pid "$SINK" $args 2>&1 | grep -E '^sink ' || true
  done
} | tee "$OUT/push-ceiling.txt"
stop_all

echo
INPUTS=()
for f in "$OUT"/push-1gib.r*.json "$OUT"/push-16mib-c64.r*.json "$OUT"/pull-1gib.r*.json; do INPUTS+=(--input "$f"); done
"$LT" compare "${INPUTS[@]}" "${SMALL[@]}" --markdown "$OUT/targets.md" | tee "$OUT/compare.txt"
echo "perf-targets: reports in $OUT"
