#!/usr/bin/env bash
# Scale-out figures on S3 (docs/performance.md, "Scale-out on S3"), measured in one run on one machine,
# every ratio against a ceiling or a peer measured in the same run:
#
#   1. push of 1 GiB (one monolithic push, -c 1) through Berth on SeaweedFS, against a plain S3 client's
#      multipart upload of 1 GiB to the same SeaweedFS (boto3 upload_fileobj, parts of the same size,
#      its default 10 threads), and against distribution 2.8.2 (Debian's docker-registry) with its S3
#      driver on the same SeaweedFS, through berth-loadtest compare (same client for both registries)
#   2. commit latency: the final PUT (no body) after one PATCH of the whole blob, 16 MiB and 1 GiB
#   3. HEAD blob and GET manifest, 32 connections for 10 s, through haproxy with 1, 2 and 3 replicas
#   4. peak RSS of one replica while 64 clients push 16 MiB blobs at once
#
# Environment: BERTH_BIN, LOADTEST_BIN (default: the dist build under target/), S3PERF_ROUNDS (3),
# S3PERF_KEEP=1 keeps the work directory. Needs the services venv (scripts/install-deps.sh), PostgreSQL,
# haproxy, docker-registry, curl, jq. Prints a summary at the end; the raw outputs stay in $WORK/out.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIST="$ROOT/target/x86_64-unknown-linux-gnu/dist"
BERTH_BIN=${BERTH_BIN:-$DIST/berth}
LT=${LOADTEST_BIN:-$DIST/berth-loadtest}
ROUNDS=${S3PERF_ROUNDS:-3}
PART=$((10 << 20))

log() { printf '[s3-perf %s] %s\n' "$(date +%T)" "$*"; }
die() {
  log "FAIL: $*"
  exit 1
}
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/seaweedfs.sh
source "$ROOT/scripts/lib/seaweedfs.sh"
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
# shellcheck source=scripts/lib/haproxy.sh
source "$ROOT/scripts/lib/haproxy.sh"

for b in "$BERTH_BIN" "$LT"; do [[ -x $b ]] || die "$b is missing: cargo build --profile dist --target x86_64-unknown-linux-gnu -p berth-server -p berth-loadtest"; done
command -v docker-registry >/dev/null || die "docker-registry (distribution 2.8.2) is missing"

WORK=$(mktemp -d /tmp/s3perf.XXXXXX)
OUT="$WORK/out"
mkdir -p "$OUT" "$WORK/s3" "$WORK/pg" "$WORK/haproxy"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  haproxy_stop "$WORK/haproxy" 2>/dev/null || true
  postgres_teardown "$WORK/pg" 2>/dev/null || true
  seaweedfs_teardown "$WORK/s3" 2>/dev/null || true
  if [[ ${S3PERF_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

seaweedfs_start "$WORK/s3" || die "SeaweedFS did not start"
postgres_start "$WORK/pg" || die "PostgreSQL did not start"
WEED_PID=$(cat "$WORK/s3/weed.ownpid")

# wait_v2 PORT LOG: until GET /v2/ answers (LOG's last lines shown when it never does).
wait_v2() {
  local i
  for i in $(seq 1 300); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/v2/" 2>/dev/null && return 0
    sleep 0.1
  done
  tail -n 20 "$2" >&2
  die "nothing answers on port $1"
}

# start_berth NAME: a Berth replica on the bucket (root directory NAME... shared by replicas of one
# NAME) and the database; sets PORT and PID.
start_berth() {
  local name=$1
  PORT=$(free_port)
  env REGISTRY_STORAGE=s3 REGISTRY_STORAGE_S3_REGIONENDPOINT="$S3_ENDPOINT" REGISTRY_STORAGE_S3_REGION="$S3_REGION" \
    REGISTRY_STORAGE_S3_BUCKET="$S3_BUCKET" REGISTRY_STORAGE_S3_ACCESSKEY="$S3_ACCESS_KEY" \
    REGISTRY_STORAGE_S3_SECRETKEY="$S3_SECRET_KEY" REGISTRY_STORAGE_S3_FORCEPATHSTYLE=true \
    REGISTRY_STORAGE_S3_ROOTDIRECTORY="$name" REGISTRY_STORAGE_S3_CHUNKSIZE="$PART" \
    REGISTRY_DATABASE_ENABLED=true REGISTRY_DATABASE_HOST="$PG_HOST" REGISTRY_DATABASE_PORT="$PG_PORT" \
    REGISTRY_DATABASE_USER="$PG_USER" REGISTRY_DATABASE_PASSWORD="$PG_PASSWORD" REGISTRY_DATABASE_DBNAME="$PG_DB" \
    REGISTRY_HTTP_ADDR="127.0.0.1:$PORT" REGISTRY_LOG_LEVEL=warn \
    "$BERTH_BIN" serve --no-config-file >>"$OUT/berth-$name-$PORT.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  wait_v2 "$PORT" "$OUT/berth-$name-$PORT.log"
}

# start_distribution: distribution 2.8.2's S3 driver on the same bucket (root /distribution); sets
# DPORT and DPID.
start_distribution() {
  DPORT=$(free_port)
  cat >"$WORK/distribution.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  s3:
    accesskey: $S3_ACCESS_KEY
    secretkey: $S3_SECRET_KEY
    region: $S3_REGION
    regionendpoint: $S3_ENDPOINT
    bucket: $S3_BUCKET
    rootdirectory: /distribution
    secure: false
    v4auth: true
    chunksize: $PART
  cache: {blobdescriptor: inmemory}
  redirect: {disable: true}
http:
  addr: 127.0.0.1:$DPORT
EOF
  # The AWS SDK of distribution 2.8 cannot use a custom CA bundle with its transport: none is needed here.
  env -u AWS_CA_BUNDLE docker-registry serve "$WORK/distribution.yml" >>"$OUT/distribution.log" 2>&1 &
  DPID=$!
  PIDS+=("$DPID")
  wait_v2 "$DPORT" "$OUT/distribution.log"
}

stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
log "$(date -u '+%Y-%m-%d %H:%M UTC'), $cpu_model, $(nproc) cores; SeaweedFS at $S3_ENDPOINT, part size $PART"

# ---------------------------------------------------------------------------------------------- 1
head -c 1073741824 /dev/urandom >"$WORK/blob-1g"
head -c $((16 << 20)) /dev/urandom >"$WORK/blob-16m"
boto3_upload() {
  S3PERF_FILE="$WORK/blob-1g" S3PERF_PART=$PART seaweedfs_python - <<'PY'
import os, time, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
e = os.environ
s3 = boto3.client("s3", endpoint_url=e["S3_ENDPOINT"], region_name=e["S3_REGION"],
                  aws_access_key_id=e["S3_ACCESS_KEY"], aws_secret_access_key=e["S3_SECRET_KEY"],
                  config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
cfg = TransferConfig(multipart_threshold=int(e["S3PERF_PART"]), multipart_chunksize=int(e["S3PERF_PART"]))
key = "boto3/blob-%d" % time.time_ns()
t0 = time.monotonic()
with open(e["S3PERF_FILE"], "rb") as f:
    s3.upload_fileobj(f, e["S3_BUCKET"], key, Config=cfg)
dt = time.monotonic() - t0
s3.delete_object(Bucket=e["S3_BUCKET"], Key=key)
print("%.1f" % (os.path.getsize(e["S3PERF_FILE"]) / dt / 1e6))
PY
}
PUSH=()
for k in $(seq 1 "$ROUNDS"); do
  sync
  b3=$(boto3_upload)
  start_berth "push-r$k"
  start_distribution
  "$LT" compare --no-progress --url "http://127.0.0.1:$PORT" --label berth --pid "$PID" \
    --url "http://127.0.0.1:$DPORT" --label distribution --pid "$DPID" \
    --test push-mono --size 1GiB -c 1 -n 2 --json "$OUT/push.r$k.json" >"$OUT/push.r$k.log" 2>&1 ||
    log "round $k: some pushes failed (the errors are below; distribution 2.8.2's commit copies the object server-side, which SeaweedFS can refuse)"
  grep -E '^  - `' "$OUT/push.r$k.log" | sort | uniq -c | head -n 5 | sed 's/^/  /' || true
  result() { jq -r --arg l "$1" '[.results[] | select(.label == $l)][0] | "\(.mb_per_s) MB/s (\(.ops) ok, \(.errors) failed)"' "$OUT/push.r$k.json" 2>/dev/null || echo "?"; }
  berth=$(result berth)
  dist=$(result distribution)
  grep -E '^(berth|distribution) ' "$OUT/push.r$k.log" | sed "s/^/  r$k: /" || true
  log "round $k: boto3 multipart $b3 MB/s; loadtest: berth $berth, distribution $dist"
  PUSH+=("round $k: boto3 $b3 MB/s; berth $berth; distribution $dist")
  stop_all
done

# ---------------------------------------------------------------------------------------------- 2
start_berth commit
COMMIT=()
for f in blob-16m blob-1g; do
  d=sha256:$(sha256sum "$WORK/$f" | cut -d' ' -f1)
  for k in $(seq 1 "$ROUNDS"); do
    loc=$(curl -fsS -o /dev/null -D - -X POST -H 'Content-Length: 0' "http://127.0.0.1:$PORT/v2/commit/$f-$k/blobs/uploads/" |
      tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
    [[ $loc == /* ]] && loc="http://127.0.0.1:$PORT$loc"
    loc=$(curl -fsS -o /dev/null -D - -X PATCH -H 'Content-Type: application/octet-stream' -T "$WORK/$f" "$loc" |
      tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
    [[ $loc == /* ]] && loc="http://127.0.0.1:$PORT$loc"
    sep='?'
    [[ $loc == *\?* ]] && sep='&'
    t=$(curl -fsS -o /dev/null -w '%{time_total}' -X PUT -H 'Content-Length: 0' "$loc${sep}digest=$d")
    ms=$(awk -v t="$t" 'BEGIN { printf "%.1f", t * 1000 }')
    log "commit of $f, round $k: $ms ms (final PUT, no body)"
    COMMIT+=("$f $ms")
  done
done
stop_all

# ---------------------------------------------------------------------------------------------- 3
SMALL=()
for n in 1 2 3; do
  ports=()
  for i in $(seq 1 "$n"); do
    start_berth small
    ports+=("$PORT")
  done
  haproxy_start "$WORK/haproxy" "${ports[@]}" >/dev/null || die "haproxy did not start"
  "$LT" --no-progress --url "$HAPROXY_URL" --label "replicas-$n" --repo small \
    --test head,manifest --size 1MiB -c 32 --duration 10s --json "$OUT/small-$n.json" >"$OUT/small-$n.log" 2>&1 ||
    { tail -n 30 "$OUT/small-$n.log"; die "loadtest small requests failed"; }
  grep -E "^replicas-$n " "$OUT/small-$n.log" | sed 's/^/  /' || true
  SMALL+=("$n $(grep -E "^replicas-$n " "$OUT/small-$n.log" | tr '\n' ' ')")
  haproxy_stop "$WORK/haproxy"
  stop_all
done

# ---------------------------------------------------------------------------------------------- 4
start_berth rss
"$LT" --no-progress --url "http://127.0.0.1:$PORT" --label rss-64 --repo rss \
  --test push-mono --size 16MiB -c 64 -n 192 --json "$OUT/rss.json" >"$OUT/rss.log" 2>&1 ||
  { tail -n 30 "$OUT/rss.log"; die "loadtest rss failed"; }
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
grep -E '^rss-64 ' "$OUT/rss.log" | sed 's/^/  /' || true
stop_all

log "summary"
printf '  push 1 GiB:\n'
printf '    %s\n' "${PUSH[@]}"
printf '  commit (final PUT after one PATCH), ms:\n'
printf '    %s\n' "${COMMIT[@]}"
printf '  HEAD/manifest through haproxy, by replicas:\n'
printf '    %s\n' "${SMALL[@]}"
printf '  peak RSS of one replica, 64 concurrent 16 MiB pushes: %s MiB\n' "$((RSS / 1024))"
log "weed server CPU time over the run: $(awk '{ print ($14 + $15) / 100 }' "/proc/$WEED_PID/stat" 2>/dev/null || echo '?') s"
