# shellcheck shell=bash
# Counted checks for the validation scripts (validate-k8s.sh, validate-compose.sh): `ok` and `bad`
# print one line each and count it, `note` prints an indented remark, `checks_summary NAME` prints
# the totals and returns non-zero when a check failed. Source it; it sets PASSED and FAILED to 0.

PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); printf '  ok    %s\n' "$*"; }
bad() { FAILED=$((FAILED + 1)); printf '  FAIL  %s\n' "$*"; }
note() { printf '        %s\n' "$*"; }
checks_summary() {
  echo "$1: $PASSED passed, $FAILED failed"
  ((FAILED == 0))
}
