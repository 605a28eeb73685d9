#!/usr/bin/env bash
# Drives the S3 client benchmark: for each part size and round, a fresh SeaweedFS (scripts/lib/seaweedfs.sh
# of the Berth repo), then every client configuration once, in an order that alternates between rounds.
#   run.sh OUT.tsv [ROUNDS] [PART_MIBS] [INFLIGHT]
# NO_WARMUP=1 skips the unrecorded upload after each fresh start (the first run of 2026-12-07 had none).
set -euo pipefail
BERTH=${BERTH:-/work/wt-services}
OUT=$1 ROUNDS=${2:-3} PARTS=${3:-"16 64"} INFLIGHT=${4:-4}
T=/work/target-s3bench
source "$BERTH/scripts/lib/seaweedfs.sh"
CONFIGS=("rusty default" "objstore default" "objstore unsigned" "awssdk default" "awssdk lean" "boto3 default" "boto3 lean")
run_one() {
  local client=$1 variant=$2 part=$3
  if [[ $client == boto3 ]]; then
    seaweedfs_python /var/tmp/s3bench/bench_boto3.py "$variant" "$part" "$INFLIGHT"
  else
    "$T/$client/release/s3bench" upload "$variant" "$part" "$INFLIGHT"
  fi
}
printf 'client\tvariant\tpart_mib\tinflight\tsecs\tMB/s\tcpu_s\tcpu_s_per_GB\tweed_cpu_s\tlist_parts\tranged_get\tpresigned_get\tround\n' >"$OUT"
for part in $PARTS; do
  for r in $(seq 1 "$ROUNDS"); do
    D=$(mktemp -d /var/tmp/s3bench-sw.XXXXXX)
    seaweedfs_start "$D" >&2
    export WEED_PID=$(cat "$D/weed.ownpid")
    # One unrecorded upload first: the first 1 GiB into a fresh server also grows its volumes.
    [[ -n ${NO_WARMUP:-} ]] || run_one rusty default "$part" >/dev/null
    order=("${CONFIGS[@]}")
    if ((r % 2 == 0)); then # even rounds: reversed
      order=()
      for ((i = ${#CONFIGS[@]} - 1; i >= 0; i--)); do order+=("${CONFIGS[i]}"); done
    fi
    for c in "${order[@]}"; do
      read -r client variant <<<"$c"
      line=$(run_one "$client" "$variant" "$part")
      printf '%s\t%s\n' "$line" "$r" | tee -a "$OUT" >&2
    done
    seaweedfs_teardown "$D"
    rm -rf "$D"
  done
done
