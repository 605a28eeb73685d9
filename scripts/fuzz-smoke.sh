#!/usr/bin/env bash
# A short run of every cargo-fuzz target (fuzz/fuzz_targets) from its seed corpus (fuzz/corpus), for CI:
# FUZZ_SECONDS each (default 10), FUZZ_JOBS at a time (default: one a core). The seeds are copied to a
# scratch directory, so new inputs libFuzzer finds do not land in the repository. A crash fails the run
# and leaves the input in the scratch directory's artifacts; reproduce it with
# `cargo +nightly fuzz run <target> <file>`.
#
# Needs the nightly toolchain (rustup) and cargo-fuzz (installed from crates.io when missing).
# Long runs, as recorded in docs/testing.md: FUZZ_SECONDS=300 scripts/fuzz-smoke.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECONDS_EACH=${FUZZ_SECONDS:-10}
# --dev: an unoptimized build compiles in about half the time, which matters more than speed for a smoke run.
# -s none: no AddressSanitizer. The targets drive safe Rust (the engine's unsafe I/O layer is not among them),
# and ASan instruments only Rust code, not the C of the crypto libraries; without it the build took 156 s
# instead of 194 s here. Long runs keep the default sanitizer (docs/testing.md).
# shellcheck disable=SC2206 # the arguments are split on purpose
BUILD_ARGS=(${FUZZ_BUILD_ARGS:---dev -s none})
# Targets run this many at a time (one a core).
JOBS=${FUZZ_JOBS:-$(nproc)}

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz-smoke: the nightly toolchain is missing (rustup toolchain list); cargo-fuzz needs it" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

WORK=$(mktemp -d /tmp/berth-fuzz.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
targets=$(cargo +nightly fuzz list)
echo "fuzz-smoke: building $(echo "$targets" | wc -w) targets (${BUILD_ARGS[*]})"
cargo +nightly fuzz build "${BUILD_ARGS[@]}"
# run_one TARGET: fuzz it for SECONDS_EACH from a scratch copy of its seeds; the verdict goes to TARGET.status.
# An input that runs longer than twice that is a failure (libFuzzer's -timeout), not a hang of the run.
run_one() {
  local t=$1
  mkdir -p "$WORK/corpus/$t" "$WORK/artifacts/$t"
  cp -r "fuzz/corpus/$t/." "$WORK/corpus/$t/" 2>/dev/null || true
  if cargo +nightly fuzz run "${BUILD_ARGS[@]}" "$t" "$WORK/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -timeout="$((SECONDS_EACH * 2))" \
    -artifact_prefix="$WORK/artifacts/$t/" -print_final_stats=1 \
    >"$WORK/$t.log" 2>&1; then
    echo ok >"$WORK/$t.status"
  else
    echo failed >"$WORK/$t.status"
  fi
}
running=0
for t in $targets; do
  run_one "$t" &
  running=$((running + 1))
  if ((running >= JOBS)); then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
failed=0
for t in $targets; do
  if [[ $(cat "$WORK/$t.status" 2>/dev/null) == ok ]]; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$t.log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz-smoke: $t ok ($runs inputs in ${SECONDS_EACH}s)"
  else
    echo "fuzz-smoke: $t FAILED"
    tail -n 40 "$WORK/$t.log" | sed 's/^/  | /'
    ls "$WORK/artifacts/$t" | sed 's/^/  artifact: /'
    failed=1
  fi
done
if ((failed)); then
  trap - EXIT
  echo "fuzz-smoke: failures; inputs kept in $WORK/artifacts"
  exit 1
fi
