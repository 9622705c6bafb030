#!/usr/bin/env bash
# Engine memory across a stream of distinct pickup messages: N pickup files (.eml) of SIZE
# KiB each, every one a different message, delivered to Postfix's smtp-sink on loopback.
# Prints the engine's anonymous RSS when idle before the files land, its peak while they are
# delivered, and when idle again after every one is delivered. Bounded memory means "after"
# stays near "before", however large N is.
#
#   cargo build --release && bash benches/pickup_memory.sh [N] [SIZE_KIB]   # default 100000 20
#
# Needs smtp-sink (Debian's postfix package). Everything runs on loopback in a temporary
# directory; the engine and the sink it starts are stopped by their pid.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
SIZE_KIB=${2:-20}
BIN=${BIN:-target/release/spate}
SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
[ -x "$SINK" ] || { echo "smtp-sink not found (apt-get install postfix)" >&2; exit 1; }
work=$(mktemp -d)
engine=""
sink=""
cleanup() {
  [ -n "$engine" ] && kill -9 "$engine" 2>/dev/null
  [ -n "$sink" ] && kill -9 "$sink" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SINK" -u nobody -c 127.0.0.1:"$port" 1000 > "$work/sink.log" 2>&1 &
sink=$!

mkdir -p "$work/spool/tmp" "$work/spool/incoming"
cat > "$work/spate.toml" <<EOF
[admin]
listen = "127.0.0.1:0"
[engine]
shards = 2
data_dir = "$work/data"
[spool]
dir = "$work/spool"
[log]
dir = "$work/log"
[dns]
nameservers = ["127.0.0.1:9"]
[delivery]
retry_first = "1s"
[[routes]]
domain = "*.example"
hosts = ["127.0.0.1:$port"]
EOF
"$BIN" run -c "$work/spate.toml" 2> "$work/stderr" &
engine=$!
for _ in $(seq 1 600); do
  grep -q "spate: running" "$work/stderr" 2>/dev/null && break
  sleep 0.1
done
grep -q "spate: running" "$work/stderr" || { echo "engine did not start" >&2; cat "$work/stderr" >&2; exit 1; }
rss() { awk "/^$1:/ {print \$2}" "/proc/$engine/status"; }
sleep 1
before=$(rss RssAnon)

start=$(date +%s.%N)
python3 - "$work/spool" "$N" "$SIZE_KIB" <<'PY'
import os, sys
spool, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) * 1024
line = "x" * 76
for i in range(n):
    body = []
    filled = 0
    k = 0
    while filled < size:
        l = f"{i:08d} {k:05d} {line}\r\n"
        body.append(l)
        filled += len(l)
        k += 1
    msg = (f"x-sender: <bounces@sender.example>\r\nx-receiver: <u{i}@d{i % 50}.example>\r\n"
           f"From: <news@sender.example>\r\nTo: <u{i}@d{i % 50}.example>\r\n"
           f"Subject: message {i}\r\nMessage-ID: <m{i}@sender.example>\r\n\r\n" + "".join(body))
    tmp = os.path.join(spool, "tmp", f"m{i}.eml")
    with open(tmp, "w") as f:
        f.write(msg)
    os.rename(tmp, os.path.join(spool, "incoming", f"m{i}.eml"))
PY

peak=$before
delivered=0
deadline=$(( $(date +%s) + 3600 ))
while [ "$delivered" -lt "$N" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "not all delivered within an hour" >&2; exit 1; }
  kill -0 "$engine" 2>/dev/null || { echo "engine exited" >&2; cat "$work/stderr" >&2; exit 1; }
  now=$(rss RssAnon)
  [ "$now" -gt "$peak" ] && peak=$now
  delivered=$(grep -c '"type":"Delivery"' "$work/log/deliveries.jsonl" 2>/dev/null || true)
  sleep 1
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
# Idle again: connections close after 2 s, maintenance runs every second.
sleep 5
after=$(rss RssAnon)
kill -TERM "$engine"; wait "$engine" || true; engine=""

echo "pickup messages:          $N x $SIZE_KIB KiB, all distinct, delivered in ${elapsed%.*} s"
echo "RssAnon idle before:      $before KiB"
echo "RssAnon peak (1 s polls): $peak KiB"
echo "RssAnon idle after:       $after KiB"
awk -v b="$before" -v a="$after" 'BEGIN { printf "after - before:           %.1f MiB\n", (a - b) / 1024 }'
