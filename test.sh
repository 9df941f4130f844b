#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, HTTP integration and browser tests), then interop checks in which
# independent tooling drives a running `kindling up`:
#   - Python fhirpy + fhir.resources against the FHIR API (open sandbox);
#   - the SMART JavaScript client (npm fhirclient) in headless Chromium, and the SMART Python client (PyPI
#     fhirclient, which finds the authorisation server in the CapabilityStatement), each through a full
#     standalone launch against the token-enforcing server.
# Installs what the tests need first (Debian chromium and chromium-driver, Python and npm packages); safe
# to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

# 1. What the browser and interop tests need: Debian's chromium and chromium-driver, Python, npm.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PostgreSQL on 127.0.0.1:5432 for the PostgreSQL tests: started when it is installed but not running
# (the tests skip PostgreSQL with a message when it is unreachable, and fail in CI).
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        for v in $(ls /etc/postgresql 2>/dev/null); do pg_ctlcluster --skip-systemctl-redirect "$v" main start || true; done
        for _ in $(seq 1 20); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
    fi
fi

# 2. The style the code keeps: formatted (rustfmt.toml) and clippy-clean, warnings as errors.
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets (fuzz/, run by cargo-fuzz on nightly: tools/fuzz.sh) still compile against the crates
# they exercise: checked here on stable, in the workspace's target directory.
CARGO_TARGET_DIR=target cargo check --manifest-path fuzz/Cargo.toml --locked --quiet

# npm packages (in target/): axe-core for the browser tests' accessibility checks, the SMART JavaScript
# client for the interop checks.
npm_dir=target/interop-npm
if [ ! -f "$npm_dir/node_modules/fhirclient/build/fhir-client.js" ] || [ ! -f "$npm_dir/node_modules/axe-core/axe.min.js" ]; then
    mkdir -p "$npm_dir"
    npm install --silent --no-audit --no-fund --prefix "$npm_dir" fhirclient@2.6.3 axe-core@4.10.2 >/dev/null
fi

# 3. The workspace: unit tests, HTTP integration tests, and the browser tests (headless Chromium through
# the EHR). The Synthea import test reads ../shared/data/synthea-r4 when it exists (CI always has it).
cargo test --workspace --locked "$@"

# 4. The same HTTP-level FHIR and SMART suite on PostgreSQL (each test server on a database of its own,
# dropped afterwards), plus the multi-node checks. Skipped with a message when PostgreSQL is unreachable;
# in CI (CI set) that is a failure.
pg_admin=postgres://postgres@127.0.0.1:5432/test
drop_test_databases() {
    psql "$pg_admin" -Atc "select 'DROP DATABASE IF EXISTS ' || datname || ' WITH (FORCE);' from pg_database where datname like 'kindling_it_%' or datname like 'kindling_app_test_%'" | psql "$pg_admin" -q >/dev/null
}
if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then
    drop_test_databases
    KINDLING_TEST_POSTGRES=$pg_admin cargo test --locked -p kindling --test it
    drop_test_databases
elif [ -n "${CI:-}" ]; then
    echo "PostgreSQL is not reachable on 127.0.0.1:5432: the PostgreSQL suite cannot run in CI" >&2
    exit 1
else
    echo "PostgreSQL is not reachable on 127.0.0.1:5432: skipping the PostgreSQL suite" >&2
fi

# 5. Python packages for the interop checks (in target/).
venv=target/interop-venv
if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# Starts `kindling up` with the given extra arguments on a free port; sets $url to its base URL.
start_kindling() {
    local name=$1; shift
    local log="$work/$name.log"
    # Created here, not by the background job's redirect, which may not have run when the loop first reads it.
    : >"$log"
    target/debug/kindling up --data "$work/$name" --listen 127.0.0.1:0 --patients 3 "$@" >"$log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    url=""
    for _ in $(seq 1 120); do
        url=$(sed -n 's/^Kindling is serving at \([^ ]*\).*/\1/p' "$log")
        [ -n "$url" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "kindling up exited early" >&2; exit 1; }
        sleep 0.5
    done
    [ -n "$url" ] || { cat "$log" >&2; echo "kindling up did not become ready in 60 s" >&2; exit 1; }
}

# 6. FHIR interop (open sandbox, no tokens).
start_kindling open --open-sandbox
open_url=$url
"$venv/bin/python" tests/interop/fhirpy_check.py "$url/fhir"

# 7. SMART interop (tokens enforced).
start_kindling secured
"$venv/bin/python" tests/interop/fhirclient_check.py "$url/fhir" target/debug/kindling "$work/secured" \
    "$npm_dir/node_modules/fhirclient/build/fhir-client.js"
"$venv/bin/python" tests/interop/clientpy_check.py "$url/fhir" target/debug/kindling "$work/secured"

# 8. Bulk Data: an independent client written from the IG runs a system and a Group export with a
# backend-services token and validates every exported resource with fhir.resources.
"$venv/bin/python" tests/interop/bulk_check.py "$url/fhir" target/debug/kindling "$work/secured"

# 8b. CDS Hooks: an independent service written from the CDS Hooks 2.0 specification (Python's http.server,
# PyJWT, fhir.resources) is registered, called when a clinician opens a chart, and its card's SMART link
# launches the app it names.
"$venv/bin/python" tests/interop/cds_check.py "$url" target/debug/kindling "$work/secured"

# 9. The published contract (/openapi.json, docs/api-contract.md): schemathesis generates requests from the
# description, valid and invalid, against the open sandbox (writes included) and against the token-enforcing
# server with a patient's token, and fails on any 5xx and on any response whose status, content type,
# headers or body the description does not allow (every error an OperationOutcome, RFC 6749 JSON or a page
# for a person). A fixed seed keeps CI repeatable; SCHEMATHESIS_SEED=random (or another number) explores.
st_seed=${SCHEMATHESIS_SEED:-20261206}
st_args=(--checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance
    --max-redirects 0 --workers 1 --no-color --suppress-health-check all)
[ "$st_seed" = random ] || st_args+=(--seed "$st_seed")
"$venv/bin/st" run "$open_url/openapi.json" "${st_args[@]}" --max-time "${SCHEMATHESIS_SECONDS:-100}"
patient_token=$(target/debug/kindling token --data "$work/secured" --user patient --scope "openid fhirUser patient/*.rs" 2>/dev/null)
"$venv/bin/st" run "$url/openapi.json" "${st_args[@]}" --max-time "${SCHEMATHESIS_SECONDS:-60}" -H "Authorization: Bearer $patient_token"
