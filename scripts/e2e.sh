#!/usr/bin/env bash
# End-to-end test of a registry with real clients: skopeo (OCI layout and Docker schema 2 manifests,
# byte-for-byte round trips of a >100 MiB image) and the Docker Engine (push, pull, build, cross-repository
# mount), then a restart of the registry on the same storage to check that everything survives.
#
# Environment:
#   BERTH_BIN          berth binary to test. Unset: `cargo build --release -p berth-server`, target/release/berth.
#   E2E_TARGET         berth (default) or reference: Debian's docker-registry (distribution 2.8.2), to check this
#                      script itself against a known-good registry.
#   E2E_SKIP_DOCKER    1: if dockerd cannot run here, skip the Docker Engine checks instead of failing.
#   E2E_KEEP           1: keep the temporary directory (storage, logs, images) for inspection.
#   E2E_PORT           listen port (default: a free loopback port).
#   E2E_LAYER_MIB      sizes in MiB of the random (incompressible) layers of the skopeo image (default "40 35 30",
#                      at least 3 layers).
#   E2E_START_TIMEOUT  seconds to wait for GET /v2/ to answer 200 (default 30).
#   E2E_CMD_TIMEOUT    seconds any one client command (skopeo, docker, curl) may take (default 300).
#   E2E_DOCKERD_ARGS   extra dockerd arguments, tried before the built-in fallbacks.
#   E2E_TMPDIR         parent of the temporary directory (default /tmp; keep it short, dockerd makes unix sockets).
#
# Needs: curl jq skopeo umoci sha256sum tar, and docker + dockerd (Debian: docker.io) unless E2E_SKIP_DOCKER=1.
# Run as root (dockerd, and skopeo's cache under /var/lib/containers).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
E2E_TARGET=${E2E_TARGET:-berth}
E2E_START_TIMEOUT=${E2E_START_TIMEOUT:-30}
E2E_CMD_TIMEOUT=${E2E_CMD_TIMEOUT:-300}
read -r -a LAYER_MIB <<<"${E2E_LAYER_MIB:-40 35 30}"
SKOPEO_CACHE=/var/lib/containers/cache/blob-info-cache-v1.boltdb # root's; other users' is under ~/.local/share

T_START=$EPOCHREALTIME
SKIPPED=()
REG_PID=""
EXTRA_PIDS=() # auth-mode registries of step f
DOCKER_MODE="" # "" = not set up, existing, private, unavailable
WORK=""
REG_LOG=""

# ---------------------------------------------------------------------------------------------------- helpers

STEPS_TAG=e2e CMD_TIMEOUT=$E2E_CMD_TIMEOUT CMD_TIMEOUT_VAR=E2E_CMD_TIMEOUT STEP_WIDTH=88
NEED_HINT="Debian: apt-get install skopeo umoci docker.io jq curl"
# log ok warn die secs_since step step_passed run need curl docker sha256_of forget_skopeo_cache
# shellcheck source=scripts/lib/steps.sh
source "$ROOT/scripts/lib/steps.sh"

# free_port and stop_pid
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"

# ---------------------------------------------------------------------------------------------------- registry

start_registry() {
  printf '\n===== e2e: starting %s at %s =====\n' "$E2E_TARGET" "$(date +%T)" >>"$REG_LOG"
  case $E2E_TARGET in
  berth)
    # --no-config-file: Debian's docker-registry package installs /etc/docker/registry/config.yml (with
    # htpasswd auth), which berth would otherwise pick up.
    REGISTRY_HTTP_ADDR="127.0.0.1:$PORT" REGISTRY_STORAGE_PATH="$STORE" REGISTRY_STORAGE_DELETE_ENABLED=true \
      "$BERTH_BIN" serve --no-config-file >>"$REG_LOG" 2>&1 &
    ;;
  reference)
    docker-registry serve "$WORK/reference-config.yml" >>"$REG_LOG" 2>&1 &
    ;;
  esac
  REG_PID=$!
  log "  registry ($E2E_TARGET) started: pid $REG_PID, http://$REG, storage $STORE, log $REG_LOG"
  local deadline=$((SECONDS + E2E_START_TIMEOUT)) code
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$REG/v2/" || true)
    if [[ $code == 200 ]]; then
      ok "GET /v2/ -> 200"
      return 0
    fi
    if ! kill -0 "$REG_PID" 2>/dev/null; then
      local rc=0
      wait "$REG_PID" || rc=$?
      REG_PID=""
      die "the registry exited (status $rc) before answering GET /v2/"
    fi
    if ((SECONDS >= deadline)); then
      die "GET http://$REG/v2/ did not answer 200 within ${E2E_START_TIMEOUT}s (last status: $code)"
    fi
    sleep 0.2
  done
}

stop_registry() {
  [[ -n $REG_PID ]] || return 0
  local pid=$REG_PID rc=0
  REG_PID=""
  stop_pid "$pid" registry 10 || rc=$?
  log "  registry pid $pid stopped (exit status $rc)"
}

# start_extra NAME PORT CMD...: start another registry (auth modes) with its log in $LOGS/NAME.log and wait
# until GET /v2/ answers (200 or 401). EXTRA_BASE (default http://127.0.0.1:PORT) and EXTRA_CURL (extra curl
# arguments, e.g. --cacert FILE) change how it is probed.
start_extra() {
  local name=$1 port=$2
  shift 2
  "$@" >>"$LOGS/$name.log" 2>&1 &
  local pid=$!
  EXTRA_PIDS+=("$pid")
  local deadline=$((SECONDS + E2E_START_TIMEOUT)) code base=${EXTRA_BASE:-http://127.0.0.1:$port} probe=()
  [[ -n ${EXTRA_CURL:-} ]] && read -r -a probe <<<"$EXTRA_CURL"
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "${probe[@]}" "$base/v2/" || true)
    [[ $code == 200 || $code == 401 ]] && break
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
      tail -n 30 "$LOGS/$name.log" | sed 's/^/  | /'
      die "$name did not start on port $port"
    fi
    sleep 0.2
  done
  ok "$name answers on 127.0.0.1:$port (pid $pid)"
}

# ---------------------------------------------------------------------------------------------------- docker

docker_logs_tail() {
  if [[ $DOCKER_MODE == private && -f $DDIR/dockerd.log ]]; then
    log "--- last 30 lines of the dockerd log ($DDIR/dockerd.log):"
    tail -n 30 "$DDIR/dockerd.log" | sed 's/^/  | /'
  fi
}

# The private daemon's start and stop live in scripts/lib/dockerd.sh (shared with scripts/deploy-test.sh).
# shellcheck source=scripts/lib/dockerd.sh
source "$ROOT/scripts/lib/dockerd.sh"

stop_dockerd() {
  [[ $DOCKER_MODE == private ]] || return 0
  dockerd_stop "$DDIR"
}

setup_docker() {
  export DOCKER_CONFIG="$WORK/docker-config" # keep the client's config (and credentials) out of ~/.docker
  mkdir -p "$DOCKER_CONFIG"
  if ! type -P docker >/dev/null 2>&1 || ! type -P dockerd >/dev/null 2>&1; then
    DOCKER_MODE=unavailable
    return 0
  fi
  if timeout 20 docker info >/dev/null 2>&1; then
    DOCKER_MODE=existing
    log "  using the Docker daemon that is already running (${DOCKER_HOST:-default socket})"
    return 0
  fi
  # A private daemon. No containers are run, so it needs no networking ("none").
  local extra=()
  [[ -n ${E2E_DOCKERD_ARGS:-} ]] && read -r -a extra <<<"$E2E_DOCKERD_ARGS"
  if dockerd_start "$DDIR" none "${extra[@]}"; then
    DOCKER_MODE=private
    return 0
  fi
  DOCKER_MODE=unavailable
}

docker_id() { docker image inspect -f '{{.Id}}' "$1"; }

docker_rmi() {
  local r
  for r in "$@"; do
    docker image inspect "$r" >/dev/null 2>&1 || continue
    run "rmi-${r##*/}" docker rmi "$r"
    ! docker image inspect "$r" >/dev/null 2>&1 || die "$r is still present after docker rmi"
  done
}

# ---------------------------------------------------------------------------------------------------- checks

# manifest_digest_in_layout LAYOUT TAG
manifest_digest_in_layout() {
  jq -er --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
    "$1/index.json"
}

blob_path() { echo "$1/blobs/${2%%:*}/${2#*:}"; }

# verify_blob FILE DIGEST [REFERENCE_FILE]: FILE's sha256 is DIGEST (and FILE equals REFERENCE_FILE).
verify_blob() {
  [[ -f $1 ]] || die "blob $2 missing: $1"
  local got
  got=$(sha256_of "$1")
  [[ "sha256:$got" == "$2" ]] || die "blob $1: sha256 is sha256:$got, expected $2"
  if [[ -n ${3:-} ]]; then cmp -s "$1" "$3" || die "blob $2 differs from the original ($1 vs $3)"; fi
}

# check_uploaded LOG N: the `skopeo --debug copy` in LOG uploaded (POST, PATCH, PUT) N blobs, none reused.
check_uploaded() {
  local n
  n=$(grep -c 'Upload of layer sha256:[0-9a-f]* complete' "$1" || true)
  ((n == $2)) || die "skopeo uploaded $n blobs, expected $2 (see $1)"
  ! grep -q 'Skipping blob' "$1" || die "skopeo skipped blobs that should have been uploaded (see $1)"
}

# verify_layout_identical OUT_LAYOUT TAG: OUT holds the same manifest, config and layers as the source image.
verify_layout_identical() {
  local out=$1 tag=$2 d n=0 bytes=0
  d=$(manifest_digest_in_layout "$out" "$tag") || die "tag $tag not found in $out/index.json"
  [[ $d == "$SRC_DIGEST" ]] || die "manifest digest after the round trip is $d, expected $SRC_DIGEST"
  verify_blob "$(blob_path "$out" "$d")" "$d" "$(blob_path "$SRC_LAYOUT" "$SRC_DIGEST")"
  for d in "${SRC_BLOBS[@]}"; do
    verify_blob "$(blob_path "$out" "$d")" "$d" "$(blob_path "$SRC_LAYOUT" "$d")"
    n=$((n + 1))
    bytes=$((bytes + $(stat -c %s "$(blob_path "$out" "$d")")))
  done
  ok "$out: manifest $SRC_DIGEST and all $n blobs ($((bytes / 1048576)) MiB) are byte-identical to the source"
}

# ---------------------------------------------------------------------------------------------------- cleanup

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if ((rc != 0)); then
    log "E2E FAILED (exit $rc) in step: ${STEP:-?} [target $E2E_TARGET]"
    if [[ -n $REG_LOG && -f $REG_LOG ]]; then
      log "--- last 60 lines of the registry log ($REG_LOG):"
      tail -n 60 "$REG_LOG" | sed 's/^/  | /'
    fi
    [[ $STEP == *ocker* ]] && docker_logs_tail
  fi
  log "cleaning up"
  stop_registry
  local p
  for p in "${EXTRA_PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  # shellcheck disable=SC2033 # xargs runs the docker binary, not the wrapper function: fine here
  if [[ $DOCKER_MODE == existing && -n ${REG:-} ]]; then
    docker images --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | grep "^$REG/" | xargs -r docker rmi -f >/dev/null 2>&1
  fi
  stop_dockerd
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ ${E2E_KEEP:-0} == 1 ]]; then
      log "kept $WORK (E2E_KEEP=1)"
    else
      rm -rf "$WORK" || log "could not remove all of $WORK"
    fi
  fi
  if ((${#PASSED[@]})); then
    log "passed:"
    printf '  PASS  %s\n' "${PASSED[@]}"
  fi
  if ((${#SKIPPED[@]})); then
    printf '  SKIP  %s\n' "${SKIPPED[@]}"
  fi
  local total
  total=$(secs_since "$T_START")
  if ((rc == 0)); then
    log "E2E PASSED against $E2E_TARGET in ${total}s"
    echo "e2e: ${#PASSED[@]} passed, 0 failed, ${#SKIPPED[@]} skipped"
  else
    log "E2E FAILED against $E2E_TARGET after ${total}s, in step: ${STEP:-?}"
    echo "e2e: ${#PASSED[@]} passed, 1 failed, ${#SKIPPED[@]} skipped"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ==================================================================================================== main

step "setup"
need curl jq skopeo umoci sha256sum tar cmp awk
case $E2E_TARGET in
berth)
  if [[ -z ${BERTH_BIN:-} ]]; then
    log "  BERTH_BIN is unset: building berth"
    (cd "$ROOT" && cargo build --release -p berth-server)
    BERTH_BIN="$ROOT/target/release/berth"
  fi
  [[ -x $BERTH_BIN ]] || die "BERTH_BIN=$BERTH_BIN is not an executable file"
  BERTH_BIN=$(cd "$(dirname "$BERTH_BIN")" && pwd)/$(basename "$BERTH_BIN")
  ;;
reference) need docker-registry ;;
*) die "E2E_TARGET must be berth or reference, not '$E2E_TARGET'" ;;
esac
WORK=$(mktemp -d "${E2E_TMPDIR:-/tmp}/berth-e2e.XXXXXX")
LOGS="$WORK/logs"
STORE="$WORK/storage"
DDIR="$WORK/docker"
REG_LOG="$WORK/registry.log"
mkdir -p "$LOGS" "$STORE"
PORT=${E2E_PORT:-$(free_port)} || die "no free loopback port found"
REG="127.0.0.1:$PORT"
if [[ $E2E_TARGET == reference ]]; then
  cat >"$WORK/reference-config.yml" <<EOF
version: 0.1
log: {level: info, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $STORE}, delete: {enabled: true}}
http: {addr: $REG}
EOF
fi
log "  target $E2E_TARGET${BERTH_BIN:+ ($BERTH_BIN)}, registry $REG, work dir $WORK"
log "  skopeo $(skopeo --version | awk '{print $3}'), umoci $(umoci --version | awk '{print $3}')"
step_passed

# ---------------------------------------------------------------------------------------------------- a
step "a. start the registry and wait for GET /v2/"
start_registry
step_passed

# ---------------------------------------------------------------------------------------------------- b
step "b1. build an OCI image layout with umoci (${#LAYER_MIB[@]} random layers: ${LAYER_MIB[*]} MiB)"
SRC_LAYOUT="$WORK/oci-src"
BUNDLE="$WORK/bundle"
run umoci-init umoci init --layout "$SRC_LAYOUT"
run umoci-new umoci new --image "$SRC_LAYOUT:v1"
run umoci-config umoci config --image "$SRC_LAYOUT:v1" --config.cmd /bin/e2e --config.env E2E=1 \
  --config.label org.example.e2e=berth --author "berth e2e"
run umoci-unpack umoci unpack --image "$SRC_LAYOUT:v1" "$BUNDLE"
i=0
for mib in "${LAYER_MIB[@]}"; do
  i=$((i + 1))
  d="$BUNDLE/rootfs/layer$i"
  mkdir -p "$d/small/nested"
  head -c "${mib}M" /dev/urandom >"$d/random.bin"
  for j in 1 2 3 4 5; do
    printf 'layer %s small file %s\n' "$i" "$j" >"$d/small/file$j.txt"
  done
  head -c 1000 /dev/urandom >"$d/small/nested/odd-size.bin"
  ln -s random.bin "$d/link-to-random"
  chmod 0750 "$d/small"
  if ((i > 1)); then
    echo "changed in layer $i" >"$BUNDLE/rootfs/layer1/small/file1.txt" # modified file
    rm -f "$BUNDLE/rootfs/layer1/small/file2.txt"                      # whiteout
  fi
  run "umoci-repack-$i" umoci repack --refresh-bundle --image "$SRC_LAYOUT:v1" "$BUNDLE"
done
rm -rf "$BUNDLE"
run umoci-gc umoci gc --layout "$SRC_LAYOUT"
SRC_DIGEST=$(manifest_digest_in_layout "$SRC_LAYOUT" v1)
SRC_MANIFEST=$(blob_path "$SRC_LAYOUT" "$SRC_DIGEST")
mapfile -t SRC_BLOBS < <(jq -r '.config.digest, .layers[].digest' "$SRC_MANIFEST")
mapfile -t SRC_LAYERS < <(jq -r '.layers[].digest' "$SRC_MANIFEST")
SRC_LAYER_BYTES=$(jq '[.layers[].size] | add' "$SRC_MANIFEST")
((${#SRC_LAYERS[@]} >= 3)) || die "expected at least 3 layers, the image has ${#SRC_LAYERS[@]}"
WANT_MIB=0
for mib in "${LAYER_MIB[@]}"; do WANT_MIB=$((WANT_MIB + mib)); done # 105 by default
((SRC_LAYER_BYTES >= WANT_MIB * 1048576)) || die "expected at least $WANT_MIB MiB of layers, the image has $SRC_LAYER_BYTES bytes"
ok "image $SRC_DIGEST: ${#SRC_LAYERS[@]} layers, $((SRC_LAYER_BYTES / 1048576)) MiB"
step_passed

step "b2. skopeo copy oci: -> docker://$REG/e2e/skopeo:v1 (OCI manifest)"
forget_skopeo_cache
run skopeo-push skopeo --debug copy --preserve-digests --digestfile "$WORK/push.digest" --dest-tls-verify=false \
  "oci:$SRC_LAYOUT:v1" "docker://$REG/e2e/skopeo:v1"
[[ $(cat "$WORK/push.digest") == "$SRC_DIGEST" ]] || die "pushed manifest digest $(cat "$WORK/push.digest") != $SRC_DIGEST"
check_uploaded "$LOGS/skopeo-push.log" "${#SRC_BLOBS[@]}"
ok "uploaded ${#SRC_BLOBS[@]} blobs; manifest digest $SRC_DIGEST"
# The registry serves exactly the manifest bytes that were pushed, with the right digest header.
curl -fsS -D "$WORK/manifest.headers" -o "$WORK/manifest.json" \
  -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/e2e/skopeo/manifests/v1" ||
  die "GET /v2/e2e/skopeo/manifests/v1 failed"
cmp -s "$WORK/manifest.json" "$SRC_MANIFEST" || die "GET manifest returned different bytes than were pushed"
grep -qi "^docker-content-digest: $SRC_DIGEST" "$WORK/manifest.headers" ||
  die "GET manifest: Docker-Content-Digest is not $SRC_DIGEST: $(grep -i '^docker-content-digest' "$WORK/manifest.headers")"
grep -qi '^content-type: application/vnd.oci.image.manifest.v1+json' "$WORK/manifest.headers" ||
  die "GET manifest: wrong Content-Type: $(grep -i '^content-type' "$WORK/manifest.headers")"
ok "GET manifest: same bytes, Docker-Content-Digest and Content-Type as pushed"
step_passed

step "b3. skopeo inspect and list-tags"
run skopeo-inspect skopeo inspect --tls-verify=false "docker://$REG/e2e/skopeo:v1"
[[ $(jq -r .Digest "$LOGS/skopeo-inspect.log") == "$SRC_DIGEST" ]] || die "skopeo inspect: Digest is not $SRC_DIGEST"
[[ $(jq '.Layers | length' "$LOGS/skopeo-inspect.log") == "${#SRC_LAYERS[@]}" ]] || die "skopeo inspect: wrong layer count"
[[ $(jq -r '.Labels["org.example.e2e"]' "$LOGS/skopeo-inspect.log") == berth ]] || die "skopeo inspect: label missing (config blob)"
run skopeo-inspect-raw skopeo inspect --raw --tls-verify=false "docker://$REG/e2e/skopeo:v1"
cmp -s "$LOGS/skopeo-inspect-raw.log" "$SRC_MANIFEST" || die "skopeo inspect --raw differs from the pushed manifest"
ok "skopeo inspect: digest, layers, labels (from the config blob) and raw manifest as pushed"
# A second tag, registry to registry (the blobs are already in the repository).
forget_skopeo_cache
run skopeo-retag skopeo --debug copy --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
  "docker://$REG/e2e/skopeo:v1" "docker://$REG/e2e/skopeo:second"
run skopeo-list-tags skopeo list-tags --tls-verify=false "docker://$REG/e2e/skopeo"
[[ $(jq -c '.Tags | sort' "$LOGS/skopeo-list-tags.log") == '["second","v1"]' ]] ||
  die "skopeo list-tags: expected [second, v1], got $(jq -c .Tags "$LOGS/skopeo-list-tags.log")"
ok "skopeo list-tags: [second, v1]"
step_passed

step "b4. skopeo copy docker://$REG/e2e/skopeo:v1 -> oci: and compare byte for byte"
forget_skopeo_cache
run skopeo-pull skopeo --debug copy --preserve-digests --src-tls-verify=false \
  "docker://$REG/e2e/skopeo:v1" "oci:$WORK/oci-out:v1"
verify_layout_identical "$WORK/oci-out" v1
rm -rf "$WORK/oci-out"
step_passed

step "b5. skopeo copy --format v2s2 -> docker://$REG/e2e/skopeo-v2s2:v1 and back"
forget_skopeo_cache
run skopeo-push-v2s2 skopeo --debug copy --format v2s2 --digestfile "$WORK/push-v2s2.digest" --dest-tls-verify=false \
  "oci:$SRC_LAYOUT:v1" "docker://$REG/e2e/skopeo-v2s2:v1"
check_uploaded "$LOGS/skopeo-push-v2s2.log" "${#SRC_BLOBS[@]}"
V2S2_DIGEST=$(cat "$WORK/push-v2s2.digest")
[[ $V2S2_DIGEST != "$SRC_DIGEST" ]] || die "the v2s2 copy has the OCI manifest's digest: no conversion happened"
forget_skopeo_cache
V2S2_OUT="$WORK/v2s2-out"
run skopeo-pull-v2s2 skopeo --debug copy --preserve-digests --src-tls-verify=false \
  "docker://$REG/e2e/skopeo-v2s2:v1" "dir:$V2S2_OUT"
[[ $(jq -r .mediaType "$V2S2_OUT/manifest.json") == application/vnd.docker.distribution.manifest.v2+json ]] ||
  die "pulled manifest is not Docker schema 2: $(jq -r .mediaType "$V2S2_OUT/manifest.json")"
[[ "sha256:$(sha256_of "$V2S2_OUT/manifest.json")" == "$V2S2_DIGEST" ]] || die "pulled v2s2 manifest digest != pushed $V2S2_DIGEST"
mapfile -t V2S2_LAYERS < <(jq -r '.layers[].digest' "$V2S2_OUT/manifest.json")
[[ "${V2S2_LAYERS[*]}" == "${SRC_LAYERS[*]}" ]] || die "v2s2 layers differ from the OCI image's layers"
for d in "${V2S2_LAYERS[@]}"; do
  verify_blob "$V2S2_OUT/${d#sha256:}" "$d" "$(blob_path "$SRC_LAYOUT" "$d")"
done
d=$(jq -r .config.digest "$V2S2_OUT/manifest.json")
verify_blob "$V2S2_OUT/${d#sha256:}" "$d"
curl -fsS -D "$WORK/v2s2.headers" -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://$REG/v2/e2e/skopeo-v2s2/manifests/v1" || die "GET /v2/e2e/skopeo-v2s2/manifests/v1 failed"
grep -qi '^content-type: application/vnd.docker.distribution.manifest.v2+json' "$WORK/v2s2.headers" ||
  die "GET v2s2 manifest: wrong Content-Type: $(grep -i '^content-type' "$WORK/v2s2.headers")"
ok "v2s2 manifest $V2S2_DIGEST round-trips; its ${#V2S2_LAYERS[@]} layers are byte-identical to the OCI image's"
rm -rf "$V2S2_OUT"
step_passed

# ---------------------------------------------------------------------------------------------------- c
step "c0. Docker Engine available"
setup_docker
case $DOCKER_MODE in
existing | private)
  log "  docker client $(docker version -f '{{.Client.Version}}' 2>/dev/null), daemon $(docker version -f '{{.Server.Version}}' 2>/dev/null)"
  step_passed
  ;;
unavailable)
  docker_logs_tail
  if [[ ${E2E_SKIP_DOCKER:-0} == 1 ]]; then
    warn "Docker Engine cannot run here (no docker/dockerd, or dockerd failed to start); E2E_SKIP_DOCKER=1, skipping the Docker checks"
    SKIPPED+=("c/d. Docker Engine checks (dockerd unavailable, E2E_SKIP_DOCKER=1)")
    STEP=""
  else
    die "Docker Engine cannot run here (no docker/dockerd, or dockerd failed to start: see $DDIR/dockerd.log above). Set E2E_SKIP_DOCKER=1 to skip these checks."
  fi
  ;;
esac

BUILT=""
if [[ $DOCKER_MODE != unavailable ]]; then
  IMG="$REG/e2e/docker:v1"
  OTHER="$REG/e2e/other:v1"
  BUILT_IMG="$REG/e2e/built:v1"

  step "c1. docker import, push, rmi, pull: same image ID"
  RFS="$WORK/docker-rootfs"
  mkdir -p "$RFS/etc" "$RFS/data/sub" "$RFS/bin"
  echo "berth e2e" >"$RFS/etc/motd"
  printf 'NAME=e2e\n' >"$RFS/etc/os-release"
  head -c 3M /dev/urandom >"$RFS/data/random-1.bin"
  head -c 1M /dev/urandom >"$RFS/data/sub/random-2.bin"
  head -c 12345 /dev/urandom >"$RFS/bin/e2e"
  chmod 0755 "$RFS/bin/e2e"
  tar -C "$RFS" -cf "$WORK/rootfs.tar" .
  run docker-import docker import --change 'CMD ["/bin/e2e"]' --message "berth e2e" "$WORK/rootfs.tar" "$IMG"
  ID1=$(docker_id "$IMG")
  run docker-push docker push "$IMG"
  PUSH_DIGEST=$(grep -o 'digest: sha256:[0-9a-f]\{64\}' "$LOGS/docker-push.log" | cut -d' ' -f2 || true)
  [[ -n $PUSH_DIGEST ]] || die "docker push printed no digest (see $LOGS/docker-push.log)"
  HEAD_DIGEST=$(curl -fsS -I -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REG/v2/e2e/docker/manifests/v1" | tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" { print $2 }')
  [[ $HEAD_DIGEST == "$PUSH_DIGEST" ]] || die "HEAD manifest gives digest '$HEAD_DIGEST', docker push said $PUSH_DIGEST"
  ok "pushed $IMG: image $ID1, manifest $PUSH_DIGEST"
  docker_rmi "$IMG"
  run docker-pull docker pull "$IMG"
  ID2=$(docker_id "$IMG")
  [[ $ID1 == "$ID2" ]] || die "image ID after pull is $ID2, pushed $ID1"
  docker image inspect -f '{{join .RepoDigests " "}}' "$IMG" | grep -q "$PUSH_DIGEST" ||
    die "pulled image's RepoDigests lack $PUSH_DIGEST"
  ok "pulled back: same image ID $ID2 and manifest digest"
  step_passed

  step "c2. docker build FROM scratch (2 layers), push, rmi, pull"
  CTX="$WORK/build-ctx"
  mkdir -p "$CTX"
  head -c 2M /dev/urandom >"$CTX/a.bin"
  head -c 1M /dev/urandom >"$CTX/b.bin"
  printf 'FROM scratch\nADD a.bin /data/a.bin\nADD b.bin /data/b.bin\nCMD ["/data/a.bin"]\n' >"$CTX/Dockerfile"
  log "  \$ DOCKER_BUILDKIT=0 docker build -t $BUILT_IMG $CTX"
  if DOCKER_BUILDKIT=0 docker build -t "$BUILT_IMG" "$CTX" >"$LOGS/docker-build.log" 2>&1; then
    BUILT_ID=$(docker_id "$BUILT_IMG")
    NL=$(docker image inspect -f '{{len .RootFS.Layers}}' "$BUILT_IMG")
    ((NL >= 2)) || die "docker build produced $NL layer(s), expected 2"
    run docker-push-built docker push "$BUILT_IMG"
    docker_rmi "$BUILT_IMG"
    run docker-pull-built docker pull "$BUILT_IMG"
    [[ $(docker_id "$BUILT_IMG") == "$BUILT_ID" ]] || die "built image ID after pull is $(docker_id "$BUILT_IMG"), pushed $BUILT_ID"
    BUILT=1
    ok "built $BUILT_IMG ($NL layers, $BUILT_ID), pushed, pulled back with the same ID"
    step_passed
  else
    warn "docker build does not work here (builder unavailable?); skipping this sub-step. Its output:"
    tail -n 15 "$LOGS/docker-build.log" | sed 's/^/  | /'
    SKIPPED+=("c2. docker build (builder unavailable)")
    STEP=""
  fi

  step "c3. docker push to a second repository mounts the layer (\"Mounted from\")"
  run docker-tag docker tag "$IMG" "$OTHER"
  run docker-push-other docker push "$OTHER"
  sed 's/^/  | /' "$LOGS/docker-push-other.log"
  grep -q 'Mounted from e2e/docker' "$LOGS/docker-push-other.log" ||
    die "docker push $OTHER did not mount the layer from e2e/docker (no \"Mounted from\" in its output)"
  ok "layer mounted from e2e/docker"
  step_passed
fi

# ---------------------------------------------------------------------------------------------------- d
step "d1. restart the registry on the same storage and port"
stop_registry
start_registry
run catalog curl -fsS "http://$REG/v2/_catalog"
for r in e2e/skopeo e2e/skopeo-v2s2; do
  jq -e --arg r "$r" '.repositories | index($r)' "$LOGS/catalog.log" >/dev/null || die "catalog after restart lacks $r: $(cat "$LOGS/catalog.log")"
done
ok "catalog after restart: $(jq -c .repositories "$LOGS/catalog.log")"
step_passed

step "d2. after the restart: skopeo pulls are byte-identical"
run skopeo-list-tags-2 skopeo list-tags --tls-verify=false "docker://$REG/e2e/skopeo"
[[ $(jq -c '.Tags | sort' "$LOGS/skopeo-list-tags-2.log") == '["second","v1"]' ]] ||
  die "skopeo list-tags after restart: $(jq -c .Tags "$LOGS/skopeo-list-tags-2.log")"
forget_skopeo_cache
run skopeo-pull-2 skopeo --debug copy --preserve-digests --src-tls-verify=false \
  "docker://$REG/e2e/skopeo:v1" "oci:$WORK/oci-out-2:v1"
verify_layout_identical "$WORK/oci-out-2" v1
rm -rf "$WORK/oci-out-2"
run skopeo-inspect-v2s2-2 skopeo inspect --raw --tls-verify=false "docker://$REG/e2e/skopeo-v2s2:v1"
[[ "sha256:$(sha256_of "$LOGS/skopeo-inspect-v2s2-2.log")" == "$V2S2_DIGEST" ]] || die "v2s2 manifest changed across the restart"
ok "v2s2 manifest $V2S2_DIGEST unchanged"
step_passed

if [[ $DOCKER_MODE != unavailable ]]; then
  step "d3. after the restart: docker pulls give the same image IDs"
  docker_rmi "$IMG" "$OTHER" ${BUILT:+"$BUILT_IMG"}
  for r in "$IMG" "$OTHER"; do
    run "docker-pull-2-${r##*/}" docker pull "$r"
    [[ $(docker_id "$r") == "$ID1" ]] || die "$r: image ID after restart is $(docker_id "$r"), pushed $ID1"
  done
  if [[ -n $BUILT ]]; then
    run docker-pull-2-built docker pull "$BUILT_IMG"
    [[ $(docker_id "$BUILT_IMG") == "$BUILT_ID" ]] || die "$BUILT_IMG: image ID after restart differs"
  fi
  ok "pulled $IMG, $OTHER${BUILT:+, $BUILT_IMG}: same IDs as pushed"
  step_passed
fi

step "e. skopeo delete (storage.delete.enabled)"
run skopeo-delete skopeo delete --tls-verify=false "docker://$REG/e2e/skopeo-v2s2:v1"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://$REG/v2/e2e/skopeo-v2s2/manifests/$V2S2_DIGEST")
[[ $code == 404 ]] || die "GET the deleted manifest by digest: $code, expected 404"
ok "deleted e2e/skopeo-v2s2@$V2S2_DIGEST; GET by digest -> 404"
step_passed

# ---------------------------------------------------------------------------------------------------- f
# Authentication with real clients: basic auth with access rules, token auth with Berth's own token
# server, and distribution 2.8 trusting Berth's tokens.
if [[ $E2E_TARGET == berth && $DOCKER_MODE != unavailable ]]; then
  export DOCKER_CONFIG="$WORK/docker-config" # docker login writes credentials here, not to ~/.docker
  mkdir -p "$DOCKER_CONFIG"
  AUTH="$WORK/auth"
  mkdir -p "$AUTH"
  echo "alice-secret" | "$BERTH_BIN" htpasswd alice --cost 5 >"$AUTH/htpasswd"
  echo "bob-secret" | "$BERTH_BIN" htpasswd bob --cost 5 >>"$AUTH/htpasswd"
  cat >"$AUTH/rules.json" <<'EOF'
{"defaultPolicy": "deny",
 "rules": [{"repository": "${user}/**", "users": ["*"], "permissions": ["pull", "push", "delete"]}]}
EOF

  step "f1. basic auth: docker login, push and pull in one's own namespace, denied in another's"
  BPORT=$(free_port) || die "no free port"
  B="127.0.0.1:$BPORT"
  start_extra berth-basic "$BPORT" env REGISTRY_HTTP_ADDR="$B" REGISTRY_STORAGE_PATH="$WORK/storage-basic" \
    REGISTRY_AUTH_TYPE=basic REGISTRY_AUTH_HTPASSWD="$AUTH/htpasswd" REGISTRY_ACCESS_CONTROL_CONFIG="$AUTH/rules.json" \
    "$BERTH_BIN" serve --no-config-file
  if echo "wrong" | docker login "$B" -u alice --password-stdin >"$LOGS/login-basic-wrong.log" 2>&1; then
    die "docker login with a wrong password succeeded"
  fi
  echo "alice-secret" | run login-basic docker login "$B" -u alice --password-stdin
  grep -q "Login Succeeded" "$LOGS/login-basic.log" || die "docker login: no 'Login Succeeded'"
  run tag-basic docker tag "$IMG" "$B/alice/app:v1"
  run push-basic docker push "$B/alice/app:v1"
  run tag-basic-bob docker tag "$IMG" "$B/bob/app:v1"
  if docker push "$B/bob/app:v1" >"$LOGS/push-basic-denied.log" 2>&1; then
    die "alice could push into bob/app"
  fi
  grep -qi "denied" "$LOGS/push-basic-denied.log" || die "push into bob/app failed without 'denied': $(tail -n 3 "$LOGS/push-basic-denied.log")"
  ok "push into bob/app refused: $(grep -i denied "$LOGS/push-basic-denied.log" | tail -n 1)"
  docker_rmi "$B/alice/app:v1" "$B/bob/app:v1"
  run pull-basic docker pull "$B/alice/app:v1"
  [[ $(docker_id "$B/alice/app:v1") == "$ID1" ]] || die "image ID after pull through basic auth differs"
  forget_skopeo_cache
  run skopeo-basic skopeo copy --dest-tls-verify=false --dest-creds alice:alice-secret \
    "oci:$SRC_LAYOUT:v1" "docker://$B/alice/skopeo:v1"
  if skopeo inspect --tls-verify=false --creds bob:bob-secret "docker://$B/alice/skopeo:v1" >"$LOGS/skopeo-basic-bob.log" 2>&1; then
    die "bob could read alice/skopeo"
  fi
  run logout-basic docker logout "$B"
  ok "docker login/push/pull and skopeo --dest-creds work; other namespaces are denied"
  step_passed

  step "f2. token auth with Berth's token server: docker login, push, pull, denied elsewhere"
  run keygen "$BERTH_BIN" keygen --key "$AUTH/token.pem" --cert "$AUTH/token.crt"
  TPORT=$(free_port) || die "no free port"
  T="127.0.0.1:$TPORT"
  start_extra berth-token "$TPORT" env REGISTRY_HTTP_ADDR="$T" REGISTRY_STORAGE_PATH="$WORK/storage-token" \
    REGISTRY_AUTH_TYPE=token REGISTRY_AUTH_TOKEN_REALM="http://$T/auth" REGISTRY_AUTH_TOKEN_SERVICE=berth-e2e \
    REGISTRY_AUTH_TOKEN_ISSUER=berth-e2e-issuer REGISTRY_AUTH_TOKEN_SERVER_ENABLED=true \
    REGISTRY_AUTH_TOKEN_SERVER_KEY="$AUTH/token.pem" REGISTRY_AUTH_TOKEN_SERVER_CERTIFICATE="$AUTH/token.crt" \
    REGISTRY_AUTH_HTPASSWD="$AUTH/htpasswd" REGISTRY_ACCESS_CONTROL_CONFIG="$AUTH/rules.json" \
    "$BERTH_BIN" serve --no-config-file
  curl -s -D "$WORK/token-challenge.headers" -o /dev/null "http://$T/v2/" || true
  grep -qi "^www-authenticate: Bearer realm=\"http://$T/auth\",service=\"berth-e2e\"" "$WORK/token-challenge.headers" ||
    die "unexpected challenge: $(grep -i www-authenticate "$WORK/token-challenge.headers")"
  echo "alice-secret" | run login-token docker login "$T" -u alice --password-stdin
  run tag-token docker tag "$IMG" "$T/alice/app:v1"
  run push-token docker push "$T/alice/app:v1"
  run tag-token-bob docker tag "$IMG" "$T/bob/app:v1"
  if docker push "$T/bob/app:v1" >"$LOGS/push-token-denied.log" 2>&1; then
    die "alice could push into bob/app in token mode"
  fi
  ok "push into bob/app refused: $(tail -n 1 "$LOGS/push-token-denied.log")"
  docker_rmi "$T/alice/app:v1" "$T/bob/app:v1"
  run pull-token docker pull "$T/alice/app:v1"
  [[ $(docker_id "$T/alice/app:v1") == "$ID1" ]] || die "image ID after pull through token auth differs"
  forget_skopeo_cache
  run skopeo-token skopeo copy --dest-tls-verify=false --dest-creds bob:bob-secret \
    "oci:$SRC_LAYOUT:v1" "docker://$T/bob/skopeo:v1"
  ok "docker and skopeo push and pull with tokens from the built-in token server"
  step_passed

  step "f3. distribution 2.8 (Debian docker-registry) accepts Berth's tokens for a docker push"
  if type -P docker-registry >/dev/null 2>&1; then
    RPORT=$(free_port) || die "no free port"
    R="127.0.0.1:$RPORT"
    cat >"$AUTH/ref-token.yml" <<EOF
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $WORK/storage-ref-token}}
http: {addr: $R}
auth:
  token:
    realm: http://$T/auth
    service: berth-e2e
    issuer: berth-e2e-issuer
    rootcertbundle: $AUTH/token.crt
EOF
    start_extra ref-token "$RPORT" docker-registry serve "$AUTH/ref-token.yml"
    echo "alice-secret" | run login-ref docker login "$R" -u alice --password-stdin
    run tag-ref docker tag "$IMG" "$R/alice/interop:v1"
    run push-ref docker push "$R/alice/interop:v1"
    docker_rmi "$R/alice/interop:v1"
    run pull-ref docker pull "$R/alice/interop:v1"
    [[ $(docker_id "$R/alice/interop:v1") == "$ID1" ]] || die "image ID after pull from distribution differs"
    ok "docker login, push and pull against distribution 2.8 with tokens signed by Berth (x5c to rootcertbundle)"
    step_passed
  else
    SKIPPED+=("f3. distribution interop (docker-registry not installed)")
    STEP=""
  fi
  unset DOCKER_CONFIG
fi

# ---------------------------------------------------------------------------------------------------- h
# A hostile user: one authenticated user opens 5,000 upload sessions against a registry limited to
# 1,024 open files, while another user pushes and pulls an image with skopeo. Idle sessions hold no
# descriptors and the per-client cap (http.limits.uploadsperclient, 1,000) refuses the rest with 429;
# the other user's push and pull succeed and /v2/ keeps answering.
if [[ $E2E_TARGET == berth ]]; then
  step "h. 5,000 upload sessions from one user under ulimit -n 1024; another user pushes and pulls with skopeo"
  HAUTH="$WORK/hostile"
  mkdir -p "$HAUTH"
  echo "mallory-secret" | "$BERTH_BIN" htpasswd mallory --cost 5 >"$HAUTH/htpasswd"
  echo "carol-secret" | "$BERTH_BIN" htpasswd carol --cost 5 >>"$HAUTH/htpasswd"
  HPORT=$(free_port) || die "no free port"
  H="127.0.0.1:$HPORT"
  start_extra berth-hostile "$HPORT" \
    bash -c 'ulimit -n 1024 && exec "$@"' limited env REGISTRY_HTTP_ADDR="$H" \
    REGISTRY_STORAGE_PATH="$WORK/storage-hostile" REGISTRY_AUTH_TYPE=basic REGISTRY_AUTH_HTPASSWD="$HAUTH/htpasswd" \
    "$BERTH_BIN" serve --no-config-file
  HPID=${EXTRA_PIDS[-1]}
  grep -q "open_files=1024" "$LOGS/berth-hostile.log" || die "berth did not log its open-files limit of 1024"
  # One curl, one connection, 5,000 POSTs.
  for _ in $(seq 5000); do
    printf 'url = "http://%s/v2/mallory/spam/blobs/uploads/"\noutput = /dev/null\n' "$H"
  done >"$HAUTH/spam.curl"
  command curl -s -u mallory:mallory-secret -X POST -w '%{http_code}\n' -K "$HAUTH/spam.curl" >"$HAUTH/spam.codes" &
  SPAM_PID=$!
  forget_skopeo_cache
  run skopeo-hostile-push skopeo copy --dest-tls-verify=false --dest-creds carol:carol-secret \
    "oci:$SRC_LAYOUT:v1" "docker://$H/carol/app:v1"
  code=$(curl -s -o /dev/null -w '%{http_code}' -u carol:carol-secret "http://$H/v2/")
  [[ $code == 200 ]] || die "GET /v2/ during the flood: $code"
  wait "$SPAM_PID" || die "the flooding curl failed"
  accepted=$(grep -c '^202$' "$HAUTH/spam.codes" || true)
  refused=$(grep -c '^429$' "$HAUTH/spam.codes" || true)
  ((accepted == 1000 && refused == 4000)) ||
    die "mallory's 5,000 POSTs: $accepted accepted, $refused refused (expected 1000 and 4000): $(sort "$HAUTH/spam.codes" | uniq -c | tr '\n' ' ')"
  fds=$(find "/proc/$HPID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  ((fds < 100)) || die "berth holds $fds descriptors with 1,000 idle sessions open"
  rm -rf "$WORK/hostile-pull"
  run skopeo-hostile-pull skopeo copy --src-tls-verify=false --src-creds carol:carol-secret \
    "docker://$H/carol/app:v1" "oci:$WORK/hostile-pull:v1"
  want=$(manifest_digest_in_layout "$SRC_LAYOUT" v1)
  got=$(manifest_digest_in_layout "$WORK/hostile-pull" v1)
  [[ $want == "$got" ]] || die "carol's image came back as $got, pushed $want"
  code=$(curl -s -o /dev/null -w '%{http_code}' -u carol:carol-secret "http://$H/v2/")
  [[ $code == 200 ]] || die "GET /v2/ after the flood: $code"
  ok "mallory: $accepted sessions, $refused refused (429); berth holds $fds descriptors; carol pushed and pulled"
  step_passed
fi

# ---------------------------------------------------------------------------------------------------- g
# TLS: a test CA, curl --cacert over HTTP/2 and HTTP/1.1, skopeo trusting the CA through --cert-dir,
# certificate reload without a restart, and client certificates (mutual TLS).
if [[ $E2E_TARGET == berth ]]; then
  step "g1. TLS: curl --cacert (HTTP/2 and HTTP/1.1), skopeo trusting a test CA, certificate reload"
  PKI="$WORK/pki"
  mkdir -p "$PKI/skopeo-certs" "$PKI/mtls-certs"
  # ca_and_leaf NAME SUBJECT [SAN]: NAME.key and NAME.crt signed by the test CA ($PKI/ca.*).
  leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$PKI/$1.key" \
      -out "$PKI/$1.csr" -subj "/CN=$2" 2>/dev/null
    printf '%s\n' "${3:-}" >"$PKI/$1.ext"
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 2 \
      -sha256 ${3:+-extfile "$PKI/$1.ext"} -out "$PKI/$1.crt" 2>/dev/null
  }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$PKI/ca.key" \
    -out "$PKI/ca.crt" -days 2 -subj "/CN=Berth e2e test CA" 2>/dev/null
  leaf server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1"
  cp "$PKI/server.crt" "$PKI/live.crt"
  cp "$PKI/server.key" "$PKI/live.key"
  cp "$PKI/ca.crt" "$PKI/skopeo-certs/ca.crt"
  SPORT=$(free_port) || die "no free port"
  S="localhost:$SPORT"
  EXTRA_BASE="https://$S" EXTRA_CURL="--cacert $PKI/ca.crt" \
    start_extra berth-tls "$SPORT" env REGISTRY_HTTP_ADDR="127.0.0.1:$SPORT" REGISTRY_STORAGE_PATH="$WORK/storage-tls" \
    REGISTRY_HTTP_TLS_CERTIFICATE="$PKI/live.crt" REGISTRY_HTTP_TLS_KEY="$PKI/live.key" \
    "$BERTH_BIN" serve --no-config-file
  v=$(curl -s -o /dev/null -w '%{http_code} %{http_version}' --http2 --cacert "$PKI/ca.crt" "https://$S/v2/")
  [[ $v == "200 2" ]] || die "curl --http2 https://$S/v2/: '$v', expected '200 2'"
  v=$(curl -s -o /dev/null -w '%{http_code} %{http_version}' --http1.1 --cacert "$PKI/ca.crt" "https://$S/v2/")
  [[ $v == "200 1.1" ]] || die "curl --http1.1 https://$S/v2/: '$v', expected '200 1.1'"
  ok "curl --cacert: HTTP/2 by ALPN and HTTP/1.1 both answer 200"
  if curl -s -o /dev/null "https://$S/v2/"; then die "curl trusted the test CA without --cacert"; fi
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$S/v2/" || true)
  [[ $code != 200 ]] || die "plain HTTP to the TLS port answered 200"
  ok "without the CA curl refuses the certificate; plain HTTP to the TLS port gets no registry answer"
  # skopeo_tls_round_trip NAME CERT_DIR REF: push the source layout to REF trusting CERT_DIR, read the
  # manifest back the same way, and compare.
  skopeo_tls_round_trip() {
    forget_skopeo_cache
    run "skopeo-$1" skopeo copy --dest-cert-dir "$2" "oci:$SRC_LAYOUT:v1" "docker://$3"
    run "skopeo-$1-inspect" skopeo inspect --raw --cert-dir "$2" "docker://$3"
    [[ "sha256:$(sha256_of "$LOGS/skopeo-$1-inspect.log")" == "$SRC_DIGEST" ]] || die "manifest read back from $3 differs"
  }
  skopeo_tls_round_trip tls "$PKI/skopeo-certs" "$S/e2e/tls:v1"
  ok "skopeo copy/inspect over TLS with --cert-dir (CA only): manifest $SRC_DIGEST"
  # Reload: a new certificate (new serial) is served without a restart.
  serial() { openssl s_client -connect "127.0.0.1:$SPORT" -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial; }
  old=$(serial)
  leaf server2 localhost "subjectAltName=DNS:localhost,IP:127.0.0.1"
  cp "$PKI/server2.key" "$PKI/live.key.new" && mv "$PKI/live.key.new" "$PKI/live.key"
  cp "$PKI/server2.crt" "$PKI/live.crt.new" && mv "$PKI/live.crt.new" "$PKI/live.crt"
  new=$(openssl x509 -noout -serial -in "$PKI/server2.crt")
  deadline=$((SECONDS + 20))
  until [[ $(serial) == "$new" ]]; do
    ((SECONDS < deadline)) || die "the new certificate ($new) was not served within 20 s (still $(serial))"
    sleep 0.5
  done
  v=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$PKI/ca.crt" "https://$S/v2/e2e/tls/manifests/v1" -H "Accept: application/vnd.oci.image.manifest.v1+json")
  [[ $v == 200 ]] || die "after the reload GET manifest answered $v"
  ok "certificate replaced on disk: served within seconds without a restart ($old -> $new)"
  step_passed

  step "g2. mutual TLS (http.tls.clientcas): no client certificate, no registry; skopeo with one pushes"
  leaf client e2e-client "extendedKeyUsage=clientAuth"
  cp "$PKI/ca.crt" "$PKI/mtls-certs/ca.crt"
  cp "$PKI/client.crt" "$PKI/mtls-certs/client.cert"
  cp "$PKI/client.key" "$PKI/mtls-certs/client.key"
  MPORT=$(free_port) || die "no free port"
  M="localhost:$MPORT"
  EXTRA_BASE="https://$M" EXTRA_CURL="--cacert $PKI/ca.crt --cert $PKI/client.crt --key $PKI/client.key" \
    start_extra berth-mtls "$MPORT" env REGISTRY_HTTP_ADDR="127.0.0.1:$MPORT" REGISTRY_STORAGE_PATH="$WORK/storage-mtls" \
    REGISTRY_HTTP_TLS_CERTIFICATE="$PKI/server.crt" REGISTRY_HTTP_TLS_KEY="$PKI/server.key" \
    REGISTRY_HTTP_TLS_CLIENTCAS="$PKI/ca.crt" "$BERTH_BIN" serve --no-config-file
  if curl -s -o /dev/null --cacert "$PKI/ca.crt" "https://$M/v2/"; then
    die "a client without a certificate got an answer from the mTLS registry"
  fi
  skopeo_tls_round_trip mtls "$PKI/mtls-certs" "$M/e2e/mtls:v1"
  ok "skopeo with a client certificate (--cert-dir with client.cert/client.key) pushes and reads back $SRC_DIGEST"
  # The same image, without the client certificate: the handshake fails, so nothing is read.
  if skopeo inspect --raw --cert-dir "$PKI/skopeo-certs" "docker://$M/e2e/mtls:v1" >"$LOGS/skopeo-mtls-nocert.log" 2>&1; then
    die "skopeo without a client certificate read e2e/mtls:v1 from the mTLS registry"
  fi
  grep -qiE 'certificate|tls|handshake' "$LOGS/skopeo-mtls-nocert.log" ||
    die "skopeo without a client certificate failed for another reason: $(tail -n 2 "$LOGS/skopeo-mtls-nocert.log")"
  ok "without a client certificate the handshake is refused (curl; skopeo: $(grep -oiE '[^:]*(certificate|handshake)[^"]*' "$LOGS/skopeo-mtls-nocert.log" | head -n 1))"
  step_passed
fi
