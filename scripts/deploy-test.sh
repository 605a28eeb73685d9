#!/usr/bin/env bash
# The deployment files, tested with the Docker Engine (a private dockerd started here):
#
#   1. the Dockerfile: the static binary is built (if missing) and copied into an image FROM scratch;
#      the image runs as a non-root user with a named volume, turns healthy, and takes a docker push and
#      pull, also after a container restart;
#   2. deploy/compose.yaml with docker-compose: init container makes the signing key, the registry with
#      its built-in token server and htpasswd users turns healthy, docker login + push + pull go through
#      it, a push into another user's namespace is denied, a wrong password is refused.
#
# Environment:
#   BERTH_STATIC   static berth binary (default target/x86_64-unknown-linux-gnu/dist/berth, built when missing)
#   DEPLOY_KEEP    1: keep the work directory and leave nothing running is still guaranteed
#   DEPLOY_TMPDIR  parent of the work directory (default /tmp; keep it short, dockerd makes unix sockets)
#
# Needs root, docker.io (dockerd, docker, docker-proxy), docker-compose, curl, jq, readelf.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_TRIPLE=x86_64-unknown-linux-gnu
BERTH_STATIC=${BERTH_STATIC:-$ROOT/target/$TARGET_TRIPLE/dist/berth}
IMAGE=berth:deploy-test
PROJECT=berthdeploy

log() { printf '[deploy %s] %s\n' "$(date +%T)" "$*"; }
ok() { log "  ok: $*"; }
die() {
  log "FAIL: $*"
  exit 1
}

# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/dockerd.sh
source "$ROOT/scripts/lib/dockerd.sh"

WORK=$(mktemp -d "${DEPLOY_TMPDIR:-/tmp}/bdt.XXXXXX")
DDIR=$WORK/d
export DOCKER_CONFIG=$WORK/docker-config
mkdir -p "$DOCKER_CONFIG"
COMPOSE_DIR=$WORK/compose

cleanup() {
  local rc=$?
  set +e
  if [[ -n ${DOCKER_HOST:-} ]]; then
    if ((rc != 0)); then
      log "--- containers at failure:"
      docker ps -a 2>&1 | sed 's/^/  | /'
      for c in berth-deploy "${PROJECT}_registry_1" "${PROJECT}_keys_1"; do
        docker inspect "$c" >/dev/null 2>&1 || continue
        log "--- logs of $c:"
        docker logs --tail 40 "$c" 2>&1 | sed 's/^/  | /'
      done
    fi
    docker rm -f berth-deploy >/dev/null 2>&1
    docker volume rm berth-deploy-data >/dev/null 2>&1
    if [[ -f $COMPOSE_DIR/compose.yaml ]]; then
      (cd "$COMPOSE_DIR" && timeout 120 docker-compose -p "$PROJECT" down -v >/dev/null 2>&1)
    fi
  fi
  if ((rc != 0)) && [[ -f $DDIR/dockerd.log ]]; then
    log "--- last 20 lines of the dockerd log:"
    tail -n 20 "$DDIR/dockerd.log" | sed 's/^/  | /'
  fi
  dockerd_stop "$DDIR"
  if [[ ${DEPLOY_KEEP:-0} == 1 ]]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  if ((rc == 0)); then log "PASS"; else log "FAILED (exit $rc)"; fi
}
trap cleanup EXIT


# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
  local what=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "not within ${limit}s: $what"
    sleep 0.5
  done
  ok "$what"
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
is_200() { [[ $(http_code "$1") == 200 ]]; }
is_healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null) == healthy ]]; }
image_id() { docker image inspect -f '{{.Id}}' "$1"; }

# round_trip REF: push REF, remove it locally, pull it back, same image ID.
round_trip() {
  local ref=$1 id
  id=$(image_id "$ref")
  timeout 300 docker push "$ref" >"$WORK/push.log" 2>&1 || die "docker push $ref failed: $(tail -n 5 "$WORK/push.log")"
  docker rmi "$ref" >/dev/null
  timeout 300 docker pull "$ref" >"$WORK/pull.log" 2>&1 || die "docker pull $ref failed: $(tail -n 5 "$WORK/pull.log")"
  [[ $(image_id "$ref") == "$id" ]] || die "$ref: pulled image ID $(image_id "$ref") differs from pushed $id"
  ok "docker push + rmi + pull $ref: same image ID ${id:7:12}"
}

# ------------------------------------------------------------------------------------------ the static binary
if [[ ! -x $BERTH_STATIC ]]; then
  log "building the static binary ($BERTH_STATIC)"
  (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile dist --target "$TARGET_TRIPLE" -p berth-server --bin berth)
fi
if readelf -l "$BERTH_STATIC" | grep -q 'program interpreter'; then
  die "$BERTH_STATIC is dynamically linked; build it with RUSTFLAGS=\"-C target-feature=+crt-static\" --target $TARGET_TRIPLE"
fi
ok "$BERTH_STATIC is static ($(($(stat -c %s "$BERTH_STATIC") / 1048576)) MiB)"
if ! [[ $BERTH_STATIC -ef "$ROOT/target/$TARGET_TRIPLE/dist/berth" ]]; then
  # The Dockerfile copies it from that path of the build context.
  mkdir -p "$ROOT/target/$TARGET_TRIPLE/dist"
  cp "$BERTH_STATIC" "$ROOT/target/$TARGET_TRIPLE/dist/berth"
fi

# ------------------------------------------------------------------------------------------ docker
dockerd_start "$DDIR" bridge || die "no Docker daemon with bridge networking could be started (see $DDIR/dockerd.log)"

log "building the image from the Dockerfile"
timeout 300 docker build -q -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1 || die "docker build failed: $(cat "$WORK/build.log")"
user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
[[ $user == 65532:65532 ]] || die "image user is '$user', expected 65532:65532"
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
((size < 32 * 1048576)) || die "image is $((size / 1048576)) MiB; expected the binary and a config file only"
ok "image $IMAGE: user $user, $((size / 1048576)) MiB, $(docker history -q "$IMAGE" | wc -l) layers"

# Something to push: a 4 MiB random layer.
mkdir -p "$WORK/rootfs"
head -c $((4 * 1048576)) /dev/urandom >"$WORK/rootfs/payload.bin"
echo "deploy test $(date +%s%N)" >"$WORK/rootfs/hello.txt"
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
docker import "$WORK/rootfs.tar" deploy/source:1 >/dev/null
ok "test image deploy/source:1 ($(image_id deploy/source:1 | cut -c8-19))"

# ------------------------------------------------------------------------------------------ 1. the image
log "1. running the image"
PORT=$(free_port)
docker volume create berth-deploy-data >/dev/null
docker run -d --name berth-deploy -p "127.0.0.1:$PORT:5000" -v berth-deploy-data:/var/lib/registry "$IMAGE" >/dev/null
wait_for "GET http://127.0.0.1:$PORT/v2/ -> 200" 30 is_200 "http://127.0.0.1:$PORT/v2/"
pid=$(docker inspect -f '{{.State.Pid}}' berth-deploy)
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
[[ $uid == 65532 ]] || die "the registry process runs as uid $uid, expected 65532"
ok "the registry process (host pid $pid) runs as uid $uid"
wait_for "the image's HEALTHCHECK (berth healthcheck --path /readyz) reports healthy" 60 is_healthy berth-deploy
REF=127.0.0.1:$PORT/deploy/app:1
docker tag deploy/source:1 "$REF"
round_trip "$REF"
docker restart berth-deploy >/dev/null
wait_for "GET /v2/ -> 200 after docker restart" 30 is_200 "http://127.0.0.1:$PORT/v2/"
docker rmi "$REF" >/dev/null
timeout 300 docker pull "$REF" >"$WORK/pull.log" 2>&1 || die "pull after restart failed: $(tail -n 5 "$WORK/pull.log")"
[[ $(image_id "$REF") == $(image_id deploy/source:1) ]] || die "image pulled after restart differs"
ok "after a container restart the image is still there (named volume)"
docker rm -f berth-deploy >/dev/null
docker volume rm berth-deploy-data >/dev/null

# ------------------------------------------------------------------------------------------ 2. compose
log "2. deploy/compose.yaml with $(docker-compose version --short 2>/dev/null || echo docker-compose)"
mkdir -p "$COMPOSE_DIR"
cp "$ROOT/deploy/compose.yaml" "$ROOT/deploy/config.yml" "$ROOT/deploy/access.json" "$COMPOSE_DIR/"
# As the walk-through in docs/deploy.md does it: users made with the image itself.
docker run --rm -i "$IMAGE" htpasswd alice --cost 5 <<<"alice-secret" >"$COMPOSE_DIR/htpasswd"
docker run --rm -i "$IMAGE" htpasswd bob --cost 5 <<<"bob-secret" >>"$COMPOSE_DIR/htpasswd"
CPORT=$(free_port)
export BERTH_IMAGE=$IMAGE BERTH_PORT=$CPORT
(cd "$COMPOSE_DIR" && timeout 300 docker-compose -p "$PROJECT" up -d) >"$WORK/compose.log" 2>&1 ||
  die "docker-compose up failed: $(tail -n 20 "$WORK/compose.log")"
ok "docker-compose up -d"
[[ $(docker inspect -f '{{.State.ExitCode}}' "${PROJECT}_keys_1") == 0 ]] || die "the keys init container failed"
wait_for "the compose registry reports healthy" 90 is_healthy "${PROJECT}_registry_1"
code=$(http_code "http://localhost:$CPORT/v2/")
[[ $code == 401 ]] || die "GET /v2/ without a token answered $code, expected 401"
challenge=$(curl -s -D - -o /dev/null "http://localhost:$CPORT/v2/" | tr -d '\r' | awk -F': ' 'tolower($1) == "www-authenticate" { print $2 }')
[[ $challenge == "Bearer realm=\"http://localhost:$CPORT/auth\",service=\"berth-registry\"" ]] ||
  die "unexpected challenge: $challenge"
ok "401 with challenge: $challenge"
if docker login "localhost:$CPORT" -u alice --password-stdin <<<"wrong-password" >"$WORK/login.log" 2>&1; then
  die "docker login with a wrong password succeeded"
fi
ok "docker login with a wrong password is refused: $(grep -o 'unauthorized.*' "$WORK/login.log" | head -n 1)"
docker login "localhost:$CPORT" -u alice --password-stdin <<<"alice-secret" >"$WORK/login.log" 2>&1 ||
  die "docker login failed: $(cat "$WORK/login.log")"
ok "docker login localhost:$CPORT as alice"
REF=localhost:$CPORT/alice/app:1
docker tag deploy/source:1 "$REF"
round_trip "$REF"
OTHER=localhost:$CPORT/bob/app:1
docker tag deploy/source:1 "$OTHER"
if timeout 120 docker push "$OTHER" >"$WORK/push-denied.log" 2>&1; then
  die "alice could push into bob's namespace"
fi
grep -q 'denied' "$WORK/push-denied.log" || die "push into bob/ failed without 'denied': $(tail -n 3 "$WORK/push-denied.log")"
ok "push into bob/ as alice: $(grep -o 'denied.*' "$WORK/push-denied.log" | head -n 1)"
# Restart the stack: the key volume keeps the signing key, the data volume keeps the image.
(cd "$COMPOSE_DIR" && timeout 120 docker-compose -p "$PROJECT" restart registry) >>"$WORK/compose.log" 2>&1
wait_for "the compose registry is healthy again after a restart" 90 is_healthy "${PROJECT}_registry_1"
docker rmi "$REF" >/dev/null
timeout 300 docker pull "$REF" >"$WORK/pull.log" 2>&1 || die "pull after compose restart failed: $(tail -n 5 "$WORK/pull.log")"
ok "after docker-compose restart, alice pulls her image again"
(cd "$COMPOSE_DIR" && timeout 120 docker-compose -p "$PROJECT" down -v) >>"$WORK/compose.log" 2>&1
ok "docker-compose down -v"
