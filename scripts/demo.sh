#!/usr/bin/env bash
# Runs castpoint on its embedded default configuration: the demo route fed by
# the built-in test source, HTTP on :8080, BACnet/IP on :47808, Modbus TCP on
# :5020. Installs the one system library the build links (libsrt) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
missing=""
for p in pkg-config libsrt-openssl-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing >/dev/null
fi
exec cargo run --release --bin castpoint -- run "$@"
