#!/usr/bin/env bash
# The runtime settings of [engine], one at a time against the defaults, through the harness:
# throughput, first delivery, latency and engine CPU per delivered message, RUNS runs each.
#
#   cargo build --release --workspace && bash loadtest/tuning.sh [SCENARIO] [RUNS] [RECIPIENTS]
#
# Everything runs on loopback (simulated providers and DNS); output: a markdown table on stdout
# (docs/tuning.md quotes it) and each run's report under target/loadtest/tuning/.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${1:-standard}
RUNS=${2:-3}
RECIPIENTS=${3:-100000}
BIN=target/release/spate-loadtest
settings=(
  ''
  'spin_before_park = "50us"'
  'spin_before_park = "1ms"'
  'preempt_timer = "10ms"'
  'preempt_timer = "500ms"'
  'delivery_shares = 1000
intake_shares = 1000
background_shares = 1000'
  'delivery_shares = 100
intake_shares = 1000'
  'io_memory = "512KiB"'
)
echo "| setting | delivered/s (runs) | first delivery ms | p50 / p99 latency ms | engine CPU µs/msg |"
echo "| --- | --- | --- | --- | --- |"
for s in "${settings[@]}"; do
  rates=() firsts=() lats=() cpus=()
  for r in $(seq 1 "$RUNS"); do
    out=target/loadtest/tuning/run
    "$BIN" run "$SCENARIO" --recipients "$RECIPIENTS" --engine-keys "$s" --out "$out" > /dev/null
    read -r rate first p50 p99 cpu < <(python3 -c '
import json,sys
r=json.load(open(sys.argv[1]))
print("%.0f %.1f %.0f %.0f %.1f" % (r["delivered_per_s"], r["first_delivery_ms"], r["latency"]["p50_ms"], r["latency"]["p99_ms"], r["engine_cpu_us_per_message"]))
' "$out/report.json")
    rates+=("$rate") firsts+=("$first") lats+=("$p50/$p99") cpus+=("$cpu")
  done
  label=${s:-defaults}
  echo "| ${label//$'\n'/; } | ${rates[*]} | ${firsts[*]} | ${lats[*]} | ${cpus[*]} |"
done
