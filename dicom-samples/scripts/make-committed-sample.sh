#!/usr/bin/env bash
# Regenerates the small sample committed under dicom-samples/studies/ (one CT series of 10
# slices, three radiographs, their ground truth and EMR export) with this repository's own
# generator. The test `committed_sample_is_current` checks the committed files match.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=dicom-samples/studies
rm -rf "$out/studies" "$out"/*.json
cargo run --quiet -p dicom-samples -- generate --quiet --out "$out" --seed 2048 --ct 1 --slices 10 --xray 3
