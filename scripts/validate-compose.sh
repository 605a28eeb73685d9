#!/usr/bin/env bash
# Validate the scale-out compose setup in deploy/scaleout without starting it (its images --
# minio/minio, minio/mc, postgres:17, haproxy:lts -- cannot be pulled here: no network):
#
#   1. compose.yaml passes docker-compose's schema (`docker-compose config -q`) with stand-in
#      credentials, and is refused without them (no default password), with a misspelled option
#      and with an unknown depends_on condition;
#   2. the services hold together: minio + a one-shot `mc mb` of the bucket config.yml names,
#      postgres:17 with a health check and the role and database config.yml names, 3 registry
#      replicas (deploy.replicas) that wait for both, get the credentials as REGISTRY_* variables
#      equal to the ones MinIO and PostgreSQL are given, and report health with /readyz, haproxy
#      publishing a port and balancing over the replicas' port; the replicas' PostgreSQL
#      connections fit under max_connections;
#   3. haproxy.cfg passes `haproxy -c` (Debian's haproxy) with no warning, balances round robin
#      without stickiness and checks GET /v2/; a misspelled keyword is refused. The backends are
#      found through Docker's DNS by the service name `registry`, which does not resolve here:
#      the file's `init-addr none` lets haproxy (and so `haproxy -c`) start before it resolves,
#      and a copy without it is shown to fail here, so the check does read the server lines;
#   4. config.yml is accepted by `berth check-config` with exactly the environment compose.yaml
#      gives the replicas (from `docker-compose config`), without a warning, and refused without
#      those variables (the file holds no credential), with `chunksize: 10MB` and without the
#      database. Needs a berth binary: $BERTH_BIN, else target/debug/berth; skipped with a
#      message when there is none.
#
# Usage: scripts/validate-compose.sh      (from any directory; exit status 0 = all passed)
# Needs docker-compose (1.29, Debian's), haproxy and python3 with PyYAML (docker-compose's own
# dependency); no Docker daemon.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$ROOT/deploy/scaleout
if [[ -n ${BERTH_BIN:-} ]]; then
    BERTH=$BERTH_BIN
    [[ $BERTH == */* ]] || BERTH=$(command -v -- "$BERTH" || echo "$BERTH")
else
    BERTH=$ROOT/target/debug/berth
fi

START=$SECONDS
# ok, bad, note, checks_summary
# shellcheck source=scripts/lib/checks.sh
source "$ROOT/scripts/lib/checks.sh"
finish() {
    echo "== done in $((SECONDS - START))s"
    if checks_summary validate-compose; then exit 0; else exit 1; fi
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/validate-compose.XXXXXX")
trap 'rm -rf -- "$TMP"' EXIT

for tool in docker-compose haproxy python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        bad "$tool not found (scripts/install-deps.sh installs docker-compose and haproxy)"
    fi
done
if ! python3 -c 'import yaml' 2>/dev/null; then
    bad "python3 has no PyYAML (Debian: python3-yaml, which docker-compose depends on)"
fi
for f in compose.yaml config.yml haproxy.cfg; do
    [[ -f $DIR/$f ]] || bad "$DIR/$f is missing"
done
((FAILED == 0)) || finish

# Stand-ins for the three required variables (what an operator exports or writes to .env).
STANDIN_ENV=(BERTH_S3_ACCESSKEY=stand-in-access BERTH_S3_SECRETKEY=stand-in-secret-key
    BERTH_DB_PASSWORD=stand-in-db-password)
# docker-compose with only the stand-ins (and none of the caller's BERTH_*/COMPOSE_* variables).
compose() { # DIR ARGS...: docker-compose -f DIR/compose.yaml ARGS, with the stand-ins
    local d=$1
    shift
    env -u BERTH_PORT -u BERTH_IMAGE -u COMPOSE_FILE -u COMPOSE_PROJECT_NAME "${STANDIN_ENV[@]}" \
        docker-compose --project-directory "$d" -f "$d/compose.yaml" "$@"
}
# A copy of the directory with one sed expression applied to one file, in $CASE; fails (counted)
# when the expression changes nothing, so a case cannot silently test the unchanged file.
CASE=
broken_copy() { # NAME FILE SED
    CASE=$TMP/$1
    mkdir -p "$CASE"
    cp "$DIR/compose.yaml" "$DIR/config.yml" "$DIR/haproxy.cfg" "$CASE/"
    sed -i -e "$3" "$CASE/$2"
    if cmp -s "$DIR/$2" "$CASE/$2"; then
        bad "case $1: '$3' changes nothing in $2: cannot build it"
        return 1
    fi
}
expect_refused() { # NAME PATTERN CMD...: CMD must fail with output matching PATTERN
    local name=$1 pattern=$2 out rc=0
    shift 2
    out=$("$@" 2>&1) || rc=$?
    if ((rc == 0)); then
        bad "$name was accepted"
    elif grep -q -- "$pattern" <<<"$out"; then
        ok "$name refused: $(grep -m1 -- "$pattern" <<<"$out" | cut -c1-160)"
    else
        bad "$name refused, but not for the expected reason ($pattern): $(tail -n 3 <<<"$out")"
    fi
}

# --- 1. compose schema -----------------------------------------------------------------------
echo "== 1. $DIR/compose.yaml, $(docker-compose version --short 2>/dev/null || echo docker-compose) schema"
if out=$(compose "$DIR" config -q 2>&1); then
    ok "docker-compose config -q accepts compose.yaml (with stand-ins for BERTH_S3_ACCESSKEY, BERTH_S3_SECRETKEY, BERTH_DB_PASSWORD)${out:+; it said: $out}"
else
    bad "docker-compose config -q refused compose.yaml:"
    while IFS= read -r line; do note "  $line"; done <<<"$out"
fi
if ! compose "$DIR" config >"$TMP/resolved.yaml" 2>"$TMP/resolved.err"; then
    bad "docker-compose config failed: $(tail -n 3 "$TMP/resolved.err")"
    finish
fi
# (on a copy: a .env file an operator left beside compose.yaml would supply the variables)
mkdir -p "$TMP/no-env"
cp "$DIR/compose.yaml" "$DIR/config.yml" "$DIR/haproxy.cfg" "$TMP/no-env/"
expect_refused "compose.yaml without the credential variables" "Missing mandatory value" \
    env -u BERTH_S3_ACCESSKEY -u BERTH_S3_SECRETKEY -u BERTH_DB_PASSWORD \
    docker-compose --project-directory "$TMP/no-env" -f "$TMP/no-env/compose.yaml" config -q
if broken_copy typo-option compose.yaml 's/^    depends_on:/    depends_onn:/'; then
    expect_refused "compose.yaml with depends_onn (misspelled)" "Unsupported config option" compose "$CASE" config -q
fi
if broken_copy typo-condition compose.yaml 's/condition: service_healthy/condition: service_ready/'; then
    expect_refused "compose.yaml with condition: service_ready (no such condition)" "service_ready" compose "$CASE" config -q
fi
if broken_copy typo-replicas compose.yaml 's/replicas: 3/replicas: three/'; then
    expect_refused "compose.yaml with replicas: three" "not a valid integer" compose "$CASE" config -q
fi

# --- the helper that reads the files ---------------------------------------------------------
cat >"$TMP/compose.py" <<'PYTHON'
"""Checks on deploy/scaleout that need the files parsed: `services RESOLVED CONFIG HAPROXY`
prints ok/FAIL lines; `berth RESOLVED` prints the registry's config file and environment
(NAME=VALUE lines after the path) for berth check-config."""
import re, sys
from urllib.parse import urlparse

import yaml

failures = 0


def ok(msg):
    print("ok " + msg)


def bad(msg):
    global failures
    failures += 1
    print("FAIL " + msg)


def get(tree, dotted):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def env_of(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) if "=" in x else (x, "") for x in e)
    return {k: "" if v is None else str(v) for k, v in e.items()}


def conditions(svc):
    d = svc.get("depends_on") or {}
    if isinstance(d, list):
        return {n: "service_started" for n in d}
    return {n: (c or {}).get("condition", "service_started") for n, c in d.items()}


def registries(services):
    """The registry services: one with deploy.replicas, or registry1..N."""
    out = {n: s for n, s in services.items() if re.fullmatch(r"registry\d*", n)}
    return out


def config_mount(svc):
    """(host path, container path) of the configuration the registry reads."""
    cmd = svc.get("command") or []
    if isinstance(cmd, str):
        cmd = cmd.split()
    conf = None
    for i, a in enumerate(cmd):
        if a == "--config" and i + 1 < len(cmd):
            conf = cmd[i + 1]
        elif a.startswith("--config="):
            conf = a.split("=", 1)[1]
    if conf is None:
        conf = "/etc/distribution/config.yml"  # where the image looks
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            src, dst = parts[0], parts[1] if len(parts) > 1 else parts[0]
        else:
            src, dst = v.get("source"), v.get("target")
        if dst == conf:
            return src, conf
    return None, conf


def cmd_services(resolved, config_path, haproxy_path):
    services = (yaml.safe_load(open(resolved)) or {}).get("services") or {}
    cfg = yaml.safe_load(open(config_path)) or {}
    hap = open(haproxy_path).read()

    # minio and the bucket
    minio = services.get("minio")
    mb = services.get("createbucket")
    bucket = get(cfg, "storage.s3.bucket")
    if not minio or not str(minio.get("image", "")).startswith("minio/minio"):
        bad("no service minio with image minio/minio")
        minio = {}
    endpoint = urlparse(str(get(cfg, "storage.s3.regionendpoint") or ""))
    if endpoint.hostname != "minio" or (endpoint.port or 80) != 9000:
        bad(f"storage.s3.regionendpoint {endpoint.geturl()!r} is not the minio service (http://minio:9000)")
    elif get(cfg, "storage.s3.forcepathstyle") is not True:
        bad("storage.s3.forcepathstyle is not true (MinIO needs path-style URLs)")
    else:
        ok(f"config.yml's storage.s3.regionendpoint {endpoint.geturl()} is the minio service (path-style)")
    if not mb or not str(mb.get("image", "")).startswith("minio/mc"):
        bad("no one-shot service createbucket with image minio/mc")
    else:
        script = " ".join(mb.get("command") if isinstance(mb.get("command"), list) else [str(mb.get("command"))])
        made = re.findall(r"mc mb(?: --ignore-existing| -p)* \S+?/([a-z0-9.-]+)", script)
        if made != [bucket]:
            bad(f"createbucket makes {made}, config.yml's storage.s3.bucket is {bucket!r}")
        elif (mb.get("restart") or "no") != "no":
            bad(f"createbucket has restart: {mb.get('restart')}: a one-shot service must not restart")
        elif conditions(mb).get("minio") is None:
            bad("createbucket does not depend on minio")
        else:
            ok(f"createbucket (minio/mc) makes the bucket {bucket!r} once MinIO answers, then exits")
        if env_of(mb).get("MINIO_ROOT_USER") != env_of(minio).get("MINIO_ROOT_USER") or \
                env_of(mb).get("MINIO_ROOT_PASSWORD") != env_of(minio).get("MINIO_ROOT_PASSWORD"):
            bad("createbucket logs in with other credentials than MinIO's root user")

    # postgres
    pg = services.get("postgres")
    if not pg or pg.get("image") != "postgres:17":
        bad("no service postgres with image postgres:17")
        pg = {}
    penv = env_of(pg)
    for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        if not penv.get(k):
            bad(f"postgres has no {k}")
    test = (pg.get("healthcheck") or {}).get("test") or []
    if "pg_isready" not in " ".join(test if isinstance(test, list) else [test]):
        bad("postgres has no pg_isready health check")
    if get(cfg, "database.enabled") is not True:
        bad("config.yml: database.enabled is not true")
    elif get(cfg, "database.host") != "postgres":
        bad(f"config.yml: database.host is {get(cfg, 'database.host')!r}, not the postgres service")
    elif get(cfg, "database.user") != penv.get("POSTGRES_USER") or get(cfg, "database.dbname") != penv.get("POSTGRES_DB"):
        bad(f"config.yml: database.user/dbname {get(cfg, 'database.user')}/{get(cfg, 'database.dbname')} are not postgres's POSTGRES_USER/POSTGRES_DB {penv.get('POSTGRES_USER')}/{penv.get('POSTGRES_DB')}")
    elif pg:
        ok(f"config.yml's database is the postgres service (role {penv['POSTGRES_USER']}, database {penv['POSTGRES_DB']}), which has a pg_isready health check")

    # the replicas
    regs = registries(services)
    if len(regs) == 1:
        name, reg = next(iter(regs.items()))
        replicas = int(get(reg, "deploy.replicas") or reg.get("scale") or 1)
    else:
        name, reg = (sorted(regs)[0], regs[sorted(regs)[0]]) if regs else (None, {})
        replicas = len(regs)
        if len({yaml.safe_dump({k: v for k, v in s.items() if k != "container_name"}) for s in regs.values()}) > 1:
            bad(f"the registry services {sorted(regs)} are not configured alike")
    if replicas < 3:
        bad(f"{replicas} registry replica(s), not 3")
    else:
        ok(f"{replicas} registry replicas ({'deploy.replicas of ' + name if len(regs) == 1 else ', '.join(sorted(regs))})")
    for n, s in regs.items():
        conds = conditions(s)
        if conds.get("postgres") != "service_healthy":
            bad(f"{n} does not wait for postgres to be healthy (depends_on: {conds})")
        elif conds.get("createbucket") != "service_completed_successfully":
            bad(f"{n} does not wait for createbucket to complete (depends_on: {conds})")
        elif n == name:
            ok(f"{n} waits for postgres (service_healthy) and createbucket (service_completed_successfully)")
        renv = env_of(s)
        pairs = [("REGISTRY_STORAGE_S3_ACCESSKEY", env_of(minio).get("MINIO_ROOT_USER")),
                 ("REGISTRY_STORAGE_S3_SECRETKEY", env_of(minio).get("MINIO_ROOT_PASSWORD")),
                 ("REGISTRY_DATABASE_PASSWORD", penv.get("POSTGRES_PASSWORD"))]
        wrong = [k for k, want in pairs if not renv.get(k) or renv.get(k) != want]
        if wrong:
            bad(f"{n}: {', '.join(wrong)} missing or not the value given to minio/postgres")
        elif n == name:
            ok(f"{n} gets the S3 keys and the database password as REGISTRY_* variables, the same values MinIO and PostgreSQL get")
        test = (s.get("healthcheck") or {}).get("test") or []
        if "/readyz" not in " ".join(test if isinstance(test, list) else [test]):
            bad(f"{n} has no health check on /readyz")
        src, conf = config_mount(s)
        if src is None:
            bad(f"{n}: the configuration {conf} is not mounted from the host")
        elif n == name:
            ok(f"{n} runs {' '.join(s.get('command') or [])} with config.yml mounted at {conf}, health check {' '.join(test[1:])}")
        if s.get("ports"):
            bad(f"{n} publishes ports {s.get('ports')}: only haproxy should")
    for k in ("accesskey", "secretkey"):
        if get(cfg, f"storage.s3.{k}"):
            bad(f"config.yml sets storage.s3.{k}: credentials belong in the environment")
    if get(cfg, "database.password"):
        bad("config.yml sets database.password: it belongs in the environment")
    if get(cfg, "storage.delete.enabled") is not True:
        bad("config.yml: storage.delete.enabled is not true")
    # connections: replicas x (maxopen + the listener) + the garbage collector's lease
    maxopen = int(get(cfg, "database.pool.maxopen") or 20)
    pmax = 100
    for a in (pg.get("command") or []) if isinstance(pg.get("command"), list) else str(pg.get("command") or "").split():
        m = re.match(r"max_connections=(\d+)", str(a))
        if m:
            pmax = int(m.group(1))
    need = replicas * (maxopen + 1) + 1
    if need > pmax - 3:
        bad(f"{replicas} replicas x (maxopen {maxopen} + 1) + 1 = {need} connections, over PostgreSQL's max_connections {pmax} less 3 reserved")
    else:
        ok(f"PostgreSQL connections: {replicas} x ({maxopen} + 1) + 1 = {need} <= {pmax} - 3 reserved (max_connections)")

    # haproxy
    hp = services.get("haproxy")
    if not hp or hp.get("image") != "haproxy:lts":
        bad("no service haproxy with image haproxy:lts")
        hp = {}
    mounted = [v for v in hp.get("volumes") or [] if (v.get("target") if isinstance(v, dict) else v.split(":")[1]) == "/usr/local/etc/haproxy/haproxy.cfg"]
    if not mounted:
        bad("haproxy.cfg is not mounted at /usr/local/etc/haproxy/haproxy.cfg (where the image reads it)")
    if not hp.get("ports"):
        bad("haproxy publishes no port")
    port = int(str(get(cfg, "http.addr") or ":5000").rsplit(":", 1)[1])
    servers = re.findall(r"^\s*server(?:-template)?\s+\S+\s+(?:\d+(?:-\d+)?\s+)?(\S+)", hap, re.M)
    targets = set(servers)
    want = {f"registry:{port}"} if len(regs) == 1 else {f"{n}:{port}" for n in regs}
    if not targets or not targets <= want | {f"{n}:{port}" for n in regs}:
        bad(f"haproxy.cfg's servers {sorted(targets)} are not the registry replicas {sorted(want)}")
    elif hp and mounted:
        ok(f"haproxy (haproxy:lts, publishes {hp.get('ports')[0].get('published') if isinstance(hp.get('ports')[0], dict) else hp.get('ports')[0]}) balances over {', '.join(sorted(targets))}, the replicas' http.addr")
    sys.exit(1 if failures else 0)


def cmd_berth(resolved):
    services = (yaml.safe_load(open(resolved)) or {}).get("services") or {}
    regs = registries(services)
    name = sorted(regs)[0]
    src, _ = config_mount(regs[name])
    print(src)
    for k, v in sorted(env_of(regs[name]).items()):
        print(f"{k}={v}")


if __name__ == "__main__":
    {"services": cmd_services, "berth": cmd_berth}[sys.argv[1]](*sys.argv[2:])
PYTHON

# Run a helper command and count its ok/FAIL lines. A helper that dies is a failure too.
helper() {
    local out rc=0 line
    out=$(python3 "$TMP/compose.py" "$@" 2>&1) || rc=$?
    while IFS= read -r line; do
        case $line in
            "ok "*) ok "${line#ok }" ;;
            "FAIL "*) bad "${line#FAIL }" ;;
            *) note "$line" ;;
        esac
    done <<<"$out"
    if ((rc != 0)) && ! grep -q '^FAIL ' <<<"$out"; then
        bad "helper '$1' exited $rc"
    fi
    return 0
}

# --- 2. the services hold together -----------------------------------------------------------
echo "== 2. services, dependencies, credentials"
helper services "$TMP/resolved.yaml" "$DIR/config.yml" "$DIR/haproxy.cfg"

# --- 3. haproxy -c ---------------------------------------------------------------------------
echo "== 3. $DIR/haproxy.cfg, $(haproxy -v 2>/dev/null | awk 'NR == 1 { print "haproxy " $3 }')"
haproxy_check() { # FILE: haproxy -c, failing on warnings too
    local out rc=0
    out=$(haproxy -c -f "$1" 2>&1) || rc=$?
    if ((rc != 0)) || grep -q 'WARNING\|ALERT' <<<"$out"; then
        printf '%s\n' "$out"
        return 1
    fi
}
if msg=$(haproxy_check "$DIR/haproxy.cfg"); then
    ok "haproxy -c accepts haproxy.cfg with no warning (backends by Docker DNS, init-addr none: the name registry need not resolve here)"
else
    bad "haproxy -c refused haproxy.cfg:"
    while IFS= read -r line; do note "  $line"; done <<<"$msg"
fi
# Round robin, no stickiness, GET /v2/ checks (in the backend section).
backend=$(awk '/^backend /{b=1; next} /^[a-z]/{b=0} b' "$DIR/haproxy.cfg" | sed 's/#.*//')
if ! grep -qE '^\s*balance\s+roundrobin\s*$' <<<"$backend"; then
    bad "haproxy.cfg: the backend does not balance round robin"
elif grep -qE '^\s*(cookie|stick|stick-table|hash-type|balance\s+(source|uri|hdr))' <<<"$backend"; then
    bad "haproxy.cfg: the backend has stickiness: $(grep -E '^\s*(cookie|stick)' <<<"$backend" | head -n 1)"
elif ! grep -qE '^\s*option\s+httpchk' <<<"$backend" || ! grep -qE 'uri /v2/|httpchk (GET )?/v2/' <<<"$backend"; then
    bad "haproxy.cfg: no GET /v2/ health check in the backend"
elif ! grep -qE '^\s*(default-server|server|server-template)\s.*\bcheck\b' <<<"$backend"; then
    bad "haproxy.cfg: the servers are not health-checked (no 'check')"
else
    ok "haproxy.cfg: round robin, no cookie or stick table, servers checked with GET /v2/"
fi
if broken_copy haproxy-typo haproxy.cfg 's/balance roundrobin/balance roundrobn/'; then
    expect_refused "haproxy.cfg with balance roundrobn (misspelled)" "balance only supports" haproxy_check "$CASE/haproxy.cfg"
fi
if broken_copy haproxy-resolve haproxy.cfg 's/ init-addr none//'; then
    if getent hosts registry >/dev/null 2>&1; then
        note "the name registry resolves on this machine: not checking that haproxy -c resolves server names"
    else
        expect_refused "haproxy.cfg without init-addr none (registry does not resolve here)" "could not resolve address 'registry'" haproxy_check "$CASE/haproxy.cfg"
    fi
fi

# --- 4. berth check-config with the replicas' environment -------------------------------------
echo "== 4. berth check-config of config.yml with the replicas' environment"
if [[ ! -x $BERTH ]]; then
    note "SKIPPED: no berth binary at $BERTH (build it with \`cargo build -p berth-server --bin berth\` or set BERTH_BIN)"
    finish
fi
note "using $BERTH ($("$BERTH" --version 2>/dev/null || echo 'version unknown'))"
mapfile -t LINES < <(python3 "$TMP/compose.py" berth "$TMP/resolved.yaml")
CONF=${LINES[0]:-}
REG_ENV=("${LINES[@]:1}")
if [[ -z $CONF || ! -f $CONF ]]; then
    bad "the registry's configuration file ($CONF) was not found from docker-compose config"
    finish
fi
note "config $CONF; environment: $(printf '%s ' "${REG_ENV[@]%%=*}")"
check_config() { # CONF ENV...: berth check-config in exactly that environment (as in the image: no other variables)
    local conf=$1
    shift
    env -i "$@" "$BERTH" check-config --config "$conf"
}
rc=0
out=$(check_config "$CONF" "${REG_ENV[@]}" 2>"$TMP/check.err") || rc=$?
warnings=$(grep -E '"level":"(WARN|ERROR)"|\s(WARN|ERROR)\s' "$TMP/check.err" || true)
if ((rc != 0)) || ! grep -q 'configuration OK' <<<"$out"; then
    bad "berth check-config exited $rc:"
    while IFS= read -r line; do note "  $line"; done < <(tail -n 10 "$TMP/check.err")
elif [[ -n $warnings ]]; then
    bad "berth check-config warns:"
    while IFS= read -r line; do note "  $line"; done <<<"$warnings"
elif ! grep -q 'secret_key: "(set)"' <<<"$out" || ! grep -q 'password: "(set)"' <<<"$out"; then
    bad "berth check-config does not show the S3 secret key and the database password as set"
else
    ok "berth check-config accepts config.yml with the replicas' environment, no warning: $(grep -oE 'bucket: "[^"]*"|endpoint: "[^"]*"|host: "[^"]*"' <<<"$out" | paste -sd ' ' -)"
fi
expect_refused "config.yml without the replicas' environment (no credential in the file)" "no S3 credentials" \
    check_config "$CONF"
if broken_copy config-units config.yml 's/chunksize: 10485760/chunksize: 10MB/'; then
    expect_refused "config.yml with chunksize: 10MB" "storage.s3.chunksize" check_config "$CASE/config.yml" "${REG_ENV[@]}"
fi
if broken_copy config-nodb config.yml 's/enabled: true   *# required with storage.s3/enabled: false/'; then
    expect_refused "config.yml with database.enabled: false" "needs database.enabled" check_config "$CASE/config.yml" "${REG_ENV[@]}"
fi

finish
