# shellcheck shell=bash
# A private PostgreSQL for tests: Debian's server binaries (/usr/lib/postgresql/<newest>/bin), a cluster
# made by initdb in a directory of its own, listening on 127.0.0.1 only, on a free port, with its unix
# socket in that directory, and password (scram-sha-256) authentication over TCP. Source this file, then:
#
#   postgres_start DIR      initdb, start, create the test role and database; exports the variables
#                           below; 0 when the role logs in with its password over TCP
#   postgres_stop DIR       stop it (pg_ctl stop -m fast); the data stays
#   postgres_restart DIR    start it again on the same port and data (a running one is stopped first)
#   postgres_teardown DIR   stop it (immediate) and remove its data (for EXIT traps)
#   postgres_psql ARGS      psql as the test role over TCP (PGPASSWORD set), e.g. postgres_psql -c 'select 1'
#
# Exported: PG_HOST (127.0.0.1), PG_PORT, PG_USER, PG_PASSWORD, PG_DB, and PG_URL
# (postgres://user:password@127.0.0.1:port/db); with POSTGRES_TLS=1, PG_SSLROOTCERT too.
#
# POSTGRES_TLS=1: TLS only. A CA and a server certificate for 127.0.0.1 and localhost are made with
# openssl (DIR/pg-ca.pem is the CA, for sslrootcert), ssl is on, and pg_hba.conf has hostssl lines
# only, so a client without TLS is refused.
#
# PostgreSQL refuses to run as root. As root the server runs as the system user $PG_OS_USER (default
# berth-pg, created with useradd when missing), and its data lives in a directory that user owns under
# /tmp (the caller's DIR may be private to root): DIR/postgres is a link to it, DIR/postgres.env names
# it. As another user the server runs as that user, inside DIR.
# Messages go through the caller's `log` function when it has one.

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

_pg_say() { if declare -F log >/dev/null; then log "$*"; else printf '%s\n' "$*" >&2; fi; }

# _pg_bin: the directory of Debian's server binaries (the newest major version installed), else the one
# that holds `initdb` on PATH.
_pg_bin() {
  local d
  d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  if [[ -n $d && -x $d/initdb ]]; then
    echo "$d"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
  else
    return 1
  fi
}

# _pg_as CMD...: run CMD as the server's user (from /, which that user can enter).
_pg_as() {
  if ((EUID == 0)); then
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    "$@"
  fi
}

_pg_export() {
  # shellcheck source=/dev/null
  source "$1/postgres.env"
  export PG_HOST=127.0.0.1 PG_PORT="$PGL_PORT" PG_USER="$PGL_USER" PG_PASSWORD="$PGL_PASSWORD" PG_DB="$PGL_DB"
  export PG_URL="postgres://$PG_USER:$PG_PASSWORD@$PG_HOST:$PG_PORT/$PG_DB"
  if [[ -n ${PGL_SSLROOTCERT:-} ]]; then export PG_SSLROOTCERT=$PGL_SSLROOTCERT; fi
}

postgres_psql() {
  PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 \
    -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" "$@"
}

# _pg_ctl_start DIR: pg_ctl start, waiting until it accepts connections.
_pg_ctl_start() {
  local dir=$1
  # shellcheck source=/dev/null
  source "$dir/postgres.env"
  if ! _pg_as "$PGL_BIN/pg_ctl" start -D "$PGL_DATA/data" -l "$PGL_DATA/postgres.log" -w \
    -t "${POSTGRES_START_TIMEOUT:-60}" >>"$PGL_DATA/pg_ctl.log" 2>&1; then
    _pg_say "  PostgreSQL did not start; last lines of $PGL_DATA/postgres.log:"
    tail -n 15 "$PGL_DATA/postgres.log" 2>/dev/null | sed 's/^/  | /' >&2
    return 1
  fi
}

# _pg_tls DIR DATA: a CA (DIR/pg-ca.pem) and a server certificate signed by it for 127.0.0.1 and
# localhost; ssl on, and every TCP line of pg_hba.conf made hostssl.
_pg_tls() {
  local dir=$1 data=$2 t
  t=$(mktemp -d) || return 1
  if ! {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=berth test PostgreSQL CA" \
      -keyout "$t/ca.key" -out "$dir/pg-ca.pem" &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$t/server.key" -out "$t/server.csr" &&
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$t/ext" &&
      openssl x509 -req -in "$t/server.csr" -CA "$dir/pg-ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 2 \
        -extfile "$t/ext" -out "$t/server.crt"
  } >"$t/openssl.log" 2>&1; then
    _pg_say "  making the PostgreSQL TLS certificates failed: $(tail -n 3 "$t/openssl.log")"
    rm -rf "$t"
    return 1
  fi
  _pg_as tee "$data/data/server.crt" <"$t/server.crt" >/dev/null
  _pg_as tee "$data/data/server.key" <"$t/server.key" >/dev/null
  _pg_as chmod 0600 "$data/data/server.key"
  rm -rf "$t"
  printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" | _pg_as tee -a "$data/data/postgresql.conf" >/dev/null
  _pg_as sed -i -E 's/^host([[:space:]])/hostssl\1/' "$data/data/pg_hba.conf"
}

postgres_start() {
  local dir=$1 t0=$EPOCHREALTIME bin data port
  bin=$(_pg_bin) || {
    _pg_say "  PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
    return 1
  }
  PG_OS_USER=${PG_OS_USER:-berth-pg}
  mkdir -p "$dir"
  if ((EUID == 0)); then
    if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
      useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_OS_USER" || return 1
      _pg_say "  created system user $PG_OS_USER for PostgreSQL"
    fi
    data=$(mktemp -d "${PG_TMPDIR:-/tmp}/berth-pg.XXXXXX") || return 1
    chown "$PG_OS_USER:" "$data"
    ln -sfn "$data" "$dir/postgres"
  else
    data=$dir/postgres
    mkdir -p "$data"
  fi
  chmod 0700 "$data"
  port=$(free_port) || return 1
  cat >"$dir/postgres.env" <<EOF
PGL_BIN=$bin
PGL_DATA=$data
PGL_PORT=$port
PGL_USER=berth
PGL_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
PGL_DB=berth
PG_OS_USER=$PG_OS_USER
EOF
  chmod 0600 "$dir/postgres.env"
  [[ ${POSTGRES_TLS:-0} != 1 ]] || echo "PGL_SSLROOTCERT=$dir/pg-ca.pem" >>"$dir/postgres.env"
  _pg_export "$dir"
  # The server's superuser is the OS user, trusted on the unix socket only (a directory only it can
  # enter); TCP needs a password (scram-sha-256) for every role.
  if ! _pg_as "$bin/initdb" -D "$data/data" --username="$PG_OS_USER" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$data/initdb.log" 2>&1; then
    _pg_say "  initdb failed; last lines of $data/initdb.log:"
    tail -n 15 "$data/initdb.log" | sed 's/^/  | /' >&2
    return 1
  fi
  _pg_as mkdir -p "$data/sock"
  _pg_as tee -a "$data/data/postgresql.conf" >/dev/null <<EOF

# scripts/lib/postgres.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data/sock'
password_encryption = 'scram-sha-256'
max_connections = 200
fsync = on
logging_collector = off
EOF
  if [[ ${POSTGRES_TLS:-0} == 1 ]]; then
    _pg_tls "$dir" "$data" || return 1
  fi
  _pg_ctl_start "$dir" || return 1
  # Role and database, over the socket as the superuser.
  if ! _pg_as "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$data/sock" -p "$port" -U "$PG_OS_USER" -d postgres \
    >>"$data/initdb.log" 2>&1 <<EOF; then
CREATE ROLE "$PG_USER" LOGIN PASSWORD '$PG_PASSWORD';
CREATE DATABASE "$PG_DB" OWNER "$PG_USER";
EOF
    _pg_say "  creating the test role and database failed; last lines of $data/initdb.log:"
    tail -n 15 "$data/initdb.log" | sed 's/^/  | /' >&2
    return 1
  fi
  if ! postgres_psql -tAc 'select 1' >/dev/null 2>>"$data/initdb.log"; then
    _pg_say "  the test role cannot log in over TCP: $(tail -n 1 "$data/initdb.log")"
    return 1
  fi
  _pg_say "  PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on $PG_HOST:$PG_PORT, database $PG_DB, user $PG_USER (scram-sha-256), data $data ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s)"
}

# _pg_ctl_stop DIR MODE: pg_ctl stop -m MODE, when it runs.
_pg_ctl_stop() {
  local dir=$1 mode=$2
  [[ -f $dir/postgres.env ]] || return 1
  # shellcheck source=/dev/null
  source "$dir/postgres.env"
  [[ -f $PGL_DATA/data/postmaster.pid ]] || return 1
  _pg_as "$PGL_BIN/pg_ctl" stop -D "$PGL_DATA/data" -m "$mode" -w -t 30 >>"$PGL_DATA/pg_ctl.log" 2>&1
}

postgres_stop() {
  local t0=$EPOCHREALTIME
  if _pg_ctl_stop "$1" fast; then
    _pg_say "  PostgreSQL on port $PGL_PORT stopped ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s)"
  fi
  return 0
}

postgres_restart() {
  local dir=$1 t0=$EPOCHREALTIME
  _pg_ctl_stop "$dir" fast || true
  _pg_export "$dir"
  _pg_ctl_start "$dir" || return 1
  _pg_say "  PostgreSQL on port $PG_PORT restarted on the same data ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s)"
}

postgres_teardown() {
  local dir=$1
  [[ -f $dir/postgres.env ]] || return 0
  _pg_ctl_stop "$dir" immediate || true
  # shellcheck source=/dev/null
  source "$dir/postgres.env"
  if [[ -n $PGL_DATA && $PGL_DATA != "$dir/postgres" ]]; then
    rm -rf -- "$PGL_DATA"
    rm -f "$dir/postgres"
  fi
  rm -f "$dir/postgres.env"
}
