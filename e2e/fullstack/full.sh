#!/usr/bin/env bash
# The full form of the full-stack tier, on demand (the README's test command runs the
# short form): every scenario with its long checks too (KINDEX_FULLSTACK_FULL=1, e.g.
# 14.2, the timed catch-up of a rebuilt 100,000 x 128-d replica), on release binaries
# (the timings are the ones users get; KINDEX_BIN_DIR=DIR takes prebuilt ones instead,
# e.g. the debug build), RUNS times in a row (default 3). Stops at the
# first failed run. Each run's output is kept in $KINDEX_FULL_LOGS (default
# /var/tmp/kindex-full.<date>/run-N.log, every check's own output in run-N/).
#
# Usage: sudo bash e2e/fullstack/full.sh [RUNS] [SCENARIO...]   (default: 3, all scenarios)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "full.sh: RUNS must be a positive number, got '$runs'" >&2; exit 2; }
shift $(($# > 0 ? 1 : 0))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kindex/target}"
export PATH="$HOME/.cargo/bin:$PATH"
logs=${KINDEX_FULL_LOGS:-/var/tmp/kindex-full.$(date +%Y%m%d-%H%M%S)}
mkdir -p "$logs"

bindir=${KINDEX_BIN_DIR:-}
if [[ -z $bindir ]]; then
  echo "full.sh: cargo build --release --workspace --bins ..." >&2
  cargo build --release --workspace --bins --locked >&2
  bindir=$CARGO_TARGET_DIR/release
fi
echo "full.sh: kindex binaries from $bindir" >&2

for i in $(seq 1 "$runs"); do
  t=$SECONDS
  echo "full.sh: run $i of $runs (log $logs/run-$i.log)" >&2
  set +e
  KINDEX_FULLSTACK_FULL=1 KINDEX_FULLSTACK_KEEP=1 KINDEX_BIN_DIR="$bindir" \
    bash e2e/fullstack/run.sh "$@" 2>&1 | tee "$logs/run-$i.log"
  rc=${PIPESTATUS[0]}
  set -e
  # Every check's own output (the timings of a passing check are only in there), then
  # the run directory goes (PV data of several GB).
  kept=$(sed -n 's/^fullstack: kept //p' "$logs/run-$i.log" | tail -n 1)
  if [[ $kept == /var/tmp/kindex-fullstack.* && -d $kept ]]; then
    mkdir -p "$logs/run-$i"
    cp "$kept"/check-*.out "$logs/run-$i/" 2>/dev/null || true
    rm -rf "$kept"
  fi
  echo "full.sh: run $i of $runs: $(grep -E '^[0-9]+ passed' "$logs/run-$i.log" | tail -n 1) in $((SECONDS - t))s" >&2
  ((rc == 0)) || { echo "full.sh: run $i failed; stopping" >&2; exit "$rc"; }
done
echo "full.sh: $runs runs in a row passed (logs in $logs)" >&2
