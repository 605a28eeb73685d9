#!/usr/bin/env bash
# End-to-end test of Berth as a pull-through cache, with real clients and a real upstream started
# here: a second Berth with token auth (its built-in token server; only the user `mirror` may pull,
# `pusher` may push), into which skopeo pushes the test images. The mirror serves two upstream
# entries of that registry: `hub` with the empty prefix (what Docker's registry-mirrors asks for,
# `library/app`) and `up` with the prefix `up` (podman's mirror entries, skopeo, and containerd's
# `ns=` requests).
#
#   a. skopeo pulls through the mirror: byte-identical, each blob fetched from the upstream once; and
#      through a mirror entry for Debian's docker-registry (distribution 2.8.2, no auth)
#   b. the Docker Engine with registry-mirrors pulls a library image (no network: only the mirror can serve it)
#   c. podman with a registries.conf mirror entry
#   d. containerd (ctr with a hosts directory mirror; the upstream itself would refuse it)
#   e. 50 concurrent cold pulls of a 100 MiB layer: every client gets the right bytes, the upstream's
#      access log shows one GET of it
#   f. eviction under a small budget while 3 skopeo loops pull 6 images: no pull fails, images were
#      evicted, and the mirror's blobs end within its budget
#   g. upstream stopped: cached images still pull by tag and by digest; a never-pulled one is a 503
#   h. upstream answers 429 with Retry-After: cached images still pull, and the upstream is left alone
#
# Environment:
#   BERTH_BIN            berth binary (default: target/release/berth, built when missing)
#   MIRROR_CMD_TIMEOUT   seconds one client command may take (default 300)
#   MIRROR_BIG_MIB       size of the big layer in MiB (default 100); MIRROR_PULLS concurrent pulls (default 50)
#   MIRROR_KEEP          1: keep the temporary directory
#   MIRROR_SKIP          steps to skip by letter, e.g. "b c" when dockerd or podman cannot run here
# Needs (scripts/install-deps.sh): skopeo umoci docker.io docker-registry podman containerd jq curl python3.
# Run as root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIRROR_CMD_TIMEOUT=${MIRROR_CMD_TIMEOUT:-300}
BIG_MIB=${MIRROR_BIG_MIB:-100}
PULLS=${MIRROR_PULLS:-50}
SKOPEO_CACHE=/var/lib/containers/cache/blob-info-cache-v1.boltdb
T_START=$EPOCHREALTIME
PIDS=()
WORK=""
TAG_TTL=2

STEPS_TAG=mirror CMD_TIMEOUT=$MIRROR_CMD_TIMEOUT CMD_TIMEOUT_VAR=MIRROR_CMD_TIMEOUT STEP_WIDTH=96
NEED_HINT="run scripts/install-deps.sh (Debian: skopeo umoci docker.io podman containerd jq curl)"
# shellcheck source=scripts/lib/steps.sh
source "$ROOT/scripts/lib/steps.sh"
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/dockerd.sh
source "$ROOT/scripts/lib/dockerd.sh"

skipped() { [[ " ${MIRROR_SKIP:-} " == *" $1 "* ]]; }

# start_berth NAME PORT ARGS...: `berth serve ARGS` (environment from the caller) with its log in
# $LOGS/NAME.log; waits until GET /v2/ answers 200 or 401. Sets LAST_PID.
start_berth() {
  local name=$1 port=$2
  shift 2
  REGISTRY_HTTP_ADDR="127.0.0.1:$port" "$BERTH_BIN" serve "$@" >>"$LOGS/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  local deadline=$((SECONDS + 30)) code
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/v2/" || true)
    [[ $code == 200 || $code == 401 ]] && break
    if ! kill -0 "$LAST_PID" 2>/dev/null || ((SECONDS >= deadline)); then
      tail -n 30 "$LOGS/$name.log" | sed 's/^/  | /'
      die "$name did not start on port $port"
    fi
    sleep 0.1
  done
  ok "$name answers on 127.0.0.1:$port (pid $LAST_PID)"
}

# upstream_blob_gets REPO: GETs of blobs of REPO the upstream answered 200 (its access log).
upstream_blob_gets() {
  grep -c "berth::access: request method=GET route=\"blob\" repo=\"$1\" .*status=200" "$LOGS/upstream.log" || true
}

# build_image LAYOUT TAG MIB...: an OCI layout with one random layer per MIB.
build_image() {
  local layout=$1 tag=$2 bundle="$WORK/bundle-$2" i=0
  shift 2
  [[ -d $layout ]] || run "umoci-init-$tag" umoci init --layout "$layout"
  run "umoci-new-$tag" umoci new --image "$layout:$tag"
  run "umoci-config-$tag" umoci config --image "$layout:$tag" --config.cmd /bin/mirror-test --author "berth mirror test"
  run "umoci-unpack-$tag" umoci unpack --image "$layout:$tag" "$bundle"
  for mib in "$@"; do
    i=$((i + 1))
    head -c "${mib}M" /dev/urandom >"$bundle/rootfs/layer$i.bin"
    run "umoci-repack-$tag-$i" umoci repack --refresh-bundle --image "$layout:$tag" "$bundle"
  done
  rm -rf "$bundle"
}

# layout_digest LAYOUT TAG
layout_digest() {
  jq -er --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$1/index.json"
}

# A stand-in upstream on the upstream's port that answers every request 429 with Retry-After,
# counting requests in $WORK/429.count.
start_429() {
  python3 - "$UPORT" "$WORK/429.count" >>"$LOGS/429.log" 2>&1 <<'PY' &
import http.server, sys
port, count = int(sys.argv[1]), sys.argv[2]
open(count, "w").write("0")
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(open(count).read()) + 1
        open(count, "w").write(str(n))
        body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down","detail":null}]}'
        self.send_response(429)
        self.send_header("Retry-After", "120")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_GET = do_HEAD = answer
    def log_message(self, *a):
        sys.stderr.write("%s\n" % (a,))
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
  PIDS+=("$!")
  local deadline=$((SECONDS + 10))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$UPORT/v2/" || true) == 429 ]]; do
    ((SECONDS < deadline)) || die "the 429 stand-in did not start"
    sleep 0.1
  done
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if ((rc != 0)); then
    log "MIRROR FAILED (exit $rc) in step: ${STEP:-?}"
    for f in mirror upstream; do
      [[ -f $LOGS/$f.log ]] || continue
      log "--- last 40 lines of $LOGS/$f.log:"
      tail -n 40 "$LOGS/$f.log" | sed 's/^/  | /'
    done
  fi
  local p
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  [[ -n $WORK && -d $WORK/docker ]] && dockerd_stop "$WORK/docker"
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ ${MIRROR_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  if ((${#PASSED[@]})); then
    log "passed:"
    printf '  PASS  %s\n' "${PASSED[@]}"
  fi
  if ((rc == 0)); then
    log "MIRROR PASSED in $(secs_since "$T_START")s"
    echo "mirror: ${#PASSED[@]} passed, 0 failed"
  else
    echo "mirror: ${#PASSED[@]} passed, 1 failed"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ==================================================================================================== setup

step "setup: an upstream Berth with token auth, the test images pushed into it, a mirror of it"
need curl jq skopeo umoci sha256sum python3
if [[ -z ${BERTH_BIN:-} ]]; then
  BERTH_BIN="$ROOT/target/release/berth"
  [[ -x $BERTH_BIN ]] || (cd "$ROOT" && cargo build --release -p berth-server)
fi
[[ -x $BERTH_BIN ]] || die "BERTH_BIN=$BERTH_BIN is not an executable file"
WORK=$(mktemp -d /tmp/berth-mirror.XXXXXX)
LOGS="$WORK/logs"
mkdir -p "$LOGS"
# Clients' credentials stay out of ~/.docker: none (the mirror needs none; only it logs in upstream).
export DOCKER_CONFIG="$WORK/docker-config"
mkdir -p "$DOCKER_CONFIG"
echo '{}' >"$DOCKER_CONFIG/config.json"
UPORT=$(free_port) || die "no free port"
MPORT=$(free_port) || die "no free port"
[[ $UPORT != "$MPORT" ]] || MPORT=$(free_port)
UP="127.0.0.1:$UPORT"
MIR="127.0.0.1:$MPORT"
PUSH_PW=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
MIRROR_PW=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
{ echo "$PUSH_PW" | "$BERTH_BIN" htpasswd pusher --cost 4; echo "$MIRROR_PW" | "$BERTH_BIN" htpasswd mirror --cost 4; } >"$WORK/htpasswd"
printf '%s\n' "$MIRROR_PW" >"$WORK/mirror-password"
cat >"$WORK/rules.json" <<'EOF'
{"defaultPolicy": "deny",
 "rules": [{"repository": "**", "users": ["pusher"], "permissions": ["pull", "push"]},
           {"repository": "**", "users": ["mirror"], "permissions": ["pull"]}]}
EOF
run keygen "$BERTH_BIN" keygen --alg es256 --key "$WORK/token.pem" --cert "$WORK/token.crt"
REGISTRY_STORAGE_PATH="$WORK/upstream" REGISTRY_AUTH_TYPE=token REGISTRY_AUTH_TOKEN_REALM="http://$UP/auth" \
  REGISTRY_AUTH_TOKEN_SERVICE=upstream REGISTRY_AUTH_TOKEN_ISSUER=upstream REGISTRY_AUTH_TOKEN_SERVER_ENABLED=true \
  REGISTRY_AUTH_TOKEN_SERVER_KEY="$WORK/token.pem" REGISTRY_AUTH_TOKEN_SERVER_CERTIFICATE="$WORK/token.crt" \
  REGISTRY_AUTH_HTPASSWD="$WORK/htpasswd" REGISTRY_ACCESS_CONTROL_CONFIG="$WORK/rules.json" \
  start_berth upstream "$UPORT" --no-config-file
UP_PID=$LAST_PID
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://$UP/v2/team/app/tags/list") == 401 ]] ||
  die "the upstream serves anonymous pulls; the test needs it to require the mirror's login"
build_image "$WORK/src" v1 1 2
build_image "$WORK/src" big "$BIG_MIB"
for i in 1 2 3 4 5 6; do build_image "$WORK/src" "e$i" 8; done
SRC_DIGEST=$(layout_digest "$WORK/src" v1)
BIG_DIGEST=$(layout_digest "$WORK/src" big)
BIG_LAYER=$(jq -r '.layers[0].digest' "$WORK/src/blobs/sha256/${BIG_DIGEST#sha256:}")
for pair in v1=team/app:v1 v1=library/app:v1 big=team/big:v1 e1=team/e1:v1 e2=team/e2:v1 e3=team/e3:v1 \
  e4=team/e4:v1 e5=team/e5:v1 e6=team/e6:v1; do
  src=${pair%%=*} ref=${pair#*=}
  run "push-${ref//[:\/]/-}" skopeo copy --dest-tls-verify=false --dest-creds "pusher:$PUSH_PW" \
    "oci:$WORK/src:$src" "docker://$UP/$ref"
done
# An upstream without auth: Debian's docker-registry (distribution 2.8.2), holding team/app:v1 too.
DPORT=$(free_port) || die "no free port"
cat >"$WORK/distribution.yml" <<EOF
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $WORK/distribution}}
http: {addr: 127.0.0.1:$DPORT}
EOF
docker-registry serve "$WORK/distribution.yml" >>"$LOGS/distribution.log" 2>&1 &
PIDS+=("$!")
deadline=$((SECONDS + 30))
until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DPORT/v2/" || true) == 200 ]]; do
  ((SECONDS < deadline)) || die "docker-registry did not start (see $LOGS/distribution.log)"
  sleep 0.2
done
run push-distribution skopeo copy --dest-tls-verify=false "oci:$WORK/src:v1" "docker://127.0.0.1:$DPORT/team/app:v1"
cat >"$WORK/mirror.yml" <<EOF
version: 0.1
storage: {filesystem: {rootdirectory: $WORK/mirror}}
mirrors:
  - {name: dist, url: 'http://127.0.0.1:$DPORT', prefix: dist, tagttl: ${TAG_TTL}s, timeout: 10s}
  - {name: hub, url: 'http://$UP', prefix: '', hosts: [docker.io], username: mirror,
     passwordfile: '$WORK/mirror-password', tagttl: ${TAG_TTL}s, timeout: 10s}
  - {name: up, url: 'http://$UP', prefix: up, username: mirror,
     passwordfile: '$WORK/mirror-password', tagttl: ${TAG_TTL}s, timeout: 10s}
EOF
start_berth mirror "$MPORT" "$WORK/mirror.yml"
grep -q 'mirroring an upstream registry' "$LOGS/mirror.log" || die "the mirror does not say what it mirrors"
! grep -q "$MIRROR_PW" "$LOGS/mirror.log" || die "the mirror logged the upstream password"
step_passed

# ==================================================================================================== a
step "a. skopeo pulls up/team/app:v1 through the mirror: byte-identical, each blob fetched once upstream; dist/team/app:v1 from docker-registry"
forget_skopeo_cache
run skopeo-pull skopeo copy --src-tls-verify=false "docker://$MIR/up/team/app:v1" "oci:$WORK/out-a:v1"
[[ $(layout_digest "$WORK/out-a" v1) == "$SRC_DIGEST" ]] || die "the pulled manifest is not the pushed one"
mapfile -t BLOBS < <(jq -r '.config.digest, .layers[].digest' "$WORK/src/blobs/sha256/${SRC_DIGEST#sha256:}")
for d in "${BLOBS[@]}"; do
  cmp -s "$WORK/src/blobs/sha256/${d#sha256:}" "$WORK/out-a/blobs/sha256/${d#sha256:}" || die "blob $d differs"
done
n=$(upstream_blob_gets team/app)
((n == ${#BLOBS[@]})) || die "the upstream served $n blob GETs for team/app, expected ${#BLOBS[@]} (one per blob)"
forget_skopeo_cache
run skopeo-pull-again skopeo copy --src-tls-verify=false "docker://$MIR/up/team/app:v1" "oci:$WORK/out-a2:v1"
n=$(upstream_blob_gets team/app)
((n == ${#BLOBS[@]})) || die "a second pull fetched from the upstream again ($n blob GETs)"
ok "manifest $SRC_DIGEST and ${#BLOBS[@]} blobs identical; $n upstream blob GETs for two pulls"
forget_skopeo_cache
run skopeo-pull-distribution skopeo copy --src-tls-verify=false "docker://$MIR/dist/team/app:v1" "oci:$WORK/out-dist:v1"
[[ $(layout_digest "$WORK/out-dist" v1) == "$SRC_DIGEST" ]] || die "the image pulled through the mirror of docker-registry is not the pushed one"
ok "also through the mirror of Debian's docker-registry (no auth): dist/team/app:v1 is $SRC_DIGEST"
step_passed

# ==================================================================================================== b
if skipped b; then
  log "=== b skipped (MIRROR_SKIP)"
else
  step "b. the Docker Engine with registry-mirrors pulls app:v1 (docker.io/library/app) through the mirror"
  dockerd_start "$WORK/docker" none "--registry-mirror=http://$MIR" || die "dockerd did not start"
  run docker-pull docker pull app:v1
  got=$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' app:v1)
  [[ $got == *"@$SRC_DIGEST"* ]] || die "docker's image has digests [$got], expected $SRC_DIGEST"
  grep -q 'route="manifest" repo="library/app"' "$LOGS/mirror.log" || die "the mirror did not serve library/app"
  ok "docker pulled app:v1 ($SRC_DIGEST) from the mirror"
  step_passed
fi

# ==================================================================================================== c
if skipped c; then
  log "=== c skipped (MIRROR_SKIP)"
else
  step "c. podman with a registries.conf mirror entry (docker.io -> $MIR/up) pulls docker.io/team/app:v1"
  need podman
  cat >"$WORK/registries.conf" <<EOF
unqualified-search-registries = []
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "$MIR/up"
insecure = true
EOF
  PODMAN=(podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" --storage-driver vfs
    --cgroup-manager cgroupfs --events-backend file)
  # (REGISTRY_AUTH_FILE only here: registries read REGISTRY_* variables as their settings.)
  CONTAINERS_REGISTRIES_CONF="$WORK/registries.conf" REGISTRY_AUTH_FILE="$DOCKER_CONFIG/config.json" \
    run podman-pull "${PODMAN[@]}" pull docker.io/team/app:v1
  got=$("${PODMAN[@]}" image inspect -f '{{.Digest}}' docker.io/team/app:v1)
  [[ $got == "$SRC_DIGEST" ]] || die "podman's image has digest $got, expected $SRC_DIGEST"
  ok "podman pulled docker.io/team/app:v1 ($SRC_DIGEST) from $MIR/up"
  step_passed
fi

# ==================================================================================================== d
if skipped d; then
  log "=== d skipped (MIRROR_SKIP)"
else
  step "d. containerd (ctr, hosts directory mirror) pulls $UP/library/app:v1 with ns=$UP through the mirror"
  need ctr
  sock=$(find "$WORK/docker/exec" /run/containerd -name containerd.sock -type s 2>/dev/null | head -n 1 || true)
  if [[ -z $sock ]]; then
    containerd --root "$WORK/containerd/root" --state "$WORK/containerd/state" \
      --address "$WORK/containerd/c.sock" >>"$LOGS/containerd.log" 2>&1 &
    PIDS+=("$!")
    sock="$WORK/containerd/c.sock"
    for _ in $(seq 1 100); do [[ -S $sock ]] && break; sleep 0.1; done
  fi
  [[ -S $sock ]] || die "no containerd socket"
  mkdir -p "$WORK/certs.d/$UP"
  cat >"$WORK/certs.d/$UP/hosts.toml" <<EOF
server = "http://$UP"
[host."http://$MIR"]
  capabilities = ["pull", "resolve"]
EOF
  # The mirror entry `up` serves the host $UP (its URL's), so ns=$UP maps library/app to up/library/app.
  run ctr-pull ctr --address "$sock" -n berth-mirror-test images pull --hosts-dir "$WORK/certs.d" "$UP/library/app:v1"
  got=$(ctr --address "$sock" -n berth-mirror-test images ls -q | grep -c "$UP/library/app:v1" || true)
  ((got == 1)) || die "ctr does not list $UP/library/app:v1"
  grep -q 'route="manifest" repo="up/library/app"' "$LOGS/mirror.log" || die "the mirror did not serve ns=$UP as up/library/app"
  ctr --address "$sock" -n berth-mirror-test images rm "$UP/library/app:v1" >/dev/null 2>&1 || true
  ok "ctr pulled through the mirror (the upstream would have asked it for credentials)"
  step_passed
fi

# ==================================================================================================== e
step "e. $PULLS concurrent cold pulls of a $BIG_MIB MiB layer: right bytes for all, one upstream GET"
want=${BIG_LAYER#sha256:}
t0=$EPOCHREALTIME
pulls=()
for i in $(seq 1 "$PULLS"); do
  (
    set -o pipefail
    curl -sf "http://$MIR/v2/up/team/big/blobs/$BIG_LAYER" | sha256sum | cut -d' ' -f1 >"$WORK/pull-$i.sum"
  ) &
  pulls+=("$!")
done
wait_fail=0
for p in "${pulls[@]}"; do
  wait "$p" || wait_fail=$((wait_fail + 1))
done
secs=$(secs_since "$t0")
((wait_fail == 0)) || die "$wait_fail pulls failed"
bad=0
for i in $(seq 1 "$PULLS"); do [[ $(cat "$WORK/pull-$i.sum") == "$want" ]] || bad=$((bad + 1)); done
((bad == 0)) || die "$bad of $PULLS pulls got wrong bytes"
n=$(upstream_blob_gets team/big)
((n == 1)) || die "the upstream served $n GETs of team/big's blobs for $PULLS concurrent pulls, expected 1"
ok "$PULLS × $BIG_MIB MiB right in ${secs}s ($(awk -v n="$PULLS" -v m="$BIG_MIB" -v s="$secs" 'BEGIN { printf "%.0f", n*m/s }') MiB/s to clients); the upstream served 1 GET"
step_passed

# ==================================================================================================== f
step "f. eviction under a 20 MiB budget while 3 skopeo loops pull 6 images of 8 MiB each: no pull fails"
EPORT=$(free_port) || die "no free port"
cat >"$WORK/evicting.yml" <<EOF
version: 0.1
storage: {filesystem: {rootdirectory: $WORK/evicting}}
mirrors:
  - {name: up, url: 'http://$UP', prefix: up, username: mirror, passwordfile: '$WORK/mirror-password', budget: 20MiB}
EOF
start_berth evicting "$EPORT" "$WORK/evicting.yml"
# pull_loop N: pull the six images twice, each loop in its own order, checking each digest.
pull_loop() {
  local l=$1 round i n want out="$WORK/evict-$1"
  for round in 1 2; do
    for i in 1 2 3 4 5 6; do
      n=$(((i + l * 2) % 6 + 1))
      want=$(layout_digest "$WORK/src" "e$n")
      rm -rf "$out"
      if ! skopeo copy --src-tls-verify=false "docker://127.0.0.1:$EPORT/up/team/e$n:v1" "oci:$out:x" >>"$LOGS/evict-loop-$l.log" 2>&1; then
        echo "loop $l round $round: pulling e$n failed" >>"$LOGS/evict-loop-$l.log"
        return 1
      fi
      if [[ $(layout_digest "$out" x) != "$want" ]]; then
        echo "loop $l round $round: e$n has the wrong digest" >>"$LOGS/evict-loop-$l.log"
        return 1
      fi
    done
  done
}
loops=()
for l in 1 2 3; do
  pull_loop "$l" &
  loops+=("$!")
done
failed=0
for p in "${loops[@]}"; do wait "$p" || failed=$((failed + 1)); done
if ((failed)); then
  tail -n 5 "$LOGS"/evict-loop-*.log | sed 's/^/  | /'
  die "$failed of 3 pull loops failed while images were evicted"
fi
evicted=$(curl -s "http://127.0.0.1:$EPORT/metrics" | awk '$1 == "berth_mirror_evicted_images_total{upstream=\"up\"}" { print $2 }')
((${evicted:-0} >= 1)) || die "nothing was evicted (berth_mirror_evicted_images_total: ${evicted:-absent})"
# The pass after the last fill brings the blobs within the budget (one image's worth of slack).
deadline=$((SECONDS + 20))
while :; do
  used=$(du -sb "$WORK/evicting/blobs" | cut -f1)
  ((used <= (20 + 9) * 1048576)) && break
  ((SECONDS < deadline)) || die "the evicting mirror holds $used bytes of blobs, over its 20 MiB budget"
  sleep 0.5
done
ok "36 pulls of 6 images (48 MiB) through a mirror with a 20 MiB budget, none failed; $evicted evictions; $((used / 1048576)) MiB of blobs on disk"
step_passed

# ==================================================================================================== g
step "g. upstream stopped: cached images pull by tag and digest; a never-pulled tag is a 503 naming the upstream"
stop_pid "$UP_PID" upstream 10 || true
sleep $((TAG_TTL + 1))
forget_skopeo_cache
run pull-tag-down skopeo copy --src-tls-verify=false "docker://$MIR/up/team/app:v1" "oci:$WORK/out-f:v1"
run pull-digest-down skopeo copy --src-tls-verify=false "docker://$MIR/up/team/app@$SRC_DIGEST" "oci:$WORK/out-f:d"
[[ $(layout_digest "$WORK/out-f" v1) == "$SRC_DIGEST" ]] || die "wrong manifest while the upstream is down"
code=$(curl -s -o "$WORK/never.json" -w '%{http_code}' "http://$MIR/v2/up/team/never/manifests/v1")
[[ $code == 503 ]] || die "a never-pulled tag with the upstream down answered $code, expected 503"
jq -e '.errors[0].message | contains("up")' "$WORK/never.json" >/dev/null || die "the 503 does not name the upstream: $(cat "$WORK/never.json")"
ok "pulled by tag and digest with the upstream down; never-pulled: 503 $(jq -c '.errors[0].code' "$WORK/never.json")"
step_passed

# ==================================================================================================== h
step "h. upstream answers 429 (Retry-After: 120): cached images still pull; the upstream is not asked again"
start_429
sleep $((TAG_TTL + 1))
forget_skopeo_cache
run pull-429 skopeo copy --src-tls-verify=false "docker://$MIR/up/team/app:v1" "oci:$WORK/out-g:v1"
sleep 0.5
first=$(cat "$WORK/429.count")
((first >= 1)) || die "the mirror never asked the upstream after the tag's TTL"
for i in 1 2 3; do
  sleep $((TAG_TTL + 1))
  forget_skopeo_cache
  run "pull-429-$i" skopeo copy --src-tls-verify=false "docker://$MIR/up/team/app:v1" "oci:$WORK/out-g:v1"
done
later=$(cat "$WORK/429.count")
((later == first)) || die "the mirror asked the rate-limited upstream again within Retry-After ($first then $later requests)"
ok "4 pulls served from the cache; the rate-limited upstream got $first request(s) and then none"
step_passed
