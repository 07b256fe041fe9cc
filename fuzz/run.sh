#!/usr/bin/env bash
# Runs every tokenrelay fuzz target for a bounded time, one after the other, under nice.
# Not part of CI: a developer runs it by hand (README.md in this folder).
#
#   fuzz/run.sh [seconds-per-target]      default 600
#
# Environment:
#   FUZZ_TARGETS  space-separated subset of targets (default: all three)
#   MINIMIZE=1    after a clean run, merge what the run found into corpus/<target> and
#                 minimise it with `cargo fuzz cmin`
#
# Why RUSTC_BOOTSTRAP=1: cargo-fuzz builds with nightly-only flags (-Zsanitizer=address,
# -Cpasses=sancov-module and friends). This machine has only the stable toolchain and cannot
# fetch a nightly; stable rustc ships the sanitizer runtimes and honours -Z flags when
# RUSTC_BOOTSTRAP=1 is set. It is set only for these fuzz builds, never for the product.
#
# New inputs a run discovers go to work/<target> (ignored by git), so the committed seeds
# in corpus/<target> only change when MINIMIZE=1 is asked for. A crash stops the script with
# a non-zero exit and prints where libFuzzer saved the crashing input.
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
        cp -n "work/$target"/* "corpus/$target"/ 2>/dev/null || true
        seeds="$(mktemp -d)"
        cp "corpus/$target"/seed-* "$seeds"/
        nice -n 19 cargo fuzz cmin --sanitizer address "$target" "corpus/$target" >"logs/$target.cmin.log" 2>&1
        # cmin renames every input to its SHA-1; put the named seeds back in place of their copies.
        for seed in "$seeds"/*; do
            rm -f "corpus/$target/$(sha1sum <"$seed" | cut -c1-40)"
            cp "$seed" "corpus/$target/"
        done
        rm -r "$seeds"
        echo "== $target corpus minimised: $(find "corpus/$target" -type f | wc -l) files" >&2
    fi
done
echo "== all targets ran ${seconds}s without a crash" >&2
