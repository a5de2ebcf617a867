#!/usr/bin/env bash
# Fuzzes the spreadsheet import (fuzz/fuzz_targets/parse_clients.rs) with
# libFuzzer on the stable toolchain, starting from every fixture: the
# operators' files, the inputs the fuzzer found before (tests/fixtures/fuzz/)
# and the bombs of tests/fixtures/hostile/.
#
#   scripts/fuzz.sh              # CI: a fixed seed and a fixed number of runs,
#                                # so the same code gives the same verdict
#   FUZZ_SECONDS=600 scripts/fuzz.sh   # a longer, time-bounded search
#
# A crash, a timeout, more than 1 GiB in use or one allocation over 1 GiB fails
# it; the input is left in fuzz/artifacts/ (keep it in tests/fixtures/fuzz/ with
# a test, see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
target=x86_64-unknown-linux-gnu
cargo build --release --target "$target" --bin parse_clients

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
find ../tests/fixtures -maxdepth 2 -type f ! -name '*.json' ! -name '*.md' -exec cp {} "$corpus"/ \;
mkdir -p artifacts

limits=(-rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=20 -max_len=65536
        -artifact_prefix=artifacts/)
if [ -n "${FUZZ_SECONDS:-}" ]; then
    budget=(-max_total_time="$FUZZ_SECONDS")
else
    budget=(-seed=20261201 -runs="${FUZZ_RUNS:-100000}")
fi
"target/$target/release/parse_clients" "$corpus" "${limits[@]}" "${budget[@]}"
