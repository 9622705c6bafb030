#!/usr/bin/env bash
# Engine memory per queued recipient: anonymous RSS of `spate run` with N recipients recovered
# into its index, minus the same engine on an empty queue, divided by N.
#
#   cargo build --release && bash benches/rss_per_recipient.sh [N]
#
# Sends nothing anywhere (delivery paused, DNS on a closed loopback port) and cleans up:
# everything lives in a temporary directory, and the engines it starts are stopped by their pid.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
BIN=target/release/spate
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

config() { # $1 = base dir
  # Delivery paused and DNS on a closed loopback port: this measures memory, and must never
  # send anything (DNS queries included) off this machine.
  printf '[engine]\nshards = 2\ndata_dir = "%s/data"\n[delivery]\npaused = true\n[dns]\nnameservers = ["127.0.0.1:9"]\n[spool]\ndir = "%s/spool"\n[log]\ndir = "%s/log"\n[admin]\nlisten = "127.0.0.1:0"\n' "$1" "$1" "$1"
}

rss_anon_kib() { # $1 = base dir; starts the engine, reads RssAnon once it is ready, stops it
  config "$1" > "$1/spate.toml"
  "$BIN" run -c "$1/spate.toml" 2> "$1/stderr" &
  pid=$!
  for _ in $(seq 1 600); do
    grep -q "spate: running" "$1/stderr" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "spate: running" "$1/stderr" || { echo "engine did not start" >&2; exit 1; }
  local kib
  kib=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true; pid=""
  echo "$kib"
}

mkdir -p "$work/empty"
empty=$(rss_anon_kib "$work/empty")

# Queue N recipients with the demo, keeping its files, then point an engine at them.
out=$("$BIN" demo --recipients "$N" --keep 2>&1)
demo_dir=$(echo "$out" | sed -n 's/^demo files kept in //p')
queued=$(echo "$out" | sed -n 's/^Queued \([0-9]*\) recipients.*/\1/p')
mv "$demo_dir" "$work/full"
full=$(rss_anon_kib "$work/full")

echo "recipients queued:      $queued"
echo "RssAnon, empty queue:   $empty KiB"
echo "RssAnon, full queue:    $full KiB"
awk -v e="$empty" -v f="$full" -v n="$queued" \
  'BEGIN { printf "bytes per recipient:    %.1f\n", (f - e) * 1024 / n }'
