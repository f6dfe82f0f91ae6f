#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time each and prints a summary:
# executions, corpus size and whether a crash was found. Not part of the default test run.
#
#   scripts/fuzz.sh [-t SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The toolchain may be stable: RUSTC_BOOTSTRAP
# lets cargo-fuzz pass its nightly-only flags. Builds into the shared target dir. Crashes are
# kept in fuzz/artifacts/TARGET/; each one must become a regression test (see docs/SECURITY.md).
set -euo pipefail

seconds=60
while getopts "t:" opt; do
    case "$opt" in
        t) seconds="$OPTARG" ;;
        *) echo "usage: $0 [-t SECONDS] [TARGET...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:-$root/target}"
# No sanitizer: the crate forbids unsafe code, and what a fuzzer finds here is a panic, an
# endless loop or an allocation blow-up, which libFuzzer catches without ASan at a fraction
# of the build and run cost. Set FUZZ_SANITIZER=address to build with ASan anyway.
sanitizer="${FUZZ_SANITIZER:-none}"
# Release code with debug assertions and overflow checks on.
opts=(-O -a -s "$sanitizer" --target-dir "$target_dir")

if [ "$#" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
else
    targets=("$@")
fi

mkdir -p logs
echo "building ${#targets[@]} fuzz targets (log: fuzz/logs/build.log)" >&2
cargo fuzz build "${opts[@]}" >logs/build.log 2>&1 || { tail -30 logs/build.log >&2; exit 1; }
printf '%-16s %12s %8s %10s  %s\n' target executions exec/s corpus result
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="logs/$target.log"
    result=ok
    # -rss_limit_mb and -malloc_limit_mb turn an allocation blow-up into a finding;
    # -timeout turns a hang into one.
    if ! cargo fuzz run "${opts[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        result="CRASH (see fuzz/$log and fuzz/artifacts/$target/)"
        status=1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    printf '%-16s %12s %8s %10s  %s\n' "$target" "${runs:-?}" "${rate:-?}" "$corpus" "$result"
done
exit "$status"
