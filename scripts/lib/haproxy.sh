# shellcheck shell=bash
# A private HAProxy for tests: Debian's haproxy in HTTP mode on a free loopback port, balancing round
# robin over the given backend ports with no stickiness, so consecutive requests (even on one keep-alive
# connection) land on different replicas. Source this file, then:
#
#   haproxy_start DIR PORT...   start it in front of 127.0.0.1:PORT...; exports HAPROXY_PORT and
#                               HAPROXY_URL (http://127.0.0.1:PORT); 0 when its port accepts connections
#   haproxy_stop DIR            stop it (SIGTERM, then SIGKILL)
#
# Settings: HAPROXY_CHECK=1 health-checks each backend with GET /v2/ (200 or 401 is healthy; a backend
# that fails 2 checks 500 ms apart leaves the rotation until it passes one); without it, every backend
# always takes its turn. Timeouts are long (10 min of silence on either side) so that big uploads and
# slow pulls go through; bodies are streamed, never buffered whole (no `option http-buffer-request`), so
# chunked PATCH bodies reach the backend as they arrive. Each request gets X-Forwarded-For; the
# response says which backend served it in X-Berth-Backend (b1, b2, … in the order given).
# Messages go through the caller's `log` function when it has one.

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

_hap_say() { if declare -F log >/dev/null; then log "$*"; else printf '%s\n' "$*" >&2; fi; }

haproxy_start() {
  local dir=$1
  shift
  (($#)) || {
    _hap_say "  haproxy_start: no backend ports"
    return 1
  }
  command -v haproxy >/dev/null 2>&1 || {
    _hap_say "  haproxy not found (Debian: apt-get install haproxy; scripts/install-deps.sh does)"
    return 1
  }
  mkdir -p "$dir"
  local port check="" i=0 p
  port=$(free_port) || return 1
  [[ ${HAPROXY_CHECK:-} == 1 ]] && check=" check inter 500ms fall 2 rise 1"
  {
    cat <<EOF
global
    maxconn 4096
    log stdout format short local0 notice

defaults
    mode http
    log global
    option dontlognull
    option forwardfor
    # Long timeouts: a 1 GiB PUT or a slow pull may go quiet for a while on either side.
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    timeout http-request 60s
    timeout http-keep-alive 60s
    timeout queue 60s
    # A request whose connection to a backend fails (a replica just killed, before the health
    # checks notice) is sent to another backend: nothing of it reached the dead one, so this is
    # safe for any method. Requests that reached a backend are never retried.
    retries 2
    option redispatch 1
    retry-on conn-failure

frontend berth
    bind 127.0.0.1:$port
    default_backend replicas

backend replicas
    balance roundrobin
    http-reuse safe
    http-response set-header X-Berth-Backend %s
EOF
    [[ -z $check ]] || printf '    option httpchk GET /v2/\n    http-check expect rstatus ^(200|401)$\n'
    for p in "$@"; do
      i=$((i + 1))
      printf '    server b%d 127.0.0.1:%s%s\n' "$i" "$p" "$check"
    done
  } >"$dir/haproxy.cfg"
  haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 || {
    _hap_say "  haproxy rejected $dir/haproxy.cfg:"
    sed 's/^/  | /' "$dir/haproxy.log" >&2
    return 1
  }
  # -db: stay in the foreground (no daemon), so that the pid is ours and the log goes to the file.
  haproxy -db -f "$dir/haproxy.cfg" >>"$dir/haproxy.log" 2>&1 &
  echo $! >"$dir/haproxy.ownpid"
  export HAPROXY_PORT=$port HAPROXY_URL="http://127.0.0.1:$port"
  local deadline=$((SECONDS + 10))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$(cat "$dir/haproxy.ownpid")" 2>/dev/null || ((SECONDS >= deadline)); then
      _hap_say "  haproxy did not listen on $port; its log:"
      tail -n 15 "$dir/haproxy.log" | sed 's/^/  | /' >&2
      haproxy_stop "$dir"
      return 1
    fi
    sleep 0.1
  done
  _hap_say "  haproxy $(haproxy -v | awk 'NR == 1 { print $3 }') pid $(cat "$dir/haproxy.ownpid") at $HAPROXY_URL, round robin over $*${check:+ (health-checked: GET /v2/)}"
}

haproxy_stop() {
  local dir=$1 pid
  pid=$(cat "$dir/haproxy.ownpid" 2>/dev/null || true)
  rm -f "$dir/haproxy.ownpid"
  [[ -n $pid ]] || return 0
  stop_pid "$pid" haproxy 10 || true
  _hap_say "  haproxy pid $pid stopped"
}
