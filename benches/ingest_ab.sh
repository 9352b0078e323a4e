#!/usr/bin/env bash
# Same-run A/B of radserve builds on one association: 1,000 CT slices (dicom-samples) sent by
# dcmtk's storescu to each variant in turn, ROUNDS times, each on a fresh output directory.
# A variant is `storescp` (dcmtk, writes files without fsync) or the path of a radserve
# binary (run with `[pipeline] demo_models = false`, so only ingest uses the CPU). Prints
# instances/s and the server's CPU time (user + system, from /proc) per run.
#
#   bash benches/ingest_ab.sh ROUNDS VARIANT...
#   e.g. cp $CARGO_TARGET_DIR/debug/radserve /tmp/radserve-before   # then rebuild
#        bash benches/ingest_ab.sh 3 storescp /tmp/radserve-before $CARGO_TARGET_DIR/debug/radserve
#
# WORK (default /tmp/radserve-ingest-ab) holds the set (generated once, ~0.5 GB) and every
# run's output (~0.5 GB each, removed at the start of the next invocation, then a pause: ext4
# without a journal slows inode allocation for a while after mass deletions).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:?usage: ingest_ab.sh ROUNDS VARIANT...}; shift
[[ $# -gt 0 ]] || { echo "usage: ingest_ab.sh ROUNDS VARIANT..." >&2; exit 2; }
WORK=${WORK:-/tmp/radserve-ingest-ab}
export TCP_NODELAY=1   # dcmtk: no Nagle stalls (see benches/README.md)
mkdir -p "$WORK"
if [[ ! -d $WORK/set ]]; then
    cargo run -q -p dicom-samples -- generate --out "$WORK/set" --seed 1000 --ct 10 --xray 0 \
        --slices 100 --quiet
fi
if [[ -d $WORK/out ]]; then rm -rf "$WORK/out"; sleep 60; fi
printf '[pipeline]\ndemo_models = false\n' > "$WORK/radserve.toml"
port=12100
for round in $(seq 1 "$rounds"); do
    for variant in "$@"; do
        port=$((port + 2))
        out=$WORK/out/$round-$(basename "$variant")
        mkdir -p "$out"
        if [[ $variant == storescp ]]; then
            storescp --fork -aet RADSERVE -od "$out" "$port" >/dev/null 2>&1 &
        else
            "$variant" serve --config "$WORK/radserve.toml" --data "$out" --dicom-port "$port" \
                --http-port $((port + 1)) >"$out.log" 2>&1 &
        fi
        pid=$!
        for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
        sleep 1
        start=$(date +%s.%N)
        storescu -aet LOADGEN -aec RADSERVE +sd +r +sp '*.dcm' 127.0.0.1 "$port" "$WORK/set" \
            >/dev/null 2>&1 || { echo "storescu failed against $variant" >&2; kill "$pid"; exit 1; }
        end=$(date +%s.%N)
        if [[ $variant == storescp ]]; then
            cpu=""   # storescp forks a child per association: its own CPU time is not the work's
        else
            cpu=$(awk '{printf " (server CPU %.2f s user + %.2f s system)", $14 / 100, $15 / 100}' "/proc/$pid/stat")
        fi
        kill "$pid"; wait "$pid" 2>/dev/null || true
        awk -v r="$round" -v v="$(basename "$variant")" -v s="$start" -v e="$end" -v c="$cpu" \
            'BEGIN { printf "round %s %s: %.0f instances/s%s\n", r, v, 1000 / (e - s), c }'
    done
done
