#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit and HTTP integration tests), then an interop check in which
# independent FHIR tooling (Python fhirpy and fhir.resources) drives a running `kindling up`.
# Installs what the tests need first; safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

# 1. The workspace. The Synthea import test reads ../shared/data/synthea-r4 when it exists (CI always has it).
cargo test --workspace --locked "$@"

# 2. Interop with independent FHIR tooling, against the binary the tests just built.
venv=target/interop-venv
if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt

data=$(mktemp -d)
log="$data/kindling.log"
target/debug/kindling up --open-sandbox --data "$data/data" --listen 127.0.0.1:0 --patients 3 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT
url=""
for _ in $(seq 1 120); do
    url=$(sed -n 's/^Kindling is serving at \([^ ]*\).*/\1/p' "$log")
    [ -n "$url" ] && break
    kill -0 $pid 2>/dev/null || { cat "$log" >&2; echo "kindling up exited early" >&2; exit 1; }
    sleep 0.5
done
[ -n "$url" ] || { cat "$log" >&2; echo "kindling up did not become ready in 60 s" >&2; exit 1; }
"$venv/bin/python" tests/interop/fhirpy_check.py "$url/fhir"
