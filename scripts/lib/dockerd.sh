# shellcheck shell=bash
# A private Docker daemon for tests: its own data root, exec root and socket under a directory of the
# test, so it never touches (or needs) the machine's own daemon. Source this file, then:
#
#   dockerd_start DIR none|bridge [EXTRA_ARGS...]   start it; exports DOCKER_HOST; 0 when `docker info` answers
#   dockerd_stop DIR                                stop it (SIGTERM, then SIGKILL), its containerd and mounts
#
# Networking: "none" (--bridge=none) for tests that only build, push and pull; "bridge" for tests that
# run containers with published ports or compose networks. Neither touches the host's iptables
# (--iptables=false --ip-forward=false --ip-masq=false): published ports go through docker-proxy, and
# containers reach each other over the bridge. If overlay2 cannot be used, vfs always can.
# Messages go through the caller's `log` function when it has one.

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

_dk_say() { if declare -F log >/dev/null; then log "$*"; else printf '%s\n' "$*" >&2; fi; }

# _dk_try DIR ARGS...: one attempt.
_dk_try() {
  local dir=$1
  shift
  mkdir -p "$dir/data" "$dir/exec"
  printf '\n===== dockerd %s =====\n' "$*" >>"$dir/dockerd.log"
  local first_line
  first_line=$(wc -l <"$dir/dockerd.log")
  _dk_say "  starting dockerd $*"
  dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    -H "unix://$dir/docker.sock" "$@" >>"$dir/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  echo "$DOCKERD_PID" >"$dir/dockerd.ownpid"
  export DOCKER_HOST="unix://$dir/docker.sock"
  local deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    if timeout 10 docker info >/dev/null 2>&1; then
      _dk_say "  dockerd pid $DOCKERD_PID answers (storage driver: $(docker info -f '{{.Driver}}' 2>/dev/null))"
      return 0
    fi
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  _dk_say "  dockerd $* did not come up; last lines of its log:"
  tail -n +"$first_line" "$dir/dockerd.log" | tail -n 15 | sed 's/^/  | /' >&2
  dockerd_stop "$dir"
  return 1
}

dockerd_start() {
  local dir=$1 mode=$2
  shift 2
  local net=(--iptables=false --ip-forward=false --ip-masq=false)
  [[ $mode == none ]] && net+=(--bridge=none)
  if { (($#)) && _dk_try "$dir" "${net[@]}" "$@"; } ||
    _dk_try "$dir" "${net[@]}" ||
    _dk_try "$dir" "${net[@]}" --storage-driver=vfs; then
    return 0
  fi
  unset DOCKER_HOST
  return 1
}

dockerd_stop() {
  local dir=$1 pid cpid=""
  pid=$(cat "$dir/dockerd.ownpid" 2>/dev/null || true)
  rm -f "$dir/dockerd.ownpid"
  [[ -n $pid ]] || return 0
  [[ -f $dir/exec/containerd/containerd.pid ]] && cpid=$(cat "$dir/exec/containerd/containerd.pid" 2>/dev/null || true)
  stop_pid "$pid" dockerd 20 || true
  # The containerd that dockerd started for itself normally exits with it.
  if [[ -n $cpid ]] && kill -0 "$cpid" 2>/dev/null; then
    kill -TERM "$cpid" 2>/dev/null || true
    sleep 1
    kill -KILL "$cpid" 2>/dev/null || true
  fi
  # Anything dockerd left mounted under its private root.
  local m
  for m in $(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  _dk_say "  dockerd pid $pid stopped"
}
