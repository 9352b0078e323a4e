#!/usr/bin/env bash
# Forward-pass throughput of radserve's models vs PyTorch, in one run, with the same weights:
#   1. builds the criterion bench (before anything is timed: the build would steal the cores),
#   2. runs the PyTorch peer (benches/pytorch/forward_throughput.py), which also writes its
#      weights as safetensors,
#   3. runs the criterion bench `model_forward` on those weights,
#   4. prints the ratio table (benches/pytorch/compare.py), plain and as Markdown.
#
#   bash benches/model_compare.sh
#
# Restrict a run with (defaults shown):
#   ARCHS=resnet18,resnet34,densenet121,unet BATCHES=1,4,8,16 DEVICES=cpu,wgpu
#   (densenet-demo and unet-demo, the demo packages' own architectures, are there to be asked for)
#   SECONDS_PER_CASE=3    PyTorch: minimum measuring time per case (and >= 3 forwards)
#   SAMPLES=10            criterion samples per case (one forward each for slow cases)
#   THREADS=2             PyTorch intra-op threads; burn uses rayon's pool (RAYON_NUM_THREADS)
#   OUT=/tmp/radserve-model-compare   weights, PyTorch JSON, ratio JSON and Markdown go here
#   FEATURES=             cargo features for the bench build, e.g. FEATURES=burn/rayon,burn/simd
#                         (burn-flex multi-threaded and SIMD; not what radserve ships today)
#   CRITERION_HOME=       where criterion writes (default: the cargo target dir's criterion/);
#                         give a variant build its own, or its results replace the others'
# e.g. the issue's target cases only:
#   ARCHS=densenet121,unet BATCHES=8 DEVICES=cpu bash benches/model_compare.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ARCHS=${ARCHS:-resnet18,resnet34,densenet121,unet}
BATCHES=${BATCHES:-1,4,8,16}
DEVICES=${DEVICES:-cpu,wgpu}
SECONDS_PER_CASE=${SECONDS_PER_CASE:-3}
SAMPLES=${SAMPLES:-10}
THREADS=${THREADS:-2}
OUT=${OUT:-/tmp/radserve-model-compare}
FEATURES=${FEATURES:-}
mkdir -p "$OUT/weights"

# where criterion writes (it asks cargo the same way)
CRIT=${CRITERION_HOME:-$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/criterion}

bench=(cargo bench --profile dev -p radserve-benches --bench model_forward)
if [[ -n $FEATURES ]]; then bench+=(--features "$FEATURES"); fi
echo "== build" >&2
"${bench[@]}" --no-run

start=$(date +%s)
echo "== PyTorch (threads $THREADS)" >&2
python3 benches/pytorch/forward_throughput.py --threads "$THREADS" --batches "$BATCHES" \
    --archs "$ARCHS" --seconds "$SECONDS_PER_CASE" --json "$OUT/pytorch.json" \
    --weights-out "$OUT/weights"

echo "== radserve (criterion, devices $DEVICES)" >&2
RADSERVE_BENCH_WEIGHTS="$OUT/weights" RADSERVE_BENCH_ARCHS="$ARCHS" \
RADSERVE_BENCH_BATCHES="$BATCHES" RADSERVE_BENCH_DEVICES="$DEVICES" \
RADSERVE_BENCH_SAMPLES="$SAMPLES" \
    "${bench[@]}" -- --noplot

echo "== ratio (radserve / PyTorch CPU, images/s)" >&2
python3 benches/pytorch/compare.py --pytorch "$OUT/pytorch.json" --criterion "$CRIT" --since "$start" \
    --json "$OUT/ratio.json"
python3 benches/pytorch/compare.py --pytorch "$OUT/pytorch.json" --criterion "$CRIT" --since "$start" \
    --markdown > "$OUT/ratio.md"
echo "wrote $OUT/pytorch.json $OUT/ratio.json $OUT/ratio.md" >&2
