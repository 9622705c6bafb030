#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after the other, with one
# libFuzzer job; exits non-zero if any target finds a crash, a hang or a memory blow-up.
#
#   fuzz/run-all.sh                  # CI: 5 s per target, after building them all
#   fuzz/run-all.sh 60 session       # one target for a minute
#   fuzz/run-all.sh 3600             # long run: an hour per target (12 hours in all)
#   FUZZ_SANITIZER=address fuzz/run-all.sh 3600   # with AddressSanitizer
#
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take the nightly flags that
# cargo-fuzz passes (coverage instrumentation, sanitizers). cargo-fuzz is installed if
# missing. No sanitizer by default: the code under test is safe Rust (overflow checks and
# debug assertions stay on, and the targets count allocations themselves), and without
# AddressSanitizer the build takes half the time and the targets run 3 to 10 times faster.
# The build is most of a short run's cost (see fuzz/README.md for the figures).
#
# Each target's corpus grows in fuzz/corpus/<target>/ (not committed) from the seeds in
# fuzz/seeds/<target>/, so a long run carries on where the last one stopped. A crash is saved
# in fuzz/artifacts/<target>/; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# and, once fixed, copy it to fuzz/regressions/<target>/ so that `cargo test` in fuzz/ replays
# it for ever. Logs are in fuzz/logs/<target>.log.
set -euo pipefail

seconds="${1:-5}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

build_started=$(date +%s)
if [ "$#" -gt 0 ]; then
    targets=("$@")
    for t in "${targets[@]}"; do
        cargo fuzz build --sanitizer "$sanitizer" "$t"
    done
else
    mapfile -t targets < <(cargo fuzz list)
    cargo fuzz build --sanitizer "$sanitizer"
fi
echo "built ${#targets[@]} targets in $(($(date +%s) - build_started)) s"

# The dictionary each target's input format benefits from.
dict_for() {
    case "$1" in
        reply | session) echo fuzz/dicts/smtp.dict ;;
        batch | batch_lines | pickup) echo fuzz/dicts/jsonl.dict ;;
        template) echo fuzz/dicts/template.dict ;;
        *) ;;
    esac
}

mkdir -p fuzz/logs
failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    args=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
    dict="$(dict_for "$t")"
    [ -n "$dict" ] && args+=(-dict="$dict")
    log="fuzz/logs/$t.log"
    if cargo fuzz run --sanitizer "$sanitizer" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
        -- "${args[@]}" >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        echo "ok     $t: ${runs:-?} runs, ${rate:-?} exec/s"
    else
        failed+=("$t")
        echo "FAILED $t (log: $log)"
        grep -m 5 -E 'panicked at|^SUMMARY|ERROR: libFuzzer|Test unit written' "$log" || tail -n 20 "$log"
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "targets that found something: ${failed[*]}"
    exit 1
fi
