#!/usr/bin/env bash
# Load benchmark: tokenrelay's cache-hit path against a minimal hyper server that returns a
# precomputed body of the same size, in the same run, on the same machine. The load generator
# (wrk) shares the cores with the server, so absolute figures mean little; the ratios to the
# baseline are the result, each to the mean of the baseline runs just before and just after.
#
# Usage: bash bench/load.sh [DURATION_SECONDS]   (default 5 s per run; loopback only)
# BENCH_ROUNDS sets how often each flavour is measured per connection count (default 2).
# BENCH_FLAVOURS names the endpoints measured against the baseline (default "imds app_service");
# "validate" and "authorization_header" measure /Validate and /AuthorizationHeader/graph cache
# hits with a user token minted by the development issuer.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Decimal points in printf and awk, whatever the caller's locale.
export LC_ALL=C

duration="${1:-5}"
# Rounds per connection count: each measures every flavour once, in reverse order every other
# round, and the summary gives the mean ratio.
rounds="${BENCH_ROUNDS:-2}"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_ROUNDS must be a whole number of at least 1" >&2; exit 2; }
connections=(1 16 64 256)
relay_port=18181
baseline_port=18182
header_secret="bench-identity-header"

if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

bash bench/build.sh --quiet
bin=target/release/tokenrelay

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# tokenrelay with its embedded issuer (no upstream I/O after the first request) and its
# default logging: JSON lines on stderr, which a reader drains through a pipe, as a container
# runtime reads a container's stderr (writing to /dev/null would hide the cost of the pipe).
# By default a cache hit writes no line; BENCH_LOG_REQUESTS=all measures the access log (one
# line per request), BENCH_RUST_LOG=off serving with no logging at all.
RUST_LOG="${BENCH_RUST_LOG:-info}" TOKENRELAY_LOG__REQUESTS="${BENCH_LOG_REQUESTS:-errors}" "$bin" serve --dev --listen "127.0.0.1:$relay_port" --identity-header "$header_secret" \
    >/dev/null 2> >(cat >/dev/null) &
pids+=($!); relay_pid=$!
imds_url="http://127.0.0.1:$relay_port/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
app_url="http://127.0.0.1:$relay_port/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net"
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$relay_port/healthz" && break; sleep 0.05; done
body_bytes=$(curl -fs -H 'Metadata: true' "$imds_url" | wc -c)
read -r -a flavours <<<"${BENCH_FLAVOURS:-imds app_service}"
if [[ $(printf '%s\n' "${flavours[@]}" | sort | uniq -d) ]]; then
    echo "BENCH_FLAVOURS names a flavour twice" >&2
    exit 2
fi
user_token=$(curl -fs -X POST "http://127.0.0.1:$relay_port/dev/user-token" -d '{}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
validate_url="http://127.0.0.1:$relay_port/Validate"
authorization_header_url="http://127.0.0.1:$relay_port/AuthorizationHeader/graph"
# The first exchange, so the runs measure cache hits.
curl -fs -o /dev/null -H "Authorization: Bearer $user_token" "$authorization_header_url"

target/release/baseline_server "127.0.0.1:$baseline_port" "$body_bytes" >/dev/null &
pids+=($!); baseline_pid=$!
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$baseline_port/" && break; sleep 0.05; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

# run NAME PID CONNECTIONS URL [HEADER] -> "rps p50 p99 p999 cpu_us_per_request"
run() {
    local pid=$1 conns=$2 url=$3 header=${4:-X-Bench: 1}
    local threads=$(( conns < 2 ? 1 : 2 ))
    local before after line
    before=$(cpu_ticks "$pid")
    line=$(wrk -t"$threads" -c"$conns" -d"${duration}s" -H "$header" -s bench/latency.lua "$url" | grep '^RESULT')
    after=$(cpu_ticks "$pid")
    local requests rps p50 p99 p999 errors
    requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
    errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line")
    rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$line")
    p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
    p999=$(sed -E 's/.*p999_us=([0-9]+).*/\1/' <<<"$line")
    local cpu_us
    cpu_us=$(awk -v t=$((after - before)) -v hz="$ticks_per_second" -v n="$requests" 'BEGIN { printf "%.1f", (t / hz) * 1e6 / (n > 0 ? n : 1) }')
    echo "$rps $p50 $p99 $p999 $cpu_us $errors"
}


echo "tokenrelay load benchmark: $(date -u +%Y-%m-%d), $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "cache hits, body ${body_bytes} bytes, ${duration} s per run, wrk on the same machine; RUST_LOG=${BENCH_RUST_LOG:-info}, log.requests = ${BENCH_LOG_REQUESTS:-errors}"
echo
printf '| flavour | conns | req/s | p50 µs | p99 µs | p99.9 µs | CPU µs/req | errors | req/s vs baseline | p99 vs baseline | CPU vs baseline |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
baseline_row() { printf '| baseline | %s | %.0f | %s | %s | %s | %s | %s | | | |\n' "$conns" "$b_rps" "$b_p50" "$b_p99" "$b_p999" "$b_cpu" "$b_err"; }
# ratio_to_mean A B C -> A / ((B + C) / 2), to four places (two are printed)
ratio_to_mean() { awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN { if (b + c == 0) print "n/a"; else printf "%.4f", a / ((b + c) / 2) }'; }
two() { if [[ $1 == n/a ]]; then echo n/a; else printf '%.2f' "$1"; fi; }
baseline_failed() { echo "a baseline run gave no result (is wrk working?)" >&2; exit 1; }
flavour_failed() { echo "the $flavour run at $conns connections gave no result" >&2; exit 1; }
# Per flavour and connection count, the ratios of every round, for the summary.
declare -A rps_ratios p99_ratios cpu_ratios
for conns in "${connections[@]}"; do
    # Each flavour runs between two baseline runs, and its ratios are to their mean: the
    # machine's speed drifts over seconds (other tenants of the host), and a baseline measured
    # further away in time would bias the later flavours. Every other round runs the flavours
    # in reverse order, so that neither is always measured first.
    read -r b_rps b_p50 b_p99 b_p999 b_cpu b_err < <(run "$baseline_pid" "$conns" "http://127.0.0.1:$baseline_port/") || baseline_failed
    baseline_row
    for ((round = 1; round <= rounds; round++)); do
        order=()
        for ((i = 0; i < ${#flavours[@]}; i++)); do
            if ((round % 2)); then order+=("${flavours[i]}"); else order=("${flavours[i]}" "${order[@]}"); fi
        done
        for flavour in "${order[@]}"; do
            case $flavour in
                imds) read -r rps p50 p99 p999 cpu err < <(run "$relay_pid" "$conns" "$imds_url" "Metadata: true") || flavour_failed ;;
                app_service) read -r rps p50 p99 p999 cpu err < <(run "$relay_pid" "$conns" "$app_url" "X-IDENTITY-HEADER: $header_secret") || flavour_failed ;;
                validate) read -r rps p50 p99 p999 cpu err < <(run "$relay_pid" "$conns" "$validate_url" "Authorization: Bearer $user_token") || flavour_failed ;;
                authorization_header) read -r rps p50 p99 p999 cpu err < <(run "$relay_pid" "$conns" "$authorization_header_url" "Authorization: Bearer $user_token") || flavour_failed ;;
                *) echo "unknown flavour $flavour in BENCH_FLAVOURS" >&2; exit 2 ;;
            esac
            read -r a_rps a_p50 a_p99 a_p999 a_cpu a_err < <(run "$baseline_pid" "$conns" "http://127.0.0.1:$baseline_port/") || baseline_failed
            r_rps=$(ratio_to_mean "$rps" "$b_rps" "$a_rps")
            r_p99=$(ratio_to_mean "$p99" "$b_p99" "$a_p99")
            r_cpu=$(ratio_to_mean "$cpu" "$b_cpu" "$a_cpu")
            printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$flavour" "$conns" "$rps" "$p50" "$p99" "$p999" "$cpu" "$err" \
                "$(two "$r_rps")" "$(two "$r_p99")" "$(two "$r_cpu")"
            key="$flavour $conns"
            rps_ratios[$key]+="$r_rps " p99_ratios[$key]+="$r_p99 " cpu_ratios[$key]+="$r_cpu "
            b_rps=$a_rps b_p50=$a_p50 b_p99=$a_p99 b_p999=$a_p999 b_cpu=$a_cpu b_err=$a_err
            baseline_row
        done
    done
done
echo
if ((rounds == 1)); then
    echo "ratios to the baseline, one round:"
else
    echo "ratios to the baseline, mean of $rounds rounds (each round's in brackets):"
fi
echo
printf '| flavour | conns | req/s vs baseline | p99 vs baseline | CPU vs baseline |\n'
printf '|---|---|---|---|---|\n'
# mean_of "r1 r2 ..." -> "mean (r1, r2, ...)"
mean_of() {
    awk '{ s = 0; e = ""; for (i = 1; i <= NF; i++) { if ($i == "n/a") { print "n/a"; exit } s += $i; e = e (i > 1 ? ", " : "") sprintf("%.2f", $i) }
           printf "%.2f (%s)", s / NF, e }' <<<"$1"
}
for conns in "${connections[@]}"; do
    for flavour in "${flavours[@]}"; do
        key="$flavour $conns"
        printf '| %s | %s | %s | %s | %s |\n' "$flavour" "$conns" "$(mean_of "${rps_ratios[$key]}")" "$(mean_of "${p99_ratios[$key]}")" "$(mean_of "${cpu_ratios[$key]}")"
    done
done
echo
echo "tokenrelay RSS after the runs: $(awk '/VmRSS/ {print $2, $3}' "/proc/$relay_pid/status")"
echo "targets at 16 and 64 connections: req/s >= 0.90 x baseline; p99 <= 1.5 x; CPU/req <= 1.3 x"
