#!/usr/bin/env bash
# Instructions per cache-hit request, counted by callgrind: unlike requests per second on a
# shared two-core machine, the count repeats to within a few per cent whatever else the
# machine is doing, so it shows what a change to the hot path costs or saves.
#
# Usage: bash bench/instructions.sh   (needs valgrind; builds the `profiling` profile)
#
# It runs `serve --dev` under callgrind with instrumentation off, warms the cache, switches
# counting on for a 5-second wrk run of IMDS cache hits (4 connections), and divides. It does
# so with JSON logs (the default outside a terminal) in the default configuration, where a
# cache hit writes no log line (`log.requests = "errors"`), with the access log on
# (`log.requests = "all"`: one JSON line per request), and with logs off. Only
# user-space instructions count: the kernel's share of each request (the socket and the log
# write) is not included. `rep movsb` copies count one instruction per byte under valgrind,
# so memcpy-heavy code looks dearer here than it runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in valgrind wrk curl; do
    if ! command -v "$tool" >/dev/null; then
        echo "installing $tool (Debian package)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    fi
done
cargo build --profile profiling --quiet --bin tokenrelay
bin=target/profiling/tokenrelay
port=18195
url="http://127.0.0.1:$port/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# count RUST_LOG LOG_REQUESTS -> prints "requests instructions_per_request"
count() {
    local level=$1 requests=$2
    RUST_LOG=$level TOKENRELAY_LOG__FORMAT=json TOKENRELAY_LOG__REQUESTS=$requests valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$work/callgrind.%p" "$bin" serve --dev --listen "127.0.0.1:$port" \
        >/dev/null 2>"$work/valgrind.log" &
    local pid=$!
    for _ in $(seq 300); do
        curl -fs -o /dev/null -H 'Metadata: true' "$url" && break
        sleep 0.2
    done
    wrk -t1 -c4 -d2s -H 'Metadata: true' "$url" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    local requests
    requests=$(wrk -t1 -c4 -d5s -H 'Metadata: true' "$url" | awk '/requests in/ {print $1}')
    callgrind_control -i off "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" || true
    local instructions
    instructions=$(awk '/Collected/ {gsub(",", ""); print $4}' "$work/valgrind.log")
    echo "$requests $((instructions / requests))"
}

echo "tokenrelay: user-space instructions per IMDS cache hit (callgrind), $(date -u +%Y-%m-%d)"
echo
echo "| logging | requests counted | instructions per request |"
echo "|---|---|---|"
for setting in "info errors default (log.requests = errors): no line per hit" \
    "info all log.requests = all: one JSON line per request" \
    "off errors RUST_LOG=off"; do
    read -r level requests label <<<"$setting"
    read -r counted per_request < <(count "$level" "$requests")
    echo "| $label | $counted | $per_request |"
done
