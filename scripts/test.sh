#!/usr/bin/env bash
# The whole test suite, as a new user or CI runs it: `bash scripts/test.sh`.
# Installs missing system and Python packages, then checks formatting and lints, then runs
# every test of the workspace (unit, integration and end-to-end against the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install Rust (rustup, stable >= 1.95) first" >&2
    exit 1
fi
# dcmtk waits ~40 ms per message on Nagle's algorithm unless told otherwise.
export TCP_NODELAY=1
# The wgpu tests run on lavapipe when there is no GPU; its loader wants a runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Build every test once, and with them the server binary (server/tests/cli.rs asks for it) with
# the workspace's features; the end-to-end tests run that binary instead of building their own
# (a `cargo build -p radserve` would resolve other features and compile burn a second time).
RADSERVE_BIN="$(cargo test --workspace --locked --no-run --message-format=json-render-diagnostics |
    python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    target = msg.get("target", {})
    if msg.get("reason") == "compiler-artifact" and target.get("name") == "radserve" \
            and "bin" in target.get("kind", []) and not msg["profile"]["test"]:
        print(msg["executable"])
')"
if [ -z "$RADSERVE_BIN" ]; then
    echo "test.sh: cargo built no radserve binary" >&2
    exit 1
fi
export RADSERVE_BIN
cargo test --workspace --locked
