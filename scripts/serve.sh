#!/usr/bin/env bash
# Runs the server as a new user would: installs what the build needs when it is missing,
# then `radserve serve` on its embedded defaults (data in ./radserve-data, DICOM 11112 as
# RADSERVE, HTTP 8080, device auto). Extra arguments go to `radserve serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh --build
exec cargo run -p radserve -- serve "$@"
