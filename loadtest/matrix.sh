#!/usr/bin/env bash
# The standard scenario's variants side by side with blast (no Postfix: see `compare` for it):
# template sizes, shard counts, and queue sizes from 10,000 to 1,000,000 recipients.
#
#   cargo build --release --workspace && bash loadtest/matrix.sh [templates|shards|scale|all]
#
# Everything runs on loopback; reports under target/loadtest/matrix/. Output: a markdown table
# (docs/benchmarks.md quotes it).
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
BIN=target/release/spate-loadtest
echo "| variant | blast msg/s | spate msg/s | spate / blast | first delivery ms | engine CPU µs/msg | engine peak RSS (anon) MiB | receipts |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
row() { # label, then compare options
  local label=$1; shift
  local out=target/loadtest/matrix/run
  "$BIN" compare standard --no-postfix --out "$out" "$@" > /dev/null
  python3 - "$label" "$out/compare.json" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
c = json.load(open(path))
b, s = c["blast"], c["spate"]
ok = "all {} once".format(s["received_unique"]) if s["missing"] == 0 and s["duplicates"] == 0 and s["received_unique"] == s["delivered"] else "INCOMPLETE"
print("| {} | {:.0f} | {:.0f} | {:.2f} | {:.1f} | {:.1f} | {:.0f} ({:.0f}) | {} |".format(
    label, b["delivered_per_s"], s["delivered_per_s"], s["delivered_per_s"] / b["delivered_per_s"],
    s["first_delivery_ms"], s["engine_cpu_us_per_message"], s["engine_peak_rss_bytes"] / 2**20,
    s["engine_peak_rss_anon_bytes"] / 2**20, ok))
PY
}
if [[ $WHAT == templates || $WHAT == all ]]; then
  row "200k, 1 KiB template" --template-bytes 1024
  row "200k, 10 KiB template" --template-bytes 10240
  row "200k, 100 KiB template" --template-bytes 102400
fi
if [[ $WHAT == shards || $WHAT == all ]]; then
  row "200k, 10 KiB, 1 shard" --shards 1
  row "200k, 10 KiB, 2 shards" --shards 2
fi
if [[ $WHAT == scale || $WHAT == all ]]; then
  for n in 10000 100000 1000000; do
    row "$n recipients, 10 KiB" --recipients "$n"
  done
fi
