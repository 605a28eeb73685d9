#!/usr/bin/env bash
# Scale-out test: three `berth serve` replicas on ONE storage directory (or, with SCALEOUT_STORAGE=s3,
# one S3 bucket of a SeaweedFS started here, SigV4 enforced) with their metadata in one PostgreSQL
# database, behind haproxy round robin (per request, no stickiness), exercised with real clients:
#
#   1. start PostgreSQL, the replicas (each on its own port, deletes enabled) and haproxy; each
#      replica's log says it keeps its metadata in postgresql. With s3, PostgreSQL takes TLS
#      connections only (hostssl), the replicas connect with sslmode verify-full and every one of
#      their connections uses TLS (pg_stat_ssl), and every object is written with
#      storage.s3.encrypt (SSE-S3; SeaweedFS runs with a key-encryption key)
#   2. the server's API tests (server/tests/api_*.rs) through the balancer (BERTH_TEST_URL)
#   3. one chunked upload whose POST, PATCHes, status GET and PUT land on different replicas (the
#      three PATCHes on b1, b2 and b3), then the blob read back from every replica
#   4. skopeo push and pull of an OCI image through the balancer, byte for byte; docker push, rmi
#      and pull of an imported image
#   5. SIGKILL of replica 2 during 8 concurrent skopeo pushes (haproxy health-checking /v2/): every
#      acknowledged push is then pullable and byte-identical, every failed one succeeds when retried;
#      replica 2 restarted on the same storage and database serves what was pushed meanwhile
#   6. (s3 only) SeaweedFS killed, then PostgreSQL stopped: readiness fails naming what is down,
#      pushes get 503 UNAVAILABLE with Retry-After, blob HEADs keep answering from the database
#      while S3 is down; after each restart every replica is ready again, pushes succeed and what
#      was pushed before is intact
#   8. every replica restarted with token auth and the built-in token server (one signing key): a
#      token and a refresh token from b1 work on b2 and b3, the refresh token gives a token on b3 that
#      pushes through b1; each replica's /metrics counts its requests; then read-only mode on every
#      replica refuses pushes (405) and serves pulls
#   9. (s3 only) a stand-alone filesystem registry (SQLite) gets an image by skopeo, is stopped and
#      copied with `berth migrate --from DIR` into the replicas' bucket and database; the image is then
#      pulled through the balancer, byte for byte
#   7. (s3 only) `berth gc --grace 0s` run three times alongside 8 concurrent skopeo pushes: every
#      acknowledged push is intact, failed ones succeed on retry, the images pushed before are intact,
#      and a blob no manifest references is gone
#
# Environment:
#   BERTH_BIN               the berth binary (CI: the static dist build). Unset: cargo build --release.
#   SCALEOUT_KEEP           1: keep the work directory (storage, logs, images) even when passing.
#   SCALEOUT_TMPDIR         parent of the work directory (default /tmp; keep it short: dockerd sockets).
#   SCALEOUT_CMD_TIMEOUT    seconds any one client command may take (default 180).
#   SCALEOUT_TEST_TIMEOUT   seconds the API tests may take (default 600, including any build).
#   SCALEOUT_KILL_LAYER_MIB size of each of the 3 layers of the 8 images pushed in step 5 (default 16).
#   SCALEOUT_STORAGE        filesystem (default): one directory; s3: a SeaweedFS bucket (blob GETs are
#                           then 307 redirects to presigned URLs, which every client here follows).
#
# The API tests run with `cargo test` and so reuse the debug test build of the `test` step (same
# CARGO_TARGET_DIR). Needs: curl jq skopeo umoci sha256sum tar haproxy psql, PostgreSQL's server,
# docker + dockerd, cargo. Run as root (dockerd; PostgreSQL then runs as the system user berth-pg).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CMD_TIMEOUT=${SCALEOUT_CMD_TIMEOUT:-180}
TEST_TIMEOUT=${SCALEOUT_TEST_TIMEOUT:-600}
SKOPEO_CACHE=/var/lib/containers/cache/blob-info-cache-v1.boltdb # root's; other users' is under ~/.local/share
NREP=3
STORAGE_KIND=${SCALEOUT_STORAGE:-filesystem}
[[ $STORAGE_KIND == filesystem || $STORAGE_KIND == s3 ]] || {
  echo "SCALEOUT_STORAGE must be filesystem or s3, not $STORAGE_KIND" >&2
  exit 2
}

T_START=$EPOCHREALTIME
WORK=""
REP_PID=() # index 1..3
REP_PORT=()
REPLICA_ENV=() # more settings for every replica started (step 8)
DOCKER_MODE="" # "" = not set up, existing, private

# ---------------------------------------------------------------------------------------------------- helpers

STEPS_TAG=scaleout CMD_TIMEOUT_VAR=SCALEOUT_CMD_TIMEOUT
# log ok warn die secs_since step step_passed run need curl docker sha256_of forget_skopeo_cache
# shellcheck source=scripts/lib/steps.sh
source "$ROOT/scripts/lib/steps.sh"
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
# shellcheck source=scripts/lib/seaweedfs.sh
source "$ROOT/scripts/lib/seaweedfs.sh"
# shellcheck source=scripts/lib/haproxy.sh
source "$ROOT/scripts/lib/haproxy.sh"
# shellcheck source=scripts/lib/dockerd.sh
source "$ROOT/scripts/lib/dockerd.sh"

# ---------------------------------------------------------------------------------------------------- replicas

rep_log() { echo "$LOGS/replica-$1.log"; }

# start_replica N: berth serve on REP_PORT[N], the shared storage and database; waits for GET /v2/ = 200.
start_replica() {
  local n=$1 port=${REP_PORT[$1]}
  printf '\n===== scaleout: starting replica %s at %s =====\n' "$n" "$(date +%T)" >>"$(rep_log "$n")"
  # --no-config-file: Debian's docker-registry package installs /etc/docker/registry/config.yml.
  local -a storage=("REGISTRY_STORAGE_PATH=$STORE")
  if [[ $STORAGE_KIND == s3 ]]; then
    storage=("${S3_ENV[@]}" "REGISTRY_STORAGE_REDIRECT_DISABLE=${REDIRECT_DISABLE:-false}")
  fi
  env "${storage[@]}" "${DB_ENV[@]}" "${REPLICA_ENV[@]}" REGISTRY_HTTP_ADDR="127.0.0.1:$port" \
    REGISTRY_STORAGE_DELETE_ENABLED=true \
    "$BERTH_BIN" serve --no-config-file >>"$(rep_log "$n")" 2>&1 &
  REP_PID[n]=$!
  local deadline=$((SECONDS + 30)) code
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/v2/" || true)
    [[ $code == 200 || ($code == 401 && ${#REPLICA_ENV[@]} -gt 0) ]] && break
    if ! kill -0 "${REP_PID[n]}" 2>/dev/null; then
      local rc=0
      wait "${REP_PID[n]}" || rc=$?
      REP_PID[n]=""
      die "replica $n exited (status $rc) before answering GET /v2/"
    fi
    ((SECONDS < deadline)) || die "replica $n did not answer GET /v2/ with 200 within 30 s (last status: $code)"
    sleep 0.1
  done
  ok "replica $n (b$n): pid ${REP_PID[n]}, http://127.0.0.1:$port, log $(rep_log "$n")"
}

stop_replica() {
  local n=$1 pid=${REP_PID[$1]:-} rc=0
  [[ -n $pid ]] || return 0
  REP_PID[n]=""
  stop_pid "$pid" "replica $n" 10 || rc=$?
  log "  replica $n pid $pid stopped (exit status $rc)"
}

# ---------------------------------------------------------------------------------------------------- images

blob_path() { echo "$1/blobs/${2%%:*}/${2#*:}"; }

manifest_digest_in_layout() {
  jq -er --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
    "$1/index.json"
}

# add_blob LAYOUT FILE: move FILE into LAYOUT's blobs; prints its digest.
add_blob() {
  local d
  d=sha256:$(sha256_of "$2")
  mv "$2" "$(blob_path "$1" "$d")"
  echo "$d"
}

# make_layout LAYOUT TAG LAYERS MIB: an OCI image layout with one image of LAYERS gzip layers, each a tar
# of MIB MiB of random data.
make_layout() {
  local lay=$1 tag=$2 nl=$3 mib=$4 i tmp="$1.tmp" diff d size layers="" diffs=""
  mkdir -p "$lay/blobs/sha256" "$tmp"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
  for i in $(seq 1 "$nl"); do
    rm -rf "$tmp/root" && mkdir -p "$tmp/root/layer$i"
    head -c "${mib}M" /dev/urandom >"$tmp/root/layer$i/random.bin"
    echo "$tag layer $i" >"$tmp/root/layer$i/name.txt"
    tar -C "$tmp/root" --owner=0 --group=0 --mtime=@0 -cf "$tmp/layer.tar" .
    diff=sha256:$(sha256_of "$tmp/layer.tar")
    # gzip with stored (level 0) deflate blocks: random data does not compress, and this is quick.
    python3 -c 'import sys, zlib
c = zlib.compressobj(0, zlib.DEFLATED, 31)
for b in iter(lambda: sys.stdin.buffer.read(1 << 20), b""):
    sys.stdout.buffer.write(c.compress(b))
sys.stdout.buffer.write(c.flush())' <"$tmp/layer.tar" >"$tmp/layer.tar.gz"
    size=$(stat -c %s "$tmp/layer.tar.gz")
    d=$(add_blob "$lay" "$tmp/layer.tar.gz")
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$d\",\"size\":$size}"
    diffs+="${diffs:+,}\"$diff\""
  done
  printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/layer1/random.bin"],"Labels":{"org.example.scaleout":"%s"}},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$tag" "$diffs" >"$tmp/config.json"
  size=$(stat -c %s "$tmp/config.json")
  d=$(add_blob "$lay" "$tmp/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$d" "$size" "$layers" >"$tmp/manifest.json"
  size=$(stat -c %s "$tmp/manifest.json")
  d=$(add_blob "$lay" "$tmp/manifest.json")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$d" "$size" "$tag" >"$lay/index.json"
  rm -rf "$tmp"
}

# layouts_identical SRC OUT TAG: OUT's TAG has SRC's manifest, config and layers, byte for byte.
layouts_identical() {
  local src=$1 out=$2 tag=$3 sd od d n=0 bytes=0
  sd=$(manifest_digest_in_layout "$src" "$tag") || die "tag $tag not found in $src/index.json"
  od=$(manifest_digest_in_layout "$out" "$tag") || die "tag $tag not found in $out/index.json"
  [[ $od == "$sd" ]] || die "$out: manifest digest after the round trip is $od, expected $sd"
  for d in "$sd" $(jq -r '.config.digest, .layers[].digest' "$(blob_path "$src" "$sd")"); do
    [[ -f $(blob_path "$out" "$d") ]] || die "$out: blob $d missing"
    cmp -s "$(blob_path "$out" "$d")" "$(blob_path "$src" "$d")" || die "$out: blob $d differs from the source"
    [[ sha256:$(sha256_of "$(blob_path "$out" "$d")") == "$d" ]] || die "$out: blob $d has another sha256"
    n=$((n + 1))
    bytes=$((bytes + $(stat -c %s "$(blob_path "$out" "$d")")))
  done
  echo "$n blobs, $((bytes / 1048576)) MiB"
}

# verify_pushed I [NAME]: scale/NAME-I:v1 (NAME: kill) pulled back through the balancer equals image I,
# byte for byte.
verify_pushed() {
  local i=$1 name=${2:-kill}
  forget_skopeo_cache
  run "$name-pull-$i" skopeo copy --preserve-digests --src-tls-verify=false "docker://$REG/scale/$name-$i:v1" "oci:$IMAGES/out-$i:v1"
  ok "scale/$name-$i:v1: $(layouts_identical "$IMAGES/c$i" "$IMAGES/out-$i" v1), byte-identical"
  rm -rf "$IMAGES/out-$i"
}
# start_pushes NAME: $NCOPY concurrent skopeo copies of the images c1..c$NCOPY to scale/NAME-I:v1 through
# the balancer ($REG), each log in $LOGS/NAME-push-I.log, their pids in COPY_PIDS.
start_pushes() {
  local name=$1 i
  forget_skopeo_cache
  COPY_PIDS=()
  for i in $(seq 1 "$NCOPY"); do
    timeout -k 10 "$CMD_TIMEOUT" skopeo copy --retry-times 3 --preserve-digests --dest-tls-verify=false \
      "oci:$IMAGES/c$i:v1" "docker://$REG/scale/$name-$i:v1" >"$LOGS/$name-push-$i.log" 2>&1 &
    COPY_PIDS[i]=$!
  done
  log "  $NCOPY skopeo copies to scale/$name-*:v1 started: pids ${COPY_PIDS[*]}"
}
# finish_pushes NAME: waits for the copies of start_pushes NAME. Every acknowledged push must pull back
# byte-identical; every failed one is retried and then must too. ACKED and FAILED_PUSHES get the
# image numbers.
finish_pushes() {
  local name=$1 i rc
  local -A rcs=()
  ACKED=() FAILED_PUSHES=()
  for i in $(seq 1 "$NCOPY"); do
    rc=0
    wait "${COPY_PIDS[i]}" || rc=$?
    rcs[$i]=$rc
    if ((rc == 0)); then ACKED+=("$i"); else FAILED_PUSHES+=("$i"); fi
  done
  COPY_PIDS=()
  log "  acknowledged: ${ACKED[*]:-none}; failed: ${FAILED_PUSHES[*]:-none}"
  for i in "${ACKED[@]}"; do verify_pushed "$i" "$name"; done
  for i in "${FAILED_PUSHES[@]}"; do
    log "  push $i failed (exit ${rcs[$i]}): $(grep -v '^\s*$' "$LOGS/$name-push-$i.log" | tail -n 1 | cut -c1-300)"
    forget_skopeo_cache
    run "$name-retry-$i" skopeo copy --retry-times 3 --preserve-digests --dest-tls-verify=false \
      "oci:$IMAGES/c$i:v1" "docker://$REG/scale/$name-$i:v1"
    verify_pushed "$i" "$name"
  done
}

# ---------------------------------------------------------------------------------------------------- cleanup

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if ((rc != 0)); then
    log "SCALEOUT FAILED (exit $rc) in step: ${STEP:-?}"
    local n
    for n in $(seq 1 "$NREP"); do
      if [[ -n $WORK && -f $(rep_log "$n") ]]; then
        log "--- last 40 lines of replica $n's log ($(rep_log "$n")):"
        tail -n 40 "$(rep_log "$n")" | sed 's/^/  | /'
      fi
    done
    if [[ -n $WORK && -f $WORK/haproxy/haproxy.log ]]; then
      log "--- last 15 lines of the haproxy log:"
      tail -n 15 "$WORK/haproxy/haproxy.log" | sed 's/^/  | /'
    fi
    if [[ $DOCKER_MODE == private && -f $WORK/docker/dockerd.log && $STEP == *ocker* ]]; then
      log "--- last 20 lines of the dockerd log:"
      tail -n 20 "$WORK/docker/dockerd.log" | sed 's/^/  | /'
    fi
  fi
  log "cleaning up"
  local p
  for p in "${COPY_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  if [[ -n $WORK ]]; then
    for n in $(seq 1 "$NREP"); do stop_replica "$n"; done
    haproxy_stop "$WORK/haproxy"
    postgres_teardown "$WORK/pg"
    [[ $STORAGE_KIND != s3 ]] || seaweedfs_teardown "$WORK/s3"
    if [[ $DOCKER_MODE == existing ]]; then
      # shellcheck disable=SC2033 # xargs runs the docker binary, not the wrapper function: fine here
      docker images --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | grep "^127.0.0.1:${HAPROXY_PORT:-none}/" |
        xargs -r docker rmi -f >/dev/null 2>&1
    fi
    [[ $DOCKER_MODE == private ]] && dockerd_stop "$WORK/docker"
    if [[ ${SCALEOUT_KEEP:-0} == 1 ]]; then
      log "kept $WORK (SCALEOUT_KEEP=1)"
    elif ((rc != 0)); then
      rm -rf -- "$STORE" "$WORK/images" "$WORK/docker"
      log "kept the logs in $WORK/logs (storage and images removed; SCALEOUT_KEEP=1 keeps everything)"
    else
      rm -rf -- "$WORK" || log "could not remove all of $WORK"
    fi
  fi
  if ((${#PASSED[@]})); then
    log "timings:"
    printf '  PASS  %s\n' "${PASSED[@]}"
  fi
  if ((rc == 0)); then
    log "SCALEOUT PASSED in $(secs_since "$T_START")s"
    echo "scaleout: ${#PASSED[@]} passed, 0 failed"
  else
    log "SCALEOUT FAILED after $(secs_since "$T_START")s, in step: ${STEP:-?}"
    echo "scaleout: ${#PASSED[@]} passed, 1 failed"
  fi
  exit "$rc"
}
COPY_PIDS=()
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ==================================================================================================== main

step "setup"
need curl jq skopeo umoci sha256sum tar python3 cmp awk haproxy psql cargo docker dockerd
if [[ -z ${BERTH_BIN:-} ]]; then
  log "  BERTH_BIN is unset: building berth"
  (cd "$ROOT" && cargo build --release -p berth-server --bin berth)
  BERTH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/berth"
fi
[[ -x $BERTH_BIN ]] || die "BERTH_BIN=$BERTH_BIN is not an executable file"
BERTH_BIN=$(cd "$(dirname "$BERTH_BIN")" && pwd)/$(basename "$BERTH_BIN")
WORK=$(mktemp -d "${SCALEOUT_TMPDIR:-/tmp}/scaleout.XXXXXX")
LOGS="$WORK/logs"
STORE="$WORK/storage"
IMAGES="$WORK/images"
mkdir -p "$LOGS" "$STORE" "$IMAGES" "$WORK/pg" "$WORK/haproxy"
for n in $(seq 1 "$NREP"); do
  REP_PORT[n]=$(free_port) || die "no free loopback port found"
done
[[ $(printf '%s\n' "${REP_PORT[@]}" | sort -u | wc -l) == "$NREP" ]] || die "free_port gave the same port twice: ${REP_PORT[*]}"
log "  berth $BERTH_BIN, work dir $WORK, replica ports ${REP_PORT[*]}"
log "  skopeo $(skopeo --version | awk '{print $3}'), $(haproxy -v | awk 'NR == 1 { print "haproxy " $3 }')"
step_passed

# ---------------------------------------------------------------------------------------------------- 1
step "1. PostgreSQL, $NREP replicas on one storage ($STORAGE_KIND) and one database, haproxy round robin"
# With S3, PostgreSQL takes TLS connections only and the replicas verify it (sslmode verify-full).
[[ $STORAGE_KIND != s3 ]] || export POSTGRES_TLS=1
postgres_start "$WORK/pg" || die "PostgreSQL did not start"
DB_ENV=(REGISTRY_DATABASE_ENABLED=true "REGISTRY_DATABASE_HOST=$PG_HOST" "REGISTRY_DATABASE_PORT=$PG_PORT"
  "REGISTRY_DATABASE_USER=$PG_USER" "REGISTRY_DATABASE_PASSWORD=$PG_PASSWORD" "REGISTRY_DATABASE_DBNAME=$PG_DB")
if [[ -n ${PG_SSLROOTCERT:-} ]]; then
  DB_ENV+=(REGISTRY_DATABASE_SSLMODE=verify-full "REGISTRY_DATABASE_SSLROOTCERT=$PG_SSLROOTCERT")
  PGSSLMODE=verify-full PGSSLROOTCERT=$PG_SSLROOTCERT postgres_psql -tAc 'select 1' >/dev/null ||
    die "psql with sslmode=verify-full cannot connect to the TLS-only PostgreSQL"
  ! PGSSLMODE=disable postgres_psql -tAc 'select 1' >/dev/null 2>&1 ||
    die "the TLS-only PostgreSQL took a connection without TLS"
  ok "PostgreSQL takes TLS connections only; the replicas connect with sslmode verify-full"
fi
if [[ $STORAGE_KIND == s3 ]]; then
  mkdir -p "$WORK/s3"
  seaweedfs_start "$WORK/s3" || die "SeaweedFS did not start"
  S3_ENV=(REGISTRY_STORAGE=s3 "REGISTRY_STORAGE_S3_REGIONENDPOINT=$S3_ENDPOINT" "REGISTRY_STORAGE_S3_REGION=$S3_REGION"
    "REGISTRY_STORAGE_S3_BUCKET=$S3_BUCKET" "REGISTRY_STORAGE_S3_ACCESSKEY=$S3_ACCESS_KEY"
    "REGISTRY_STORAGE_S3_SECRETKEY=$S3_SECRET_KEY" REGISTRY_STORAGE_S3_FORCEPATHSTYLE=true
    REGISTRY_STORAGE_S3_ROOTDIRECTORY=scaleout REGISTRY_STORAGE_S3_ENCRYPT=true)
fi
for n in $(seq 1 "$NREP"); do start_replica "$n"; done
for n in $(seq 1 "$NREP"); do
  grep -q 'listening' "$(rep_log "$n")" || die "replica $n's log has no 'listening' line"
  grep 'listening' "$(rep_log "$n")" | grep -Eq 'metadata="?postgresql' ||
    die "replica $n does not say it keeps metadata in postgresql: $(grep 'listening' "$(rep_log "$n")" | tail -n 1)"
done
if [[ $STORAGE_KIND == s3 ]]; then
  for n in $(seq 1 "$NREP"); do
    grep 'listening' "$(rep_log "$n")" | grep -Eq 'blobs="?s3' ||
      die "replica $n does not say it keeps blobs in s3: $(grep 'listening' "$(rep_log "$n")" | tail -n 1)"
  done
fi
ok "each replica's log: metadata=postgresql, blobs=$STORAGE_KIND"
if [[ -n ${PG_SSLROOTCERT:-} ]]; then
  # The replicas' own connections (this psql's is not counted): all over TLS.
  tls=$(postgres_psql -tAc "select count(*) filter (where s.ssl), count(*) filter (where not s.ssl)
    from pg_stat_ssl s join pg_stat_activity a using (pid) where a.usename = current_user and a.pid <> pg_backend_pid()")
  [[ ${tls%%|*} -ge $NREP && ${tls##*|} == 0 ]] ||
    die "the replicas' PostgreSQL connections are not all TLS (with TLS|without: $tls)"
  ok "the replicas' ${tls%%|*} PostgreSQL connections all use TLS (pg_stat_ssl)"
fi
haproxy_start "$WORK/haproxy" "${REP_PORT[@]}" || die "haproxy did not start"
seen=""
for i in 1 2 3 4 5 6; do
  b=$(curl -fsS -o /dev/null -D - "$HAPROXY_URL/v2/" | tr -d '\r' | awk 'tolower($1) == "x-berth-backend:" { print $2 }')
  seen+="$b "
done
for n in $(seq 1 "$NREP"); do [[ " $seen" == *" b$n "* ]] || die "GET /v2/ through haproxy never reached b$n (saw: $seen)"; done
ok "GET /v2/ through haproxy, 6 times: $seen"
step_passed

# ---------------------------------------------------------------------------------------------------- 2
if [[ $STORAGE_KIND == s3 ]]; then
  # The API tests check what the registry itself answers to blob GETs (headers, ranges), so they run
  # with redirects off: the replicas stream from the bucket. Steps 3 to 5 run with redirects on.
  for n in $(seq 1 "$NREP"); do stop_replica "$n"; done
  for n in $(seq 1 "$NREP"); do REDIRECT_DISABLE=true start_replica "$n"; done
fi
step "2. API tests (server/tests/api_*.rs) through the balancer"
log "  \$ BERTH_TEST_URL=$HAPROXY_URL BERTH_TEST_DELETE_ENABLED=true cargo test -p berth-server --test 'api_*'"
rc=0
(cd "$ROOT" && BERTH_TEST_URL=$HAPROXY_URL BERTH_TEST_DELETE_ENABLED=true timeout -k 10 "$TEST_TIMEOUT" \
  cargo test -p berth-server --test 'api_*') >"$LOGS/api-tests.log" 2>&1 || rc=$?
if ((rc != 0)); then
  grep -E '^(test .* FAILED|failures:|---- )|panicked' "$LOGS/api-tests.log" | head -n 40 | sed 's/^/  | /'
  log "  --- last 30 lines of $LOGS/api-tests.log:"
  tail -n 30 "$LOGS/api-tests.log" | sed 's/^/  | /'
  die "the API tests failed through the balancer (exit $rc)"
fi
passed=$(awk '/^test result:/ { s += $4 } END { print s + 0 }' "$LOGS/api-tests.log")
ignored=$(awk '/^test result:/ { s += $8 } END { print s + 0 }' "$LOGS/api-tests.log")
((passed > 0)) || die "no API test ran (see $LOGS/api-tests.log)"
ok "API tests: $passed passed (those that need a process of their own return early), $ignored ignored"
step_passed

if [[ $STORAGE_KIND == s3 ]]; then
  for n in $(seq 1 "$NREP"); do stop_replica "$n"; done
  for n in $(seq 1 "$NREP"); do start_replica "$n"; done
  log "  replicas restarted with redirects to presigned URLs on"
fi

# ---------------------------------------------------------------------------------------------------- 3
step "3. one chunked upload across all three replicas (POST, 3 × PATCH 2 MiB, GET status, PUT)"
C="$WORK/chunks"
mkdir -p "$C"
for i in 1 2 3; do head -c 2M /dev/urandom >"$C/chunk$i"; done
cat "$C/chunk1" "$C/chunk2" "$C/chunk3" >"$C/whole"
WHOLE_DIGEST=sha256:$(sha256_of "$C/whole")
WHOLE_SIZE=$(stat -c %s "$C/whole")
# hdr FILE NAME: the value of header NAME in the curl -D dump FILE.
hdr() { tr -d '\r' <"$1" | awk -v n="${2,,}:" 'tolower($1) == n { sub(/^[^:]*: */, ""); print; exit }'; }
# absolute LOCATION: the upload URL through the balancer.
absolute() { if [[ $1 == /* ]]; then echo "$HAPROXY_URL$1"; else echo "$1"; fi; }
# call NAME EXPECTED_STATUS CURL_ARGS...: one request through the balancer; headers in $C/NAME.h.
BACKENDS=()
call() {
  local name=$1 want=$2 code
  shift 2
  code=$(curl -sS -o "$C/$name.body" -D "$C/$name.h" -w '%{http_code}' "$@") || die "$name: curl failed"
  [[ $code == "$want" ]] || die "$name: status $code, expected $want: $(head -c 500 "$C/$name.body")"
  BACKENDS+=("$name=$(hdr "$C/$name.h" X-Berth-Backend)")
}
call post 202 -X POST -H 'Content-Length: 0' "$HAPROXY_URL/v2/scale/chunked/blobs/uploads/"
LOC=$(absolute "$(hdr "$C/post.h" Location)")
[[ -n $LOC ]] || die "POST gave no Location"
off=0
PATCH_BACKENDS=()
for i in 1 2 3; do
  len=$(stat -c %s "$C/chunk$i")
  call "patch$i" 202 -X PATCH -H 'Content-Type: application/octet-stream' \
    -H "Content-Range: $off-$((off + len - 1))" --data-binary "@$C/chunk$i" "$LOC"
  off=$((off + len))
  r=$(hdr "$C/patch$i.h" Range)
  [[ $r == "0-$((off - 1))" ]] || die "PATCH $i: Range is '$r', expected 0-$((off - 1))"
  PATCH_BACKENDS+=("$(hdr "$C/patch$i.h" X-Berth-Backend)")
  LOC=$(absolute "$(hdr "$C/patch$i.h" Location)")
done
call status 204 "$LOC"
r=$(hdr "$C/status.h" Range)
[[ $r == "0-$((WHOLE_SIZE - 1))" ]] || die "GET upload status: Range is '$r', expected 0-$((WHOLE_SIZE - 1))"
sep='?'
[[ $LOC == *\?* ]] && sep='&'
call put 201 -X PUT -H 'Content-Length: 0' "$LOC${sep}digest=$WHOLE_DIGEST"
[[ $(hdr "$C/put.h" Docker-Content-Digest) == "$WHOLE_DIGEST" ]] || die "PUT: Docker-Content-Digest is not $WHOLE_DIGEST"
log "  served by: ${BACKENDS[*]}"
for n in $(seq 1 "$NREP"); do
  [[ " ${PATCH_BACKENDS[*]} " == *" b$n "* ]] || die "no PATCH was served by b$n (PATCHes: ${PATCH_BACKENDS[*]})"
done
ok "the three PATCHes were served by ${PATCH_BACKENDS[*]}"
GET_BACKENDS=()
for i in 1 2 3 4 5 6; do
  code=$(curl -sSL -o "$C/get$i" -D "$C/get$i.h" -w '%{http_code}' "$HAPROXY_URL/v2/scale/chunked/blobs/$WHOLE_DIGEST") ||
    die "GET blob $i: curl failed"
  [[ $code == 200 ]] || die "GET blob $i: status $code"
  b=$(hdr "$C/get$i.h" X-Berth-Backend)
  [[ sha256:$(sha256_of "$C/get$i") == "$WHOLE_DIGEST" ]] || die "GET blob $i (served by $b): sha256 differs from $WHOLE_DIGEST"
  GET_BACKENDS+=("$b")
done
for n in $(seq 1 "$NREP"); do
  [[ " ${GET_BACKENDS[*]} " == *" b$n "* ]] || die "no GET of the blob was served by b$n (GETs: ${GET_BACKENDS[*]})"
done
if [[ $STORAGE_KIND == s3 ]]; then
  first=$(tr -d '\r' <"$C/get1.h" | awk 'NR == 1 { print $2 }')
  loc=$(hdr "$C/get1.h" Location)
  [[ $first == 307 && $loc == "$S3_ENDPOINT/"*X-Amz-Signature=* ]] ||
    die "GET blob through the balancer: first answer $first, Location '$loc' (expected a 307 to a presigned URL of $S3_ENDPOINT)"
  ok "GETs are 307 redirects to presigned URLs of the bucket ($S3_ENDPOINT/...)"
fi
ok "blob $WHOLE_DIGEST ($WHOLE_SIZE bytes) read back 6 times, from ${GET_BACKENDS[*]}: same sha256 each time"
rm -rf "$C"
step_passed

# ---------------------------------------------------------------------------------------------------- 4
REG="127.0.0.1:$HAPROXY_PORT"
step "4a. skopeo copy of an OCI image (umoci, 2 layers) through the balancer and back"
SRC="$IMAGES/src"
BUNDLE="$WORK/bundle"
run umoci-init umoci init --layout "$SRC"
run umoci-new umoci new --image "$SRC:v1"
run umoci-config umoci config --image "$SRC:v1" --config.cmd /layer1/random.bin --author "berth scaleout"
run umoci-unpack umoci unpack --image "$SRC:v1" "$BUNDLE"
for i in 1 2; do
  mkdir -p "$BUNDLE/rootfs/layer$i"
  head -c 3M /dev/urandom >"$BUNDLE/rootfs/layer$i/random.bin"
  echo "layer $i" >"$BUNDLE/rootfs/layer$i/name.txt"
  run "umoci-repack-$i" umoci repack --refresh-bundle --image "$SRC:v1" "$BUNDLE"
done
rm -rf "$BUNDLE"
run umoci-gc umoci gc --layout "$SRC"
SRC_DIGEST=$(manifest_digest_in_layout "$SRC" v1)
nl=$(jq '.layers | length' "$(blob_path "$SRC" "$SRC_DIGEST")")
((nl == 2)) || die "the umoci image has $nl layers, expected 2"
forget_skopeo_cache
run skopeo-push skopeo copy --preserve-digests --digestfile "$WORK/push.digest" --dest-tls-verify=false \
  "oci:$SRC:v1" "docker://$REG/scale/skopeo:v1"
[[ $(cat "$WORK/push.digest") == "$SRC_DIGEST" ]] || die "pushed manifest digest $(cat "$WORK/push.digest") != $SRC_DIGEST"
forget_skopeo_cache
run skopeo-pull skopeo copy --preserve-digests --src-tls-verify=false "docker://$REG/scale/skopeo:v1" "oci:$IMAGES/out:v1"
ok "$REG/scale/skopeo:v1 round trip: $(layouts_identical "$SRC" "$IMAGES/out" v1), manifest $SRC_DIGEST, byte-identical"
rm -rf "$IMAGES/out"
step_passed

step "4b. Docker Engine: docker import, push through the balancer, rmi, pull"
export DOCKER_CONFIG="$WORK/docker-config" # keep the client's config out of ~/.docker
mkdir -p "$DOCKER_CONFIG"
if timeout 20 docker info >/dev/null 2>&1; then
  DOCKER_MODE=existing
  log "  using the Docker daemon that is already running (${DOCKER_HOST:-default socket})"
else
  dockerd_start "$WORK/docker" none || die "dockerd cannot run here (see $WORK/docker/dockerd.log)"
  DOCKER_MODE=private
fi
IMG="$REG/scale/docker:v1"
RFS="$WORK/docker-rootfs"
mkdir -p "$RFS/data"
head -c 2M /dev/urandom >"$RFS/data/random.bin"
echo "berth scaleout" >"$RFS/data/name.txt"
tar -C "$RFS" -cf "$WORK/rootfs.tar" .
rm -rf "$RFS"
run docker-import docker import --change 'CMD ["/data/random.bin"]' "$WORK/rootfs.tar" "$IMG"
ID1=$(docker image inspect -f '{{.Id}}' "$IMG")
run docker-push docker push "$IMG"
PUSH_DIGEST=$(grep -o 'digest: sha256:[0-9a-f]\{64\}' "$LOGS/docker-push.log" | cut -d' ' -f2 || true)
[[ -n $PUSH_DIGEST ]] || die "docker push printed no digest (see $LOGS/docker-push.log)"
run docker-rmi docker rmi "$IMG"
! docker image inspect "$IMG" >/dev/null 2>&1 || die "$IMG is still present after docker rmi"
run docker-pull docker pull "$IMG"
ID2=$(docker image inspect -f '{{.Id}}' "$IMG")
[[ $ID2 == "$ID1" ]] || die "pulled image ID $ID2 differs from the pushed $ID1"
grep -q "$PUSH_DIGEST" "$LOGS/docker-pull.log" || die "docker pull did not report digest $PUSH_DIGEST"
ok "$IMG: pushed (manifest $PUSH_DIGEST), removed, pulled back: same image ID $ID1"
step_passed

# ---------------------------------------------------------------------------------------------------- 5
NCOPY=8
# Big enough that the pushes are still under way when replica 2 dies (checked below).
KILL_LAYER_MIB=${SCALEOUT_KILL_LAYER_MIB:-16}
step "5. SIGKILL of replica 2 during $NCOPY concurrent skopeo pushes (haproxy health-checked)"
for i in $(seq 1 "$NCOPY"); do make_layout "$IMAGES/c$i" v1 3 "$KILL_LAYER_MIB"; done
ok "$NCOPY images of 3 random $KILL_LAYER_MIB MiB gzip layers each"
haproxy_stop "$WORK/haproxy"
HAPROXY_CHECK=1 haproxy_start "$WORK/haproxy" "${REP_PORT[@]}" || die "haproxy (health-checked) did not start"
REG="127.0.0.1:$HAPROXY_PORT"
sleep 1.2 # two health checks: every replica UP
start_pushes kill
# Kill as soon as replica 2 is taking part in the uploads (its log shows upload requests), so that
# pushes are under way whatever the machine's speed; at most 3 s after the start.
uploads_before=$(grep -c 'route="upload' "$(rep_log 2)" || true)
deadline=$((SECONDS + 3))
while (($(grep -c 'route="upload' "$(rep_log 2)" || true) < uploads_before + 2)) && ((SECONDS < deadline)); do
  sleep 0.02
done
running=0
for i in $(seq 1 "$NCOPY"); do kill -0 "${COPY_PIDS[i]}" 2>/dev/null && running=$((running + 1)); done
kill -KILL "${REP_PID[2]}"
rc=0
wait "${REP_PID[2]}" 2>/dev/null || rc=$?
log "  replica 2 (pid ${REP_PID[2]}) SIGKILLed (exit status $rc) with $running of the $NCOPY copies still running"
REP_PID[2]=""
((running > 0)) || die "all $NCOPY copies had finished before the kill: make the images bigger (SCALEOUT_KILL_LAYER_MIB)"
# Until its health checks fail, haproxy still sends requests to b2 and answers them 503 itself.
deadline=$((SECONDS + 10))
until grep -q 'b2 is DOWN' "$WORK/haproxy/haproxy.log"; do
  ((SECONDS < deadline)) || die "haproxy did not take b2 out of rotation within 10 s"
  sleep 0.1
done
ok "haproxy took b2 out of rotation: $(grep -o 'Server replicas/b2 is DOWN.*' "$WORK/haproxy/haproxy.log" | head -n 1 | cut -c1-120)"
finish_pushes kill
# haproxy sends requests that cannot connect to the killed replica to another one (retry-on
# conn-failure), so only pushes with a request in flight on it fail: with none acknowledged, the
# check above checked nothing.
((${#ACKED[@]} > 0)) || die "none of the $NCOPY pushes was acknowledged: the kill left nothing to check"
ok "${#ACKED[@]} acknowledged pushes intact, ${#FAILED_PUSHES[@]} failed ones pushed on retry and intact"
start_replica 2
d=$(manifest_digest_in_layout "$IMAGES/c1" v1)
code=$(curl -sS -o "$WORK/m.json" -w '%{http_code}' -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://127.0.0.1:${REP_PORT[2]}/v2/scale/kill-1/manifests/v1") || die "GET manifest from replica 2 failed"
[[ $code == 200 ]] || die "restarted replica 2: GET /v2/scale/kill-1/manifests/v1 is $code"
cmp -s "$WORK/m.json" "$(blob_path "$IMAGES/c1" "$d")" || die "restarted replica 2 serves other manifest bytes for kill-1:v1"
for d in $(jq -r '.config.digest, .layers[].digest' "$WORK/m.json"); do
  curl -fsSL -o "$WORK/blob" "http://127.0.0.1:${REP_PORT[2]}/v2/scale/kill-1/blobs/$d" || die "restarted replica 2: GET blob $d failed"
  [[ sha256:$(sha256_of "$WORK/blob") == "$d" ]] || die "restarted replica 2: blob $d has another sha256"
done
rm -f "$WORK/m.json" "$WORK/blob"
ok "restarted replica 2 serves scale/kill-1:v1 (manifest and its 4 blobs, on its own port) from the shared storage and database"
step_passed

# ---------------------------------------------------------------------------------------------------- 6
if [[ $STORAGE_KIND == s3 ]]; then
  step "6. SeaweedFS killed and PostgreSQL stopped under the replicas, then restarted"
  O="$WORK/outage"
  mkdir -p "$O"
  # push_blob NAME: a monolithic push (POST with ?digest=) of a fresh 1 MiB blob through the balancer;
  # prints the status, headers in $O/NAME.h, body in $O/NAME.body; the blob's digest in $O/NAME.digest.
  push_blob() {
    local name=$1 d
    head -c 1M /dev/urandom >"$O/$name.bin"
    d=sha256:$(sha256_of "$O/$name.bin")
    echo "$d" >"$O/$name.digest"
    curl -sS -o "$O/$name.body" -D "$O/$name.h" -w '%{http_code}' -X POST -H 'Content-Type: application/octet-stream' \
      --data-binary "@$O/$name.bin" "$HAPROXY_URL/v2/scale/outage/blobs/uploads/?digest=$d" || echo 000
  }
  # expect_unavailable NAME WHAT: push_blob NAME answers 503 UNAVAILABLE with Retry-After.
  expect_unavailable() {
    local code
    code=$(push_blob "$1")
    [[ $code == 503 ]] || die "push while $2 is down: status $code, expected 503: $(head -c 300 "$O/$1.body")"
    jq -e '.errors[0].code == "UNAVAILABLE"' "$O/$1.body" >/dev/null || die "push while $2 is down: body $(head -c 300 "$O/$1.body")"
    [[ -n $(hdr "$O/$1.h" Retry-After) ]] || die "push while $2 is down: no Retry-After header"
  }
  # readiness_is CODE PATTERN: every replica's /readyz answers CODE, its body matching PATTERN.
  readiness_is() {
    local want=$1 pattern=$2 n code
    for n in $(seq 1 "$NREP"); do
      code=$(curl -sS -o "$O/ready-$n" -w '%{http_code}' --max-time 20 "http://127.0.0.1:${REP_PORT[n]}/readyz") || code=000
      [[ $code == "$want" ]] && grep -Eq "$pattern" "$O/ready-$n" || return 1
    done
  }
  # wait_ready SECONDS: until every replica is ready again.
  wait_ready() {
    local deadline=$((SECONDS + $1))
    until readiness_is 200 ready; do
      ((SECONDS < deadline)) || die "the replicas were not all ready $1 s after the restart: $(cat "$O"/ready-* | tr '\n' ' ')"
      sleep 0.5
    done
  }
  before=$(push_blob before)
  [[ $before == 201 ]] || die "push before the outage: status $before"
  seaweedfs_kill "$WORK/s3"
  readiness_is 503 'blob store' || die "with SeaweedFS down, /readyz is not 503 naming the blob store: $(cat "$O"/ready-* | tr '\n' ' ')"
  ok "SeaweedFS down: every replica's /readyz is 503 ($(jq -r .reason "$O/ready-1" | cut -c1-120))"
  expect_unavailable during-s3 SeaweedFS
  ok "a push while SeaweedFS is down: 503 UNAVAILABLE with Retry-After"
  code=$(curl -sS -o /dev/null -w '%{http_code}' -I "$HAPROXY_URL/v2/scale/outage/blobs/$(cat "$O/before.digest")")
  [[ $code == 200 ]] || die "HEAD of a stored blob while SeaweedFS is down: $code (it is answered from the database)"
  ok "HEAD of a stored blob while SeaweedFS is down: 200, from the database"
  t0=$EPOCHREALTIME
  seaweedfs_restart "$WORK/s3" || die "SeaweedFS did not restart"
  wait_ready 30
  ok "every replica ready again $(secs_since "$t0")s after SeaweedFS was restarted"
  after=$(push_blob after-s3)
  [[ $after == 201 ]] || die "push after SeaweedFS came back: status $after: $(head -c 300 "$O/after-s3.body")"
  for name in before after-s3; do
    curl -fsSL -o "$O/$name.back" "$HAPROXY_URL/v2/scale/outage/blobs/$(cat "$O/$name.digest")" || die "GET $name blob failed"
    cmp -s "$O/$name.bin" "$O/$name.back" || die "the $name blob came back different"
  done
  verify_pushed 1
  ok "pushes succeed again; the blobs pushed before and after, and scale/kill-1:v1, are intact"
  postgres_stop "$WORK/pg"
  readiness_is 503 'metadata store' || die "with PostgreSQL down, /readyz is not 503 naming the metadata store: $(cat "$O"/ready-* | tr '\n' ' ')"
  ok "PostgreSQL down: every replica's /readyz is 503 ($(jq -r .reason "$O/ready-1" | cut -c1-120))"
  expect_unavailable during-pg PostgreSQL
  ok "a push while PostgreSQL is down: 503 UNAVAILABLE with Retry-After"
  t0=$EPOCHREALTIME
  postgres_restart "$WORK/pg" || die "PostgreSQL did not restart"
  wait_ready 30
  ok "every replica ready again $(secs_since "$t0")s after PostgreSQL was restarted"
  after=$(push_blob after-pg)
  [[ $after == 201 ]] || die "push after PostgreSQL came back: status $after: $(head -c 300 "$O/after-pg.body")"
  for name in before after-s3 after-pg; do
    curl -fsSL -o "$O/$name.back" "$HAPROXY_URL/v2/scale/outage/blobs/$(cat "$O/$name.digest")" || die "GET $name blob failed"
    cmp -s "$O/$name.bin" "$O/$name.back" || die "the $name blob came back different"
  done
  verify_pushed 2
  ok "pushes succeed again; everything pushed before, during recovery and after is intact"
  rm -rf "$O"
  step_passed
fi

# ---------------------------------------------------------------------------------------------------- 7
if [[ $STORAGE_KIND == s3 ]]; then
  step "7. berth gc --grace 0s three times while 8 pushes run through the balancer"
  G="$WORK/gc"
  mkdir -p "$G"
  head -c 1M /dev/urandom >"$G/orphan.bin"
  od=sha256:$(sha256_of "$G/orphan.bin")
  code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/octet-stream' \
    --data-binary "@$G/orphan.bin" "$HAPROXY_URL/v2/scale/gc-orphan/blobs/uploads/?digest=$od")
  [[ $code == 201 ]] || die "push of a blob no manifest references: status $code"
  # berth_s3 ARGS...: a berth command on the replicas' bucket and database.
  berth_s3() { env "${S3_ENV[@]}" "${DB_ENV[@]}" "$BERTH_BIN" "$@"; }
  gc_once() { berth_s3 gc --no-config-file --grace 0s; }
  start_pushes gc
  for k in 1 2 3; do
    gc_once >"$LOGS/gc-$k.log" 2>&1 || die "berth gc run $k failed: $(tail -n 3 "$LOGS/gc-$k.log")"
    log "  gc $k: $(grep -E 'removed' "$LOGS/gc-$k.log" | tail -n 1 | cut -c1-200)"
  done
  finish_pushes gc
  verify_pushed 3
  code=$(curl -sS -o /dev/null -w '%{http_code}' -I "$HAPROXY_URL/v2/scale/gc-orphan/blobs/$od")
  [[ $code == 404 ]] || die "the blob no manifest references is still there after gc --grace 0s (HEAD: $code)"
  ok "${#ACKED[@]} acknowledged pushes intact, ${#FAILED_PUSHES[@]} failed ones pushed on retry and intact; scale/kill-3:v1 intact; the unreferenced blob is gone"
  rm -rf "$G"
  step_passed
fi

# ---------------------------------------------------------------------------------------------------- 8
step "8. token auth, refresh tokens and metrics on every replica; read-only mode"
A="$WORK/auth"
mkdir -p "$A"
run keygen "$BERTH_BIN" keygen --key "$A/token.pem" --cert "$A/token.crt"
echo "alice-secret" | "$BERTH_BIN" htpasswd alice --cost 5 >"$A/htpasswd"
for n in $(seq 1 "$NREP"); do stop_replica "$n"; done
REPLICA_ENV=(REGISTRY_AUTH_TYPE=token "REGISTRY_AUTH_TOKEN_REALM=$HAPROXY_URL/auth" REGISTRY_AUTH_TOKEN_SERVICE=scaleout
  REGISTRY_AUTH_TOKEN_ISSUER=scaleout REGISTRY_AUTH_TOKEN_SERVER_ENABLED=true "REGISTRY_AUTH_TOKEN_SERVER_KEY=$A/token.pem"
  "REGISTRY_AUTH_TOKEN_SERVER_CERTIFICATE=$A/token.crt" "REGISTRY_AUTH_HTPASSWD=$A/htpasswd")
for n in $(seq 1 "$NREP"); do start_replica "$n"; done
rep() { echo "http://127.0.0.1:${REP_PORT[$1]}"; }
# token_from N FORM...: POST the token form to replica N; prints the JSON answer.
token_from() {
  local n=$1
  shift
  curl -fsS -X POST "$(rep "$n")/auth" --data-urlencode service=scaleout --data-urlencode client_id=scaleout \
    --data-urlencode 'scope=repository:scale/auth:pull,push' "$@"
}
code=$(curl -sS -o /dev/null -D "$A/anon.h" -w '%{http_code}' "$(rep 2)/v2/")
[[ $code == 401 ]] || die "an anonymous GET /v2/ on b2 answered $code, expected 401"
grep -qi "^www-authenticate: Bearer realm=\"$HAPROXY_URL/auth\"" "$A/anon.h" || die "b2's 401 has no Bearer challenge naming the realm"
token_from 1 --data-urlencode grant_type=password --data-urlencode username=alice --data-urlencode password=alice-secret \
  --data-urlencode access_type=offline >"$A/t1.json" || die "password login on b1 failed"
tok=$(jq -r .token "$A/t1.json")
refresh=$(jq -r '.refresh_token // empty' "$A/t1.json")
[[ -n $tok && -n $refresh ]] || die "b1 gave no token or no refresh token: $(cut -c1-200 "$A/t1.json")"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "$(rep 2)/v2/")
[[ $code == 200 ]] || die "b1's token on b2: GET /v2/ answered $code"
head -c 100k /dev/urandom >"$A/blob"
ad=sha256:$(sha256_of "$A/blob")
code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $tok" -H 'Content-Type: application/octet-stream' \
  --data-binary "@$A/blob" "$(rep 3)/v2/scale/auth/blobs/uploads/?digest=$ad")
[[ $code == 201 ]] || die "b1's token on b3: push answered $code"
token_from 3 --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$refresh" >"$A/t3.json" ||
  die "b3 refused the refresh token b1 issued"
tok3=$(jq -r .token "$A/t3.json")
code=$(curl -sS -o /dev/null -w '%{http_code}' -I -H "Authorization: Bearer $tok3" "$(rep 1)/v2/scale/auth/blobs/$ad")
[[ $code == 200 ]] || die "the token b3 gave for b1's refresh token, on b1: HEAD blob answered $code"
ok "a token and a refresh token from b1 work on b2 and b3; the token b3 traded for it works on b1"
for n in $(seq 1 "$NREP"); do
  m=$(curl -fsS -H "Authorization: Bearer $tok" "$(rep "$n")/metrics" || true)
  grep -q '^berth_http_requests_total{' <<<"$m" || die "replica $n's /metrics has no berth_http_requests_total"
done
ok "every replica's /metrics counts its requests (berth_http_requests_total)"
for n in $(seq 1 "$NREP"); do stop_replica "$n"; done
REPLICA_ENV=(REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED=true)
for n in $(seq 1 "$NREP"); do start_replica "$n"; done
for n in $(seq 1 "$NREP"); do
  code=$(curl -sS -o "$A/ro.body" -w '%{http_code}' -X POST -H 'Content-Length: 0' "$(rep "$n")/v2/scale/ro/blobs/uploads/")
  { [[ $code == 405 ]] && jq -e '.errors[0].code == "UNSUPPORTED"' "$A/ro.body" >/dev/null; } ||
    die "read-only replica $n: a push answered $code $(head -c 200 "$A/ro.body")"
  code=$(curl -sS -o /dev/null -w '%{http_code}' -I "$(rep "$n")/v2/scale/auth/blobs/$ad")
  [[ $code == 200 ]] || die "read-only replica $n: HEAD of a stored blob answered $code"
done
ok "read-only mode on every replica: pushes 405 UNSUPPORTED, pulls served"
REPLICA_ENV=()
rm -rf "$A"
step_passed

# ---------------------------------------------------------------------------------------------------- 9
if [[ $STORAGE_KIND == s3 ]]; then
  step "9. berth migrate --from a filesystem registry into the replicas' bucket and database"
  L="$WORK/legacy"
  mkdir -p "$L/storage"
  lport=$(free_port) || die "no free port"
  REGISTRY_HTTP_ADDR="127.0.0.1:$lport" REGISTRY_STORAGE_PATH="$L/storage" \
    "$BERTH_BIN" serve --no-config-file >"$LOGS/legacy.log" 2>&1 &
  lpid=$!
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$lport/v2/" 2>/dev/null && break; sleep 0.1; done
  make_layout "$IMAGES/legacy" v1 2 8 # new layers: the bucket has none of them
  forget_skopeo_cache
  run legacy-push skopeo copy --preserve-digests --dest-tls-verify=false "oci:$IMAGES/legacy:v1" "docker://127.0.0.1:$lport/legacy/app:v1"
  stop_pid "$lpid" "legacy registry" 10 || true
  log "  \$ berth migrate --no-config-file --from $L/storage   (with the replicas' storage.s3 and database settings)"
  berth_s3 migrate --no-config-file --from "$L/storage" >"$LOGS/legacy-migrate.log" 2>&1 ||
    die "berth migrate failed: $(tail -n 5 "$LOGS/legacy-migrate.log")"
  log "  $(tail -n 1 "$LOGS/legacy-migrate.log" | cut -c1-220)"
  copied=$(tail -n 1 "$LOGS/legacy-migrate.log" | sed -n 's/.*; \([0-9]*\) blob files.*/\1/p')
  [[ ${copied:-0} -ge 3 ]] || die "berth migrate copied ${copied:-no} blob files into the bucket, expected the image's 3 (config and 2 layers)"
  forget_skopeo_cache
  run legacy-pull skopeo copy --preserve-digests --src-tls-verify=false "docker://$REG/legacy/app:v1" "oci:$IMAGES/legacy-out:v1"
  ok "legacy/app:v1 after berth migrate, through the balancer: $(layouts_identical "$IMAGES/legacy" "$IMAGES/legacy-out" v1), byte-identical"
  REGISTRY_HTTP_ADDR="127.0.0.1:$lport" REGISTRY_STORAGE_PATH="$L/storage" timeout 10 \
    "$BERTH_BIN" serve --no-config-file >"$LOGS/legacy-again.log" 2>&1 && die "the migrated directory still opens with SQLite"
  grep -q 'database' "$LOGS/legacy-again.log" || die "the migrated directory's refusal does not name the database: $(tail -n 2 "$LOGS/legacy-again.log")"
  ok "the migrated directory refuses to open without its database"
  rm -rf "$L" "$IMAGES/legacy-out" "$IMAGES/legacy"
  step_passed
fi
