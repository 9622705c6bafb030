#!/usr/bin/env bash
# Messages per second the SMTP gateway accepts durably (250 after the group commit), with
# Postfix's smtp-source as the client (an SMTP client not written here; by default with -d,
# each session keeping its connection for all its messages) and delivery paused.
# SPATE_SHARDS sets the shard count (default 2); SMTP_SOURCE_FLAGS replaces -d.
#
# usage: bash benches/gateway_accept.sh [MESSAGES] [SIZE_BYTES] [SESSIONS...]
# Needs target/release/spate (cargo build --release) and smtp-source (Debian's postfix).
# Everything stays on 127.0.0.1; the engine started here is stopped here, by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-20000}
size=${2:-10240}
shift 2 || true
sessions=("${@:-20}")
port=${GATEWAY_PORT:-2587}
# -d: each session keeps its connection for all its messages; SMTP_SOURCE_FLAGS= (empty)
# opens a connection per message instead.
source_flags=${SMTP_SOURCE_FLAGS--d}
dir=$(mktemp -d)
trap 'kill "$engine" 2>/dev/null || true; wait "$engine" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/spate.toml" <<TOML
[admin]
listen = "127.0.0.1:0"
[engine]
shards = ${SPATE_SHARDS:-2}
data_dir = "$dir/data"
[spool]
dir = "$dir/spool"
[log]
dir = "$dir/log"
[delivery]
paused = true
[dns]
nameservers = ["127.0.0.1:9"]
[[listeners]]
listen = "127.0.0.1:$port"
tls = "none"
relay_networks = ["127.0.0.1/32"]
TOML
target/release/spate run -c "$dir/spate.toml" 2>"$dir/engine.log" &
engine=$!
for _ in $(seq 1 100); do
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
ticks=$(getconf CLK_TCK)
for s in "${sessions[@]}"; do
  cpu0=$(awk '{print $14+$15}' "/proc/$engine/stat")
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086 # the flags are words
  /usr/sbin/smtp-source $source_flags -s "$s" -m "$messages" -l "$size" -f sender@acme.example -t rcpt@one.test "127.0.0.1:$port"
  t1=$(date +%s.%N)
  cpu1=$(awk '{print $14+$15}' "/proc/$engine/stat")
  awk -v s="$s" -v m="$messages" -v t0="$t0" -v t1="$t1" -v c="$((cpu1 - cpu0))" -v hz="$ticks" \
    'BEGIN { e = t1 - t0; printf "sessions %d: %d messages in %.2f s, %.0f msg/s, engine CPU %.0f us per message\n", s, m, e, m / e, c / hz * 1e6 / m }'
done
echo "queued (Reception records): $(grep -c '"Reception"' "$dir/log/deliveries.jsonl")"
