#!/usr/bin/env bash
# Fuzzes every decoder of untrusted input (fuzz/, docs/security.md
# "Untrusted input") for a bounded time each; exits non-zero on the first
# crash, leaving the input in fuzz/artifacts/<target>/.
# Usage: scripts/fuzz.sh [seconds per target (default 20)] [target...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-20}"
[ $# -gt 0 ] && shift
# cargo-fuzz needs -Zsanitizer; the toolchain here is stable, and
# RUSTC_BOOTSTRAP lets it accept the flag (measured working on rustc 1.95).
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
cargo fuzz build
for t in "${targets[@]}"; do
  echo "== fuzz $t (${secs}s)"
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  # New inputs go to corpus/<t> (ignored by git); the committed seeds are
  # only read. -timeout: an input taking 10 s is a hang, i.e. a failure.
  log="artifacts/$t.log"
  mkdir -p artifacts
  if ! cargo fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$secs" -max_len=16384 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $t FAILED (input in fuzz/artifacts/$t/, log in fuzz/$log)"
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^Done" "$log" || true
done
