-- latency.lua - wrk script for plain GETs: prints the latency percentiles the report needs
-- (wrk's own --latency table has no p99.9). purchase.lua prints the same line.
function done(summary, latency, requests)
  io.write(string.format("latency_us: %d %d %d\n", latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9)))
end
