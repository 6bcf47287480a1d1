#!/usr/bin/env bash
# RTMP ingest benchmark: castpoint's native RTMP -> UDP remux vs `ffmpeg -listen 1
# -i rtmp://... -c copy -f mpegts udp://...` on the same ~5 Mbit/s publish, same run.
# CPU %, RSS, latency (publisher send -> UDP arrival per video frame). Markdown table.
# Needs ffmpeg. Usage: bench/rtmp.sh [seconds of publishing, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --quiet --bin castpoint
SRC="${TMPDIR:-/tmp}/castpoint-bench-5mbit.flv"
if [ ! -s "$SRC" ]; then
  # 720p25 H.264 without B-frames (so PTS = DTS: each frame is matched by
  # its timestamp) at ~4.8 Mbit/s + AAC 128k, 25 s.
  ffmpeg -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=25 \
    -f lavfi -i sine=frequency=1000:sample_rate=48000 \
    -c:v libx264 -preset veryfast -bf 0 -g 50 -b:v 4.8M -maxrate 4.8M -bufsize 2M \
    -c:a aac -b:a 128k -t 25 -f flv "$SRC"
fi
exec python3 bench/rtmp.py --bin target/release/castpoint --flv "$SRC" --secs "${1:-15}"
