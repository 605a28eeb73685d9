#!/usr/bin/env bash
# Smoke test of the scale-out test services (scripts/lib/seaweedfs.sh, postgres.sh, haproxy.sh): starts
# each the way the scale-out tests will, and checks that it does what those tests rely on.
#
#   S3 (SeaweedFS)  signed put/get; a multipart upload of 3 parts (5 MiB, 5 MiB, 1 MiB) with ListParts and
#                   Complete; a ranged GET; a presigned GET with plain HTTP; SigV4 enforced (an unsigned
#                   request and one signed with a wrong secret get 403); killed (SIGKILL) -> connection
#                   refused -> restarted -> the objects are intact; the same with a graceful stop
#   PostgreSQL      the password logs in over TCP, a wrong one is refused; stopped -> refused ->
#                   restarted -> a table's rows are still there
#   haproxy         round robin over 3 small Python backends (consecutive requests, also on one
#                   keep-alive connection, go to different backends in turn); a chunked PATCH of 16 MiB
#                   sent in two halves 1 s apart reaches a backend streamed (its headers before the
#                   second half) and whole (byte count and SHA-256)
#
# Environment: SERVICES_KEEP=1 keeps the temporary directory (logs, data); SERVICES_TMPDIR its parent
# (default /tmp). Needs: haproxy, PostgreSQL, and the services venv (scripts/install-deps.sh), curl, psql.
# Run as root (PostgreSQL then runs as the system user berth-pg) or as any user.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T_START=$EPOCHREALTIME
STEP="setup"
STEP_T0=$EPOCHREALTIME
PASSED=()
WORK=""
BACKEND_PID=""

log() { printf '[services %s] %s\n' "$(date +%T)" "$*"; }
ok() { log "  ok: $*"; }
die() {
  log "FAIL: $*"
  exit 1
}
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
step() {
  STEP=$1
  STEP_T0=$EPOCHREALTIME
  log "=== $STEP"
}
step_passed() {
  local t
  t=$(secs_since "$STEP_T0")
  PASSED+=("$(printf '%-76s %6ss' "$STEP" "$t")")
  log "=== passed: $STEP (${t}s)"
  STEP=""
}

# shellcheck source=scripts/lib/seaweedfs.sh
source "$ROOT/scripts/lib/seaweedfs.sh"
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
# shellcheck source=scripts/lib/haproxy.sh
source "$ROOT/scripts/lib/haproxy.sh"

cleanup() {
  local rc=$?
  set +e
  [[ -n $STEP && $rc -ne 0 ]] && log "failed in step: $STEP"
  if [[ -n $WORK ]]; then
    haproxy_stop "$WORK/haproxy" >/dev/null 2>&1
    [[ -z $BACKEND_PID ]] || stop_pid "$BACKEND_PID" backends 5
    seaweedfs_teardown "$WORK/s3"
    postgres_teardown "$WORK/pg"
    if [[ ${SERVICES_KEEP:-} == 1 || $rc -ne 0 ]]; then
      log "kept $WORK (logs: s3/weed.log, pg/postgres/postgres.log, haproxy/haproxy.log)"
    else
      rm -rf -- "$WORK"
    fi
  fi
  if ((${#PASSED[@]})); then
    log "timings:"
    printf '  %s\n' "${PASSED[@]}"
  fi
  log "total $(secs_since "$T_START")s"
  if ((rc == 0)); then
    echo "services-smoke: ${#PASSED[@]} passed, 0 failed"
  else
    echo "services-smoke: ${#PASSED[@]} passed, 1 failed"
  fi
  exit "$rc"
}
trap cleanup EXIT

for c in curl psql haproxy; do
  command -v "$c" >/dev/null 2>&1 || die "required command '$c' not found (run scripts/install-deps.sh)"
done
WORK=$(mktemp -d "${SERVICES_TMPDIR:-/tmp}/services.XXXXXX")
mkdir -p "$WORK/s3" "$WORK/pg" "$WORK/haproxy"

# ---------------------------------------------------------------------------------------------------- S3

cat >"$WORK/s3check.py" <<'PY'
"""S3 checks against $S3_ENDPOINT with boto3 (SigV4, path-style). Usage: s3check.py write|verify|refused."""
import hashlib, os, sys, urllib.error, urllib.request
import boto3, botocore
from botocore.config import Config

env, MiB = os.environ, 1 << 20
bucket = env["S3_BUCKET"]
state = os.path.join(env["WORK"], "s3-objects.txt")

def client(secret=None, unsigned=False):
    cfg = Config(signature_version=botocore.UNSIGNED if unsigned else "s3v4",
                 s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2)
    return boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env["S3_REGION"],
                        aws_access_key_id=env["S3_ACCESS_KEY"],
                        aws_secret_access_key=secret or env["S3_SECRET_KEY"], config=cfg)

def fail(msg):
    sys.exit(f"FAIL: {msg}")

def status_of(fn):
    try:
        fn()
        return 200
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]

s3 = client()
mode = sys.argv[1]
if mode == "write":
    small = os.urandom(4096)
    s3.put_object(Bucket=bucket, Key="smoke/small", Body=small)
    if s3.get_object(Bucket=bucket, Key="smoke/small")["Body"].read() != small:
        fail("small object read back differs")
    print("ok: put/get of a 4 KiB object")

    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1 * MiB)]
    whole = b"".join(parts)
    up = s3.create_multipart_upload(Bucket=bucket, Key="smoke/multi")["UploadId"]
    # Parts sent out of order, by the part number the caller chose.
    etags = {}
    for n in (2, 1, 3):
        etags[n] = s3.upload_part(Bucket=bucket, Key="smoke/multi", UploadId=up, PartNumber=n,
                                  Body=parts[n - 1])["ETag"]
    listed = s3.list_parts(Bucket=bucket, Key="smoke/multi", UploadId=up)["Parts"]
    got = [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed]
    want = [(n, etags[n], len(parts[n - 1])) for n in (1, 2, 3)]
    if got != want:
        fail(f"ListParts gave {got}, expected {want}")
    s3.complete_multipart_upload(Bucket=bucket, Key="smoke/multi", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)]})
    body = s3.get_object(Bucket=bucket, Key="smoke/multi")["Body"].read()
    if hashlib.sha256(body).digest() != hashlib.sha256(whole).digest():
        fail(f"multipart object differs ({len(body)} bytes read, {len(whole)} written)")
    print(f"ok: multipart upload of 3 parts (5+5+1 MiB, sent 2,1,3), ListParts, complete, read back")

    lo, hi = 5 * MiB - 100, 5 * MiB + 99
    r = s3.get_object(Bucket=bucket, Key="smoke/multi", Range=f"bytes={lo}-{hi}")
    if r["ResponseMetadata"]["HTTPStatusCode"] != 206 or r["Body"].read() != whole[lo:hi + 1]:
        fail("ranged GET across the part boundary differs")
    print("ok: ranged GET across a part boundary (206)")

    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "smoke/multi"},
                                    ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=10) as resp:
        if hashlib.sha256(resp.read()).digest() != hashlib.sha256(whole).digest():
            fail("presigned GET returned other bytes")
    try:
        urllib.request.urlopen(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=10)
        fail("a presigned URL with a damaged signature was served")
    except urllib.error.HTTPError as e:
        if e.code != 403:
            fail(f"damaged presigned URL got {e.code}, expected 403")
    print("ok: presigned GET served over plain HTTP; a damaged signature gets 403")

    for name, c in (("unsigned", client(unsigned=True)), ("wrong-secret", client(secret="wrong-secret"))):
        for op, fn in (("GET", lambda: c.get_object(Bucket=bucket, Key="smoke/small")),
                       ("PUT", lambda: c.put_object(Bucket=bucket, Key="smoke/intruder", Body=b"x")),
                       ("LIST", lambda: c.list_objects_v2(Bucket=bucket))):
            st = status_of(fn)
            if st != 403:
                fail(f"{name} {op} got {st}, expected 403")
    if status_of(lambda: s3.head_object(Bucket=bucket, Key="smoke/intruder")) != 404:
        fail("the refused PUT stored an object")
    print("ok: SigV4 enforced: unsigned and wrong-secret GET, PUT and LIST all get 403")

    with open(state, "w") as f:
        for key, data in (("smoke/small", small), ("smoke/multi", whole)):
            f.write(f"{key} {len(data)} {hashlib.sha256(data).hexdigest()}\n")
elif mode == "verify":
    for line in open(state):
        key, size, digest = line.split()
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if len(body) != int(size) or hashlib.sha256(body).hexdigest() != digest:
            fail(f"{key} changed: {len(body)} bytes")
        print(f"ok: {key} intact ({size} bytes, sha256 {digest[:12]}…)")
elif mode == "refused":
    try:
        s3.list_objects_v2(Bucket=bucket)
        fail("S3 still answers")
    except botocore.exceptions.EndpointConnectionError:
        print("ok: S3 refuses connections")
PY

s3check() { WORK=$WORK seaweedfs_python "$WORK/s3check.py" "$@" | sed 's/^/  /'; }

step "S3: start SeaweedFS (SigV4 identities, bucket)"
seaweedfs_start "$WORK/s3" || die "SeaweedFS did not start"
ok "S3_ENDPOINT=$S3_ENDPOINT S3_BUCKET=$S3_BUCKET S3_REGION=$S3_REGION"
step_passed

step "S3: put/get, multipart (3 parts), ranged and presigned GET, SigV4 refusals"
s3check write || die "S3 checks failed"
step_passed

step "S3: kill (SIGKILL) -> refused -> restart -> objects intact"
seaweedfs_kill "$WORK/s3"
! seaweedfs_s3_up || die "S3 port still open after kill"
s3check refused || die "S3 still answers after kill"
seaweedfs_restart "$WORK/s3" || die "SeaweedFS did not restart"
s3check verify || die "objects changed across the restart"
step_passed

step "S3: graceful stop -> refused -> restart -> objects intact"
seaweedfs_stop "$WORK/s3"
! seaweedfs_s3_up || die "S3 port still open after stop"
s3check refused || die "S3 still answers after stop"
seaweedfs_restart "$WORK/s3" || die "SeaweedFS did not restart"
s3check verify || die "objects changed across the restart"
step_passed

# ---------------------------------------------------------------------------------------------------- PostgreSQL

step "PostgreSQL: start, password over TCP, wrong password refused"
postgres_start "$WORK/pg" || die "PostgreSQL did not start"
[[ $(postgres_psql -tAc 'select current_user') == "$PG_USER" ]] || die "psql with PGPASSWORD did not log in"
ok "psql -h $PG_HOST -p $PG_PORT -U $PG_USER -d $PG_DB with PGPASSWORD logs in"
out=$(PGPASSWORD=not-the-password PGCONNECT_TIMEOUT=5 psql -X -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" \
  -d "$PG_DB" -tAc 'select 1' 2>&1) && die "a wrong password was accepted"
[[ $out == *"password authentication failed"* ]] || die "wrong password: unexpected answer: $out"
ok "a wrong password is refused ($(grep -o 'password authentication failed[^"]*"[^"]*"' <<<"$out"))"
out=$(PGCONNECT_TIMEOUT=5 psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -tAc 'select 1' 2>&1) &&
  die "no password was accepted"
ok "no password is refused too"
step_passed

step "PostgreSQL: stop -> refused -> restart -> rows kept"
postgres_psql -c 'CREATE TABLE smoke (id int PRIMARY KEY, note text)' \
  -c "INSERT INTO smoke SELECT g, 'row ' || g FROM generate_series(1, 1000) g"
postgres_stop "$WORK/pg"
out=$(postgres_psql -tAc 'select 1' 2>&1) && die "PostgreSQL still answers after stop"
[[ $out == *"Connection refused"* || $out == *"refused"* ]] || die "after stop: unexpected answer: $out"
ok "connection refused while stopped"
postgres_restart "$WORK/pg" || die "PostgreSQL did not restart"
[[ $(postgres_psql -tAc 'select count(*), sum(id) from smoke') == "1000|500500" ]] || die "rows lost across the restart"
ok "1000 rows kept across the restart"
step_passed

# ---------------------------------------------------------------------------------------------------- haproxy

cat >"$WORK/backends.py" <<'PY'
"""Three small HTTP backends on the given ports: GET /v2/ answers the backend's name; PATCH reads a
chunked body and answers name, byte count, SHA-256, and the seconds between its headers and its end."""
import hashlib, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def reply(self, body):
        body = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(self.server.name + "\n")
    def do_PATCH(self):
        t0, h, n = time.monotonic(), hashlib.sha256(), 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.readline()
                h.update(data)
                n += len(data)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, 1 << 20))
                h.update(data)
                n += len(data)
                left -= len(data)
        self.reply(f"{self.server.name} {n} {h.hexdigest()} {time.monotonic() - t0:.2f}\n")

for i, port in enumerate(sys.argv[1:], 1):
    srv = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    srv.name = f"backend-{i}"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
threading.Event().wait()
PY

step "haproxy: round robin over 3 backends, chunked PATCH streamed"
ports=()
for _ in 1 2 3; do
  p=$(free_port)
  while [[ " ${ports[*]} " == *" $p "* ]]; do p=$(free_port); done
  ports+=("$p")
done
python3 "$WORK/backends.py" "${ports[@]}" >"$WORK/backends.log" 2>&1 &
BACKEND_PID=$!
for p in "${ports[@]}"; do
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
    sleep 0.1
  done
done
haproxy_start "$WORK/haproxy" "${ports[@]}" || die "haproxy did not start"
seq_sep=$(for _ in 1 2 3 4 5 6; do curl -sf --max-time 10 "$HAPROXY_URL/v2/"; done | tr '\n' ' ')
seq_ka=$(curl -sf --max-time 10 "$HAPROXY_URL/v2/" "$HAPROXY_URL/v2/" "$HAPROXY_URL/v2/" "$HAPROXY_URL/v2/" \
  "$HAPROXY_URL/v2/" "$HAPROXY_URL/v2/" | tr '\n' ' ')
for s in "$seq_sep" "$seq_ka"; do
  read -r -a got <<<"$s"
  ((${#got[@]} == 6)) || die "expected 6 answers, got: $s"
  # Round robin: the first three are three different backends, and the next three repeat them in order.
  [[ $(printf '%s\n' "${got[@]:0:3}" | sort -u | wc -l) == 3 && "${got[*]:0:3}" == "${got[*]:3:3}" ]] ||
    die "not round robin: $s"
done
ok "6 requests on new connections: $seq_sep"
ok "6 requests on one keep-alive connection: $seq_ka"
out=$(HAPROXY_URL=$HAPROXY_URL python3 - <<'PY'
import hashlib, http.client, os, time
from urllib.parse import urlparse
u = urlparse(os.environ["HAPROXY_URL"])
half = os.urandom(8 << 20)
def body():
    for i in range(8):
        yield half[i << 20:(i + 1) << 20]
    time.sleep(1.0)
    for i in range(8):
        yield half[i << 20:(i + 1) << 20]
c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
c.request("PATCH", "/v2/x/blobs/uploads/1", body=body(), encode_chunked=True)
r = c.getresponse()
print(r.status, r.read().decode().strip(), hashlib.sha256(half + half).hexdigest())
PY
) || die "chunked PATCH through haproxy failed"
read -r status name n digest secs want <<<"$out"
[[ $status == 200 && $n == $((16 << 20)) && $digest == "$want" ]] || die "chunked PATCH arrived wrong: $out"
awk -v s="$secs" 'BEGIN { exit !(s >= 0.8) }' || die "chunked PATCH was buffered: the backend saw headers only ${secs}s before its end"
ok "chunked PATCH of 16 MiB reached $name whole and streamed (headers ${secs}s before the end, the client paused 1 s)"
step_passed

STEP=""
log "all services checks passed"
