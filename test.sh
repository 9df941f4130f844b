#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need first; safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

# The Synthea import test reads ../shared/data/synthea-r4 when it exists (CI always has it).
cargo test --workspace --locked "$@"
