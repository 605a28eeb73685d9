#!/usr/bin/env bash
# Small reads beside nginx: one Berth (filesystem storage in a scratch directory, no auth) and one nginx
# (`sendfile on`, `tcp_nopush on`, keep-alive, no access log) serving the very same blob files straight out
# of Berth's data directory (blobs/sha256/<hex[0..2]>/<hex>, engine/src/layout.rs), measured in turn with
# wrk and ab on the same loopback, then one markdown table: workload | nginx req/s | Berth req/s | ratio.
#
#   scripts/nginx-side.sh              # needs a release build of berth (cargo build --release --bin berth);
#                                      # installs nginx-light, wrk, apache2-utils (ab) and curl with apt-get
#                                      # when missing (as root). About 2 minutes with the defaults.
#
# Workloads: GET blob 56 B, 64 KiB (wrk -t1 -c32) and 1 MiB (wrk -t1 -c8); HEAD blob 56 B
# (ab -k -i -c32); GET manifest by tag (Berth from its metadata; nginx serves the same bytes from a file,
# as a static-file ceiling). Each runs ROUNDS times, nginx and Berth in turn (the order alternating between
# rounds); the table shows the median of each side's rates and the ratio Berth / nginx of the medians.
#
# Environment: BERTH_BIN (default target/release/berth), DURATION (seconds per wrk run; default 6), ROUNDS
# (default 3), CONNS (default 32), BIG_CONNS (1 MiB GETs; default 8), HEAD_REQUESTS (ab -n; default 200000),
# NGINX_WORKERS (nginx worker_processes; default 1), NGINX_SIDE_WORK (scratch; default /var/tmp),
# NGINX_SIDE_OUT (also write the table to this file), KEEP_WORK=1 (keep the scratch directory),
# NGINX_SIDE_NO_INSTALL=1 (do not run apt-get).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh" # free_port, stop_pid
log() { printf '==== nginx-side: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

BERTH_BIN=${BERTH_BIN:-$ROOT/target/release/berth}
DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
BIG_CONNS=${BIG_CONNS:-8}
HEAD_REQUESTS=${HEAD_REQUESTS:-200000}
NGINX_WORKERS=${NGINX_WORKERS:-1}
[[ -x $BERTH_BIN ]] || die "$BERTH_BIN is not an executable (cargo build --release --bin berth, or set BERTH_BIN)"
[[ $DURATION =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "DURATION and ROUNDS must be positive integers"

# ---- tools: package:command pairs, installed when dpkg or PATH lacks them (as scripts/install-deps.sh) ----
REQUIRED=(nginx-light:nginx wrk:wrk apache2-utils:ab curl:curl)
missing=()
for pair in "${REQUIRED[@]}"; do
  pkg=${pair%%:*}
  cmd=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1; then
    # nginx-light provides the same `nginx` as nginx / nginx-core: any of them will do.
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  [[ -z ${NGINX_SIDE_NO_INSTALL:-} ]] || die "missing ${missing[*]} (and NGINX_SIDE_NO_INSTALL is set)"
  ((EUID == 0)) || die "missing ${missing[*]}: run as root (apt-get install) or install them first"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's scripts from starting a system nginx on port 80; this script runs its own.
  policy_rc=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    policy_rc=/usr/sbin/policy-rc.d
  fi
  rc=0
  { apt-get update -q && apt-get install -y -q "${missing[@]}"; } >&2 || rc=$?
  [[ -z $policy_rc ]] || rm -f "$policy_rc"
  ((rc == 0)) || die "apt-get failed (exit $rc)"
fi

# ---- scratch, processes, cleanup ----
WORK=$(mktemp -d "${NGINX_SIDE_WORK:-/var/tmp}/berth-nginx.XXXXXX")
chmod 755 "$WORK"
DATA=$WORK/berth-data
BERTH_PID=""
NGINX_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $NGINX_PID ]]; then stop_pid "$NGINX_PID" nginx 5 || true; fi
  if [[ -n $BERTH_PID ]]; then stop_pid "$BERTH_PID" berth 10 || true; fi
  if [[ -n ${KEEP_WORK:-} ]]; then log "scratch kept in $WORK"; else rm -rf -- "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- Berth ----
BPORT=$(free_port) || die "no free port"
REGISTRY_HTTP_ADDR=127.0.0.1:$BPORT REGISTRY_STORAGE_PATH=$DATA REGISTRY_LOG_LEVEL=error \
  REGISTRY_LOG_ACCESSLOG_DISABLED=true "$BERTH_BIN" serve --no-config-file >"$WORK/berth.log" 2>&1 &
BERTH_PID=$!
B=http://127.0.0.1:$BPORT
for _ in $(seq 1 100); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$B/v2/") == 200 ]] && break
  kill -0 "$BERTH_PID" 2>/dev/null || { cat "$WORK/berth.log" >&2; die "berth exited"; }
  sleep 0.1
done
[[ $(curl -s -o /dev/null -w '%{http_code}' "$B/v2/") == 200 ]] || die "berth does not answer on $B"

REPO=probe/nginx-side
# push FILE: a monolithic upload (POST, then PUT with the digest); prints the digest.
push() {
  local file=$1 d loc
  d=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  loc=$(curl -sf -D - -o /dev/null -X POST "$B/v2/$REPO/blobs/uploads/" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  [[ -n $loc ]] || die "no upload location for $file"
  [[ $loc == http* ]] || loc=$B$loc
  [[ $loc == *\?* ]] && loc="$loc&digest=$d" || loc="$loc?digest=$d"
  curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$loc" ||
    die "upload of $file failed"
  echo "$d"
}
mkdir -p "$WORK/src" "$WORK/static"
head -c 56 /dev/urandom >"$WORK/src/b56"
head -c 65536 /dev/urandom >"$WORK/src/b64k"
head -c 1048576 /dev/urandom >"$WORK/src/b1m"
printf '{}' >"$WORK/src/config"
D56=$(push "$WORK/src/b56")
D64K=$(push "$WORK/src/b64k")
D1M=$(push "$WORK/src/b1m")
DCFG=$(push "$WORK/src/config")
layer() { printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}' "$1" "$2"; }
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":2},"layers":[%s,%s,%s]}' \
  "$DCFG" "$(layer "$D56" 56)" "$(layer "$D64K" 65536)" "$(layer "$D1M" 1048576)" >"$WORK/static/manifest"
curl -sf -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
  --data-binary "@$WORK/static/manifest" "$B/v2/$REPO/manifests/v1" || die "manifest push failed"

# blob_path DIGEST: the blob's file under Berth's storage (engine/src/layout.rs).
blob_path() { local hex=${1#sha256:}; echo "blobs/sha256/${hex:0:2}/$hex"; }
for d in "$D56" "$D64K" "$D1M"; do
  [[ -f $DATA/$(blob_path "$d") ]] || die "blob file $(blob_path "$d") not found under $DATA (layout changed?)"
done

# ---- nginx: the same files, from Berth's data directory ----
NPORT=$(free_port) || die "no free port"
[[ $NPORT != "$BPORT" ]] || NPORT=$(free_port)
mkdir -p "$WORK/nginx"
user_line=""
((EUID == 0)) && user_line="user root;" # workers read the files as the user that owns the scratch directory, not nobody
cat >"$WORK/nginx/nginx.conf" <<EOF
$user_line
worker_processes $NGINX_WORKERS;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
  default_type application/octet-stream;
  client_body_temp_path $WORK/nginx/body;
  server {
    listen 127.0.0.1:$NPORT;
    location /blobs/ { root $DATA; }
    location = /manifest { root $WORK/static; default_type application/vnd.oci.image.manifest.v1+json; }
  }
}
EOF
nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
N=http://127.0.0.1:$NPORT
for _ in $(seq 1 50); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$N/manifest") == 200 ]] && break
  kill -0 "$NGINX_PID" 2>/dev/null || { cat "$WORK/nginx/error.log" >&2; die "nginx exited"; }
  sleep 0.1
done

# Both sides must give the same bytes before anything is timed.
same() { # NGINX_URL BERTH_URL
  curl -sf -o "$WORK/same.n" "$1" || die "GET $1 failed"
  curl -sf -o "$WORK/same.b" "$2" || die "GET $2 failed"
  if [[ ! -s $WORK/same.n ]] || ! cmp -s "$WORK/same.n" "$WORK/same.b"; then die "$1 and $2 differ"; fi
}
same "$N/$(blob_path "$D56")" "$B/v2/$REPO/blobs/$D56"
same "$N/$(blob_path "$D64K")" "$B/v2/$REPO/blobs/$D64K"
same "$N/$(blob_path "$D1M")" "$B/v2/$REPO/blobs/$D1M"
same "$N/manifest" "$B/v2/$REPO/manifests/v1"

# ---- measuring ----
# wrk_rate URL CONNS: requests/s of one wrk run; fails on errors or non-2xx answers.
wrk_rate() {
  local out
  out=$(wrk -t1 -c"$2" -d"${DURATION}s" -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$1") ||
    die "wrk failed on $1"
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
    echo "$out" >&2
    die "wrk saw errors on $1"
  fi
  awk '/^Requests\/sec:/{print $2}' <<<"$out"
}
# ab_head_rate URL: requests/s of HEAD requests with keep-alive; fails on failed or non-2xx answers.
ab_head_rate() {
  local out
  out=$(ab -q -k -i -n "$HEAD_REQUESTS" -c "$CONNS" "$1" 2>&1) || { echo "$out" >&2; die "ab failed on $1"; }
  if grep -qE '^Non-2xx' <<<"$out" || ! grep -qE '^Failed requests: +0$' <<<"$out"; then
    echo "$out" >&2
    die "ab saw failures on $1"
  fi
  awk '/^Requests per second:/{print $4}' <<<"$out"
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

# name|tool|connections|nginx url|berth url
WORKLOADS=(
  "GET blob 56 B|wrk|$CONNS|$N/$(blob_path "$D56")|$B/v2/$REPO/blobs/$D56"
  "GET blob 64 KiB|wrk|$CONNS|$N/$(blob_path "$D64K")|$B/v2/$REPO/blobs/$D64K"
  "GET blob 1 MiB (c=$BIG_CONNS)|wrk|$BIG_CONNS|$N/$(blob_path "$D1M")|$B/v2/$REPO/blobs/$D1M"
  "HEAD blob 56 B (ab -k -i)|ab|$CONNS|$N/$(blob_path "$D56")|$B/v2/$REPO/blobs/$D56"
  "GET manifest by tag (nginx: same bytes from a file)|wrk|$CONNS|$N/manifest|$B/v2/$REPO/manifests/v1"
)
declare -A RATES
log "berth $B (pid $BERTH_PID), nginx $N (pid $NGINX_PID, $NGINX_WORKERS worker(s)); $ROUNDS round(s) of ${DURATION}s"
for round in $(seq 1 "$ROUNDS"); do
  order=(nginx berth)
  ((round % 2)) || order=(berth nginx)
  for i in "${!WORKLOADS[@]}"; do
    IFS='|' read -r name tool conns nurl burl <<<"${WORKLOADS[$i]}"
    for side in "${order[@]}"; do
      url=$nurl
      [[ $side == berth ]] && url=$burl
      if [[ $tool == wrk ]]; then r=$(wrk_rate "$url" "$conns"); else r=$(ab_head_rate "$url"); fi
      RATES[$i,$side]="${RATES[$i,$side]:-} $r"
      log "round $round: $name: $side $r req/s"
    done
  done
done

# ---- the table ----
table() {
  echo "nginx-side: $(lscpu | awk -F': +' '/^Model name/{print $2; exit}'), $(nproc) CPUs; $(nginx -v 2>&1 | sed 's/^nginx version: //') ($NGINX_WORKERS worker(s), sendfile on); $("$BERTH_BIN" --version 2>/dev/null | head -1 || echo '?')"
  echo "wrk -t1 -c$CONNS -d${DURATION}s (1 MiB: -c$BIG_CONNS), ab -k -i -n $HEAD_REQUESTS -c $CONNS; median of $ROUNDS round(s)"
  echo
  echo "| workload | nginx req/s | Berth req/s | ratio (Berth / nginx) |"
  echo "|---|---:|---:|---:|"
  for i in "${!WORKLOADS[@]}"; do
    IFS='|' read -r name _ <<<"${WORKLOADS[$i]}"
    n=$(median <<<"${RATES[$i,nginx]}")
    b=$(median <<<"${RATES[$i,berth]}")
    awk -v name="$name" -v n="$n" -v b="$b" \
      'BEGIN{printf "| %s | %.0f | %.0f | %.2fx |\n", name, n, b, (n > 0 ? b / n : 0)}'
  done
}
if [[ -n ${NGINX_SIDE_OUT:-} ]]; then table | tee "$NGINX_SIDE_OUT"; else table; fi
