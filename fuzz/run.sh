#!/usr/bin/env bash
# Runs every tokenrelay fuzz target for a bounded time, one after the other, under nice.
# Not part of CI: a developer runs it by hand (README.md in this folder).
#
#   fuzz/run.sh [seconds-per-target]      default 600
#
# Environment:
#   FUZZ_TARGETS  space-separated subset of targets (default: all three)
#   MINIMIZE=1    after a clean run, minimise the local corpus work/<target> with
#                 `cargo fuzz cmin`
#
# Why RUSTC_BOOTSTRAP=1: cargo-fuzz builds with nightly-only flags (-Zsanitizer=address,
# -Cpasses=sancov-module and friends). With only a stable toolchain installed, stable rustc
# still ships the sanitizer runtimes and honours -Z flags when RUSTC_BOOTSTRAP=1 is set. It
# is set only for these fuzz builds, never for the product.
#
# corpus/<target> holds the committed seeds and regression inputs and is only read. What a
# run discovers goes to work/<target> (ignored by git), which later runs start from too. A
# crash stops the script with a non-zero exit and prints where libFuzzer saved the input.
set -euo pipefail

seconds="${1:-600}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds-per-target]" >&2
    exit 2
fi

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

read -r -a targets <<<"${FUZZ_TARGETS:-query_parse store_decode entra_response}"
mkdir -p logs

for target in "${targets[@]}"; do
    mkdir -p "work/$target" "corpus/$target"
    log="logs/$target.log"
    echo "== $target: ${seconds}s, log in fuzz/$log" >&2
    # The first corpus directory receives new inputs; the second only seeds the run.
    if ! nice -n 19 cargo fuzz run --sanitizer address "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -dict="dicts/$target.dict" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "== $target FAILED; crashing input(s):" >&2
        # libFuzzer names the file it wrote; cargo fuzz then prints how to reproduce it.
        grep -h "Test unit written to" "$log" >&2 || echo "(none written: a build error? see $log)" >&2
        exit 1
    fi
    grep -E "^#[0-9]+.*(DONE|pulse)|^stat::" "$log" | tail -n 12 >&2
    if [[ "${MINIMIZE:-0}" == 1 ]]; then
        nice -n 19 cargo fuzz cmin --sanitizer address "$target" "work/$target" >"logs/$target.cmin.log" 2>&1
        echo "== $target local corpus minimised: $(find "work/$target" -type f | wc -l) files in fuzz/work/$target" >&2
    fi
done
echo "== all targets ran ${seconds}s without a crash" >&2
