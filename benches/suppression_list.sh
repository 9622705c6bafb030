#!/usr/bin/env bash
# Writes a suppression file of N addresses (none of them a demo recipient), for measuring
# what a large list costs: bash benches/suppression_list.sh 10000000 /tmp/suppressed.txt
set -euo pipefail
n=${1:?entries}
out=${2:?file}
awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "user%d@listed%d.example\n", i, i % 5000 }' > "$out"
echo "$out: $n entries, $(du -m "$out" | cut -f1) MiB"
