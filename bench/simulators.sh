#!/usr/bin/env bash
# simulators.sh: calibrates the measuring tools themselves. ts-source sends
# 10 Mbit/s (stamped) to viewers directly and through named peers: one
# srt-live-transmit UDP relay, one `ffmpeg -c copy` relay, SRT with
# srt-tokio (ts-source) into libsrt, and libsrt on both ends. Prints CPU % and
# peak RSS of each process (GNU time) and the viewer's latency percentiles,
# so the floor the harness adds to every other benchmark is known.
# Loopback only, ephemeral ports. ~40 s.
set -u
cd "$(dirname "$0")/.."
BIN=${SIM_BIN:-target/release}
SECS=${BENCH_SECS:-5}
RATE=${BENCH_RATE:-10M}
for b in ts-source viewers; do
    [ -x "$BIN/$b" ] || cargo build --release --quiet -p castpoint-simulators --bins
done
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
timed() { # timed NAME CMD... : runs CMD under GNU time, stats to $TMP/NAME.time
    local n=$1; shift
    /usr/bin/time -f "%P %M" -o "$TMP/$n.time" "$@"
}
# The last line holds "CPU% maxRSS-KiB" (a line before it may say the
# command was stopped by its timeout, which is how relays end).
cpu() { tail -1 "$TMP/$1.time" 2>/dev/null | awk '{gsub("%","",$1); print $1}'; }
rss() { tail -1 "$TMP/$1.time" 2>/dev/null | awk '{printf "%.1f", $2/1024}'; }
vstat() { # vstat FILE KEY
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))[0]; v=r.get(sys.argv[2]); print("-" if v is None else (f"{v:.1f}" if isinstance(v,float) else v))' "$1" "$2" 2>/dev/null || echo "-"
}
rows=()
run_case() { # run_case LABEL SOURCE_URL VIEW_URL [relay cmd...]
    local label=$1 src=$2 view=$3; shift 3
    local vsecs; vsecs=$(python3 -c "print($SECS + 2)")
    timed "viewers" "$BIN/viewers" "$view" -d "$vsecs" --json > "$TMP/v.json" 2>/dev/null &
    local vp=$!
    local rp="" rt0
    if [ $# -gt 0 ]; then
        "$@" >/dev/null 2>&1 &
        rp=$!
        rt0=$(date +%s.%N)
    fi
    sleep 0.5
    timed "ts-source" "$BIN/ts-source" "$src" --bitrate "$RATE" --duration "$SECS" >/dev/null 2>&1
    wait $vp
    local rcpu="-" rrss="-"
    if [ -n "$rp" ]; then
        # The relay's own CPU time and peak RSS from /proc, read before it is stopped.
        read -r rcpu rrss < <(python3 - "$rp" "$rt0" <<'PY'
import os, sys, time
pid, t0 = sys.argv[1], float(sys.argv[2])
f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
ticks = int(f[11]) + int(f[12])
hwm = next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
print(f"{100 * ticks / os.sysconf('SC_CLK_TCK') / (time.time() - t0):.1f} {int(hwm) / 1024:.1f}")
PY
)
        # ffmpeg blocked on a silent UDP input ignores SIGTERM: KILL after 1 s.
        kill "$rp" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$rp" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$rp" 2>/dev/null
        wait "$rp" 2>/dev/null
    fi
    rows+=("| $label | $(cpu ts-source) | $(rss ts-source) | $rcpu | $rrss | $(cpu viewers) | $(vstat "$TMP/v.json" bitrate_mbps) | $(vstat "$TMP/v.json" cc_errors) | $(vstat "$TMP/v.json" missing_chunks) | $(vstat "$TMP/v.json" latency_ms_p50) | $(vstat "$TMP/v.json" latency_ms_p99) | $(vstat "$TMP/v.json" latency_ms_max) |")
}

A=$(port); run_case "direct UDP (floor)" "udp://127.0.0.1:$A" "udp://127.0.0.1:$A"
A=$(port); B=$(port)
run_case "UDP relay: srt-live-transmit" "udp://127.0.0.1:$A" "udp://127.0.0.1:$B" \
    srt-live-transmit -q "udp://127.0.0.1:$A" "udp://127.0.0.1:$B"
A=$(port); B=$(port)
run_case "UDP relay: ffmpeg -c copy (SEI stamps)" "udp://127.0.0.1:$A" "udp://127.0.0.1:$B" \
    ffmpeg -v error -nostdin -fflags nobuffer -analyzeduration 1000000 -probesize 1000000 -i "udp://127.0.0.1:$A" -map 0 -c copy -f mpegts "udp://127.0.0.1:$B?pkt_size=1316"
A=$(port); B=$(port)
run_case "SRT srt-tokio -> libsrt (120 ms)" "srt://127.0.0.1:$A" "udp://127.0.0.1:$B" \
    srt-live-transmit -q "srt://:$A" "udp://127.0.0.1:$B"
# libsrt on both ends: UDP -> slt (SRT caller) -> slt (SRT listener) -> UDP.
A=$(port); B=$(port); C=$(port)
srt-live-transmit -q "srt://:$B" "udp://127.0.0.1:$C" >/dev/null 2>&1 &
LIST=$!
run_case "SRT libsrt -> libsrt (120 ms)" "udp://127.0.0.1:$A" "udp://127.0.0.1:$C" \
    srt-live-transmit -q "udp://127.0.0.1:$A" "srt://127.0.0.1:$B"
kill $LIST 2>/dev/null; sleep 0.2; kill -9 $LIST 2>/dev/null; wait $LIST 2>/dev/null

echo "### simulators: ts-source -> [peer] -> viewers, $RATE, ${SECS}s, loopback"
echo
echo "| path | ts-source CPU % | ts-source RSS MiB | relay CPU % | relay RSS MiB | viewers CPU % | recv Mbit/s | CC err | lost chunks | lat p50 ms | lat p99 ms | lat max ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do echo "$r"; done
echo
echo "CPU % is of one core over each process's lifetime; relay = the named peer (for libsrt -> libsrt, the"
echo "UDP->SRT caller; the SRT listener -> UDP side is not counted). ffmpeg re-muxes, so its latency comes"
echo "from the per-picture SEI stamps, and it drops the null packets (lower Mbit/s)."
