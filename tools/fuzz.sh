#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/*.rs; what each checks is at the top of its file) for a
# bounded time each, with corpora seeded from the Synthea test data (tools/fuzz_seeds.py) on first use.
# Needs the nightly toolchain (libFuzzer's sanitizer flags) and cargo-fuzz, installed here when missing,
# so it is not part of ./test.sh; the crash inputs found are kept as stable regression tests (see
# docs/api-contract.md#fuzzing).
#
# Usage: tools/fuzz.sh [SECONDS_PER_TARGET (600)] [TARGET...]
#   targets: scope search resource client_assertion import
# A crash stops its target and leaves the input in fuzz/artifacts/<target>/; reproduce it with
#   cargo +nightly fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<crash-file>
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-600}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(scope search resource client_assertion import)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
[ -d fuzz/corpus ] || python3 tools/fuzz_seeds.py

status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "== $t: $secs s"
    # Larger inputs for the file and resource readers (Synthea bundles); one job: the machine has 2 cores.
    max_len=4096
    case $t in import | resource) max_len=262144 ;; esac
    if ! cargo +nightly fuzz run --fuzz-dir fuzz --release --debug-assertions "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -max_len="$max_len" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1; then
        echo "== $t: CRASH (input in fuzz/artifacts/$t/)" >&2
        status=1
    fi
done
exit $status
