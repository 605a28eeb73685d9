#!/usr/bin/env bash
# Install the system packages the tests need when they are missing (Debian; run as root, as CI does):
# the end-to-end, deployment and reference-registry steps use real clients and servers, and the
# engine's PostgreSQL tests start a throwaway PostgreSQL server of their own (initdb, pg_ctl). Does nothing
# when everything is present. scripts/test.sh runs it first, so the test command works on a fresh
# machine by itself; TEST_NO_INSTALL=1 skips it.
set -euo pipefail

# package:command pairs; a package is installed when dpkg says so and its command is on PATH.
REQUIRED=(skopeo:skopeo umoci:umoci docker.io:dockerd docker-registry:docker-registry apache2-utils:htpasswd
  jq:jq curl:curl docker-compose:docker-compose binutils:readelf openssl:openssl
  postgresql:pg_lsclusters)

missing=()
for pair in "${REQUIRED[@]}"; do
  pkg=${pair%%:*}
  cmd=${pair#*:}
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
    ! command -v "$cmd" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  echo "==== install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting services (dockerd, docker-registry) during the install; the
  # end-to-end test starts what it needs itself.
  policy_rc=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    policy_rc=/usr/sbin/policy-rc.d
  fi
  rc=0
  { apt-get update -q && apt-get install -y -q "${missing[@]}"; } || rc=$?
  [[ -z $policy_rc ]] || rm -f "$policy_rc"
  if ((rc != 0)); then
    echo "==== install-deps: apt-get failed (exit $rc)"
    exit "$rc"
  fi
else
  echo "==== install-deps: system packages present (${REQUIRED[*]%%:*})"
fi

