#!/usr/bin/env bash
# Fan-out benchmark: one 10 Mbit/s TS input to N = 1, 10, 50, 100 UDP outputs
# through castpoint, beside N srt-live-transmit and N `ffmpeg -c copy` relays
# (peers capped by default at 50 and 10 processes: ffmpeg relays take ~70 MiB
# each); then N = 1, 10, 50 srt-live-transmit callers of one castpoint SRT
# listener output beside N srt-live-transmit UDP->SRT relays (one caller
# each). Prints Markdown tables. Needs ffmpeg and srt-tools.
# Usage: bench/fanout.sh [UDP N list, default 1,10,50,100] [seconds per run, default 8]
#                        [SRT N list, default 1,10,50; "" skips]
# BENCH_UDP_COALESCE sets the route's udp_coalesce (default: castpoint's own
# default, "auto"); e.g. BENCH_UDP_COALESCE=off for the unbatched figures.
# BENCH_REPS=R runs every row R times (castpoint and peers interleaved) and
# prints medians: a single output's few % of a core moves +-30% run to run.
# An empty UDP N list ("") skips the UDP table.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --quiet
SRC="${TMPDIR:-/tmp}/castpoint-bench-10mbit.ts"
if [ ! -s "$SRC" ]; then
  # A constant 10 Mbit/s mux (null-padded) of 720p25 H.264 + AAC, 20 s.
  ffmpeg -loglevel error -y -f lavfi -i testsrc=size=1280x720:rate=25 -f lavfi -i sine \
    -c:v libx264 -preset ultrafast -b:v 8M -maxrate 8M -bufsize 2M -g 50 \
    -c:a aac -muxrate 10M -t 20 -f mpegts "$SRC"
fi
exec python3 bench/fanout.py --bin target/release/castpoint --source "$SRC" \
  --n "${1-1,10,50,100}" --secs "${2:-8}" --srt-n "${3-1,10,50}" \
  --coalesce "${BENCH_UDP_COALESCE:-}" --reps "${BENCH_REPS:-1}"
