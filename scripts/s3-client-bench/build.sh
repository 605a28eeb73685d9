#!/usr/bin/env bash
# Clean release build of the scratch crate with one client feature, timed.
cd /var/tmp/s3bench
f=$1
rm -rf /work/target-s3bench/$f
/usr/bin/time -f "%e s wall %U user %S sys" -o /work/target-s3bench/time-$f.txt env CARGO_TARGET_DIR=/work/target-s3bench/$f cargo build --release -j2 ${f:+--features $f} > /work/target-s3bench/build-$f.log 2>&1
echo "$f rc=$? $(cat /work/target-s3bench/time-$f.txt | tail -1)"
