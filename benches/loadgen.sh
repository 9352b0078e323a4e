#!/usr/bin/env bash
# The inference pipeline load runs of benches/README.md, in one go:
#   1. builds radserve and loadgen first (a build must not steal the cores while measuring),
#   2. runs loadgen with batching on and off for each case below, writing the table to
#      $OUT/<case>.out and the JSON to $OUT/<case>.json.
#
#   bash benches/loadgen.sh                 # all cases (about 8 minutes on 2 cores)
#   CASES=dimse-xray bash benches/loadgen.sh
#
# Cases: dimse-xray stow-xray dimse-mixed stow-xray-c64-stability
# STUDIES=960 (radiograph cases) MIXED_STUDIES=64 OUT=/tmp/radserve-loadgen
set -euo pipefail

cd "$(dirname "$0")/.."
CASES=${CASES:-dimse-xray stow-xray dimse-mixed stow-xray-c64-stability}
STUDIES=${STUDIES:-960}
MIXED_STUDIES=${MIXED_STUDIES:-64}
OUT=${OUT:-/tmp/radserve-loadgen}
export TCP_NODELAY=1 XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
mkdir -p "$OUT"

cargo build -p radserve --bin radserve
cargo build -p radserve-benches --bin loadgen
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# loadgen would otherwise ask cargo for the server again; it is built just above.
export RADSERVE_BIN=${RADSERVE_BIN:-$target/debug/radserve}

for case in $CASES; do
    case $case in
        dimse-xray) args=(--concurrency 8 --mix xray --studies "$STUDIES" --warmup 32 --protocol dimse) ;;
        stow-xray) args=(--concurrency 8 --mix xray --studies "$STUDIES" --warmup 32 --protocol stow) ;;
        dimse-mixed) args=(--concurrency 8 --mix mixed --studies "$MIXED_STUDIES" --warmup 8 --protocol dimse) ;;
        stow-xray-c64-stability)
            args=(--mix xray --studies "$STUDIES" --warmup 64 --protocol stow --concurrency 64 --trigger stability) ;;
        *) echo "unknown case $case" >&2; exit 2 ;;
    esac
    echo "== $case: loadgen --compare-batching ${args[*]}" >&2
    "$target/debug/loadgen" --compare-batching "${args[@]}" --json "$OUT/$case.json" \
        | tee "$OUT/$case.out"
done
