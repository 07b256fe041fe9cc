-- wrk script: print one machine-readable line with the figures bench/load.sh tabulates.
function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format("RESULT requests=%d errors=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
