#!/usr/bin/env bash
# Transcode benchmark: castpoint's transcode mode (ffmpeg child fed on stdin)
# vs a plain ffmpeg command doing the same conversion (UDP in -> UDP out),
# per profile (720p and 360p libx264), from the same 10 Mbit/s 720p25 input.
# Prints a Markdown table: CPU % of one core, added latency, and ratios.
# Usage: bench/transcode.sh [seconds per run, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --quiet
SRC="${TMPDIR:-/tmp}/castpoint-bench-10mbit.ts"
if [ ! -s "$SRC" ]; then
  # The same input as bench/fanout.sh: 10 Mbit/s mux of 720p25 H.264 + AAC, 20 s.
  ffmpeg -loglevel error -y -f lavfi -i testsrc=size=1280x720:rate=25 -f lavfi -i sine \
    -c:v libx264 -preset ultrafast -b:v 8M -maxrate 8M -bufsize 2M -g 50 \
    -c:a aac -muxrate 10M -t 20 -f mpegts "$SRC"
fi
exec python3 bench/transcode.py --bin target/release/castpoint --source "$SRC" --secs "${1:-8}"
