#!/usr/bin/env bash
# Builds what the benchmarks run, in release: the tokenrelay binary on its own (so no
# dev-dependency's features leak into it), then the harnesses of bench/ (bench_probe,
# baseline_server) into the same target directory, against the exact dependency versions of
# the root Cargo.lock, which is copied in for the purpose.
#
# Usage: bash bench/build.sh [CARGO_FLAGS...]   e.g. --quiet
# Output: target/release/tokenrelay, target/release/bench_probe, target/release/baseline_server
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release "$@" --bin tokenrelay
cp Cargo.lock bench/Cargo.lock
cargo build --release "$@" --manifest-path bench/Cargo.toml --target-dir target
