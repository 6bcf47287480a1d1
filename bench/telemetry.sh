#!/usr/bin/env bash
# Cost of the telemetry sampler: CPU time of an idle castpoint (no routes)
# with telemetry on (the seed's default periods) vs off, over the same
# window, from /proc/<pid>/stat. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CASTPOINT_BIN:-target/release/castpoint}
[ -x "$BIN" ] || BIN=target/debug/castpoint
SECS=${SECS:-30}
tmp=$(mktemp -d)
on=""; off=""
# start() runs in a command substitution, so its processes are not jobs of
# this shell: stop them by pid.
trap 'kill $on $off 2>/dev/null || true; rm -rf "$tmp"' EXIT
printf '[telemetry]\nenabled = true\n' > "$tmp/on.toml"
printf '[telemetry]\nenabled = false\n' > "$tmp/off.toml"
start() { # config -> pid
  "$BIN" run --config "$1" --http 127.0.0.1:0 --bacnet 127.0.0.1:0 --modbus 127.0.0.1:0 --rtmp 127.0.0.1:0 \
    --data-dir "$tmp/$(basename "$1" .toml)" >/dev/null 2>&1 &
  echo $!
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
on=$(start "$tmp/on.toml"); off=$(start "$tmp/off.toml")
sleep 3   # start-up and the first samples are not the steady state
a_on=$(ticks "$on"); a_off=$(ticks "$off")
sleep "$SECS"
b_on=$(ticks "$on"); b_off=$(ticks "$off")
hz=$(getconf CLK_TCK)
pct() { awk -v t="$1" -v hz="$hz" -v s="$SECS" 'BEGIN{printf "%.3f", t*100/hz/s}'; }
on_pct=$(pct $((b_on - a_on))); off_pct=$(pct $((b_off - a_off)))
echo "| castpoint idle, ${SECS} s | CPU % of one core |"
echo "|---|---|"
echo "| telemetry on (default periods) | $on_pct |"
echo "| telemetry off | $off_pct |"
echo "| sampler cost | $(awk -v a="$on_pct" -v b="$off_pct" 'BEGIN{printf "%.3f", a-b}') |"
