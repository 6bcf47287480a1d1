#!/usr/bin/env bash
# RTSP pull benchmark: castpoint's native RTSP -> UDP remux vs `ffmpeg -rtsp_transport tcp
# -i rtsp://... -c copy -f mpegts udp://...`, both pulling the same simulated camera
# (castpoint-sim rtsp-camera, 4 Mbit/s H.264 + AAC) in the same run. CPU %, RSS, latency
# (camera send -> UDP arrival per picture, from SEI stamps). Markdown table.
# Needs ffmpeg. Usage: bench/rtsp.sh [seconds, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --quiet -p castpoint -p castpoint-simulators --bin castpoint --bin rtsp-camera
exec python3 bench/rtsp.py --bin target/release/castpoint --camera target/release/rtsp-camera --secs "${1:-15}"
