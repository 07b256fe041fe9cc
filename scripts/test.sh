#!/usr/bin/env bash
# The one test command: builds tokenrelay, prepares the virtualenv of the real
# Python clients, runs the Rust unit and integration tests (one of which drives
# MSAL from that virtualenv against the fake authority), then the real-client
# tests (the official Azure SDK for Python against `tokenrelay serve --dev` on
# loopback). Works from any directory; re-runs reuse the virtualenv in .venv and
# skip pip when tests/python/requirements.txt is unchanged.
#
# Environment:
#   PYTHON          interpreter that creates .venv (default: python3)
#   PYTEST_ARGS     extra pytest arguments (default: -q)
#   TOKENRELAY_BIN  binary the Python tests start (default: target/debug/tokenrelay)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

python="${PYTHON:-python3}"
venv="$repo_root/.venv"
requirements="tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"

section() { printf '\n==> %s\n' "$*"; }

# Under CI, Cargo.lock must already be up to date; locally cargo may refresh it.
locked=()
if [[ "${CI:-}" == "true" ]]; then locked=(--locked); fi

section "cargo build"
cargo build "${locked[@]}"

section "python virtualenv ($venv)"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        # Debian's system python3 ships venv/ensurepip separately.
        echo "'$python -m venv' failed; on Debian install python3-venv" >&2
        exit 1
    fi
fi
want="$(sha256sum "$requirements" | cut -d' ' -f1) $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    rm -f "$stamp"
    started=$SECONDS
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$requirements"
    echo "pip install took $((SECONDS - started)) s"
    echo "$want" > "$stamp"
else
    echo "requirements unchanged; skipping pip install"
fi

# A failing Rust test does not stop the Python tests from running; the
# script still exits non-zero at the end.
failed=()

section "cargo test --all-targets"
cargo test "${locked[@]}" --all-targets || failed+=("cargo test")

section "pytest tests/python"
export TOKENRELAY_BIN="${TOKENRELAY_BIN:-target/debug/tokenrelay}"
# shellcheck disable=SC2086 # PYTEST_ARGS is split on purpose
"$venv/bin/python" -m pytest tests/python ${PYTEST_ARGS:--q} || failed+=("pytest")

if ((${#failed[@]})); then
    printf '\nFAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
echo
echo "all tests passed"
