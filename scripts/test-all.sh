#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the real third-party
# peers (Debian and PyPI packages through their normal clients), checks
# formatting and lints, runs the Rust tests (unit + end-to-end) and the
# Python interop tests against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

# Debian packages: libsrt (SRT FFI), the real peers (srt-live-transmit,
# ffmpeg/ffprobe, mbpoll, tshark, openssl for test_tls.py,
# GStreamer rtmp2sink for the RTMP ingest compatibility test), pkg-config,
# for test_packaging.py lintian, systemd (systemd-analyze) and man-db,
# mosquitto for test_mqtt.py, chromium + chromium-driver for the web console
# tests (test_console.py).
DEB_PKGS="pkg-config libsrt-openssl-dev srt-tools ffmpeg mbpoll tshark openssl gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly"
DEB_PKGS="$DEB_PKGS lintian systemd man-db mosquitto chromium chromium-driver"
# promtool (Debian's prometheus) checks packaging/prometheus/ (test_alarms.py).
DEB_PKGS="$DEB_PKGS prometheus"
missing=""
for p in $DEB_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq $missing >/dev/null
fi

echo "== installing PyPI packages"
python3 -m pip install -q --disable-pip-version-check -r tests/interop/requirements.txt 2>&1 \
  | grep -v -i "running pip as the 'root' user" || true

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test (unit + end-to-end)"
cargo test --workspace 2>&1

echo "== interop tests (pytest against the real binary)"
cargo build --quiet --bin castpoint
python3 -m pytest -q tests/interop

echo "== fuzzing (every untrusted decoder, 20 s each; docs/security.md)"
scripts/fuzz.sh 20
