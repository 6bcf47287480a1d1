#!/usr/bin/env bash
# run-all.sh: builds the release binaries once, then runs every benchmark
# script bench/<part>.sh / bench/<part>.py that exists, each under its own
# time limit, the whole run under BENCH_TOTAL_S (default 570 s < 10 min).
# Each script prints its own Markdown table; this prints a summary last.
#
#   bench/run-all.sh                 # everything
#   BENCH_ONLY=modbus bench/run-all.sh   # scripts whose name contains "modbus"
#   BENCH_NO_BUILD=1 ...             # use the binaries already in target/release
set -u
cd "$(dirname "$0")/.."
TOTAL=${BENCH_TOTAL_S:-570}
PER=${BENCH_PER_S:-150}
BUILD_LIMIT=${BENCH_BUILD_S:-1800}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
summary=()

if [ -z "${BENCH_NO_BUILD:-}" ]; then
    echo "## build (cargo build --release, limit ${BUILD_LIMIT}s)"
    if timeout "$BUILD_LIMIT" cargo build --release --quiet --bins -p castpoint -p castpoint-simulators \
        && timeout "$BUILD_LIMIT" cargo build --release --quiet \
            --manifest-path bench/modbus_load/Cargo.toml --target-dir target/bench-modbus; then
        summary+=("| build | ok | $(elapsed) |")
    else
        summary+=("| build | FAILED or timed out | $(elapsed) |")
    fi
    # The 10-minute budget is for the benchmarks; a clean release build on
    # 2 cores takes longer than that by itself.
    start=$(date +%s)
fi

for f in bench/*.sh bench/*.py; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    [ "$name" = "run-all.sh" ] && continue
    # X.py beside X.sh is that script's helper, not a benchmark of its own.
    case "$f" in *.py) [ -e "${f%.py}.sh" ] && continue ;; esac
    if [ -n "${BENCH_ONLY:-}" ] && [[ "$name" != *"$BENCH_ONLY"* ]]; then
        continue
    fi
    left=$(( TOTAL - $(elapsed) ))
    lim=$(( left < PER ? left : PER ))
    if [ "$lim" -lt 15 ]; then
        summary+=("| $name | skipped (time budget spent) | 0 |")
        continue
    fi
    echo
    echo "## $name (limit ${lim}s)"
    t0=$(date +%s)
    case "$f" in
        *.sh) timeout --kill-after=5 "$lim" bash "$f" ;;
        *.py) timeout --kill-after=5 "$lim" python3 "$f" $( [ "$name" = modbus.py ] && echo --no-build ) ;;
    esac
    rc=$?
    status=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="timed out"
    [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed (rc $rc)"
    summary+=("| $name | $status | $(( $(date +%s) - t0 )) |")
done

echo
echo "## summary (total $(elapsed) s)"
echo "| script | status | seconds |"
echo "|---|---|---|"
for r in "${summary[@]}"; do echo "$r"; done
