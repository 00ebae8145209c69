#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 600), one after
# the other at the lowest CPU priority, and prints per target: executions
# per second, corpus size and whether it crashed. Needs nightly Rust and
# cargo-fuzz (`cargo install cargo-fuzz --locked`). The corpus grows in
# fuzz/corpus/<target> (not checked in), starting from fuzz/seeds/<target>;
# a crash leaves its input in fuzz/artifacts/<target>/ and makes the script
# exit 1 after the other targets have run.
#   bench/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-600}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# No sanitizer: keyward forbids unsafe code, and uninstrumented code runs
# several times faster; debug assertions catch arithmetic overflow.
flags=(--sanitizer none --debug-assertions)
nice -n 19 cargo +nightly fuzz build "${flags[@]}"
failed=()
printf '%-26s %10s %8s %8s %s\n' target exec/s corpus runs result
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log=$(mktemp)
    status=ok
    nice -n 19 cargo +nightly fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=CRASH
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    printf '%-26s %10s %8s %8s %s\n' "$target" "${rate:-?}" "$corpus" "${runs:-?}" "$status"
    if [[ $status != ok ]]; then
        failed+=("$target")
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -5 | sed 's/^/    /'
    fi
    rm -f "$log"
done
if ((${#failed[@]})); then
    echo "crashed: ${failed[*]}"
    exit 1
fi
