#!/usr/bin/env bash
# Search fan-out: the same seeded data (default 100k x 128-d) in an index of 1 shard and of
# 4 shards (1 replica each, release kindex-node processes on 127.0.0.1), the same search
# load through one node, QPS and p50/p99 side by side with the ratio. Same script run, same
# machine, back to back.
#   bench/fanout.sh [points] [seconds] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/.."
POINTS=${1:-100000}
SECONDS_=${2:-20}
CONC=${3:-4}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kindex/target}
cargo build --release --locked -q -p kindex-node -p kindex-bench
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

run() { # shards
  local shards=$1
  local base=$((17000 + shards * 100)) others waits=""
  PIDS=()
  echo '{"indexingThreads": 2}' >"$WORK/runtime.json"
  for s in $(seq 0 $((shards - 1))); do
    # Admin (Status) is on its own port: gRPC g, HTTP g+1, Admin g+2.
    waits+="${waits:+,}http://127.0.0.1:$((base + s * 3 + 2))"
  done
  for s in $(seq 0 $((shards - 1))); do
    others=""
    for o in $(seq 0 $((shards - 1))); do
      [ "$o" = "$s" ] && continue
      others+="${others:+;}$o=127.0.0.1:$((base + o * 3))|127.0.0.1:$((base + o * 3 + 2))"
    done
    local g=$((base + s * 3))
    "$BIN/kindex-node" --data-dir "$WORK/s$shards-$s" --dimension 128 --metric l2 \
      --shards "$shards" --shard "$s" --grpc-port "$g" --http-port $((g + 1)) --admin-port $((g + 2)) \
      --runtime-config "$WORK/runtime.json" ${others:+--shard-addrs "$others"} \
      >"$WORK/s$shards-$s.log" 2>&1 &
    PIDS+=($!)
  done
  for s in $(seq 0 $((shards - 1))); do
    for _ in $(seq 1 300); do
      curl -fs "http://127.0.0.1:$((base + s * 3 + 1))/readyz" >/dev/null && break
      sleep 0.1
    done
  done
  "$BIN/kindex-bench" search-load --addr "http://127.0.0.1:$base" --dim 128 --load "$POINTS" \
    --seconds "$SECONDS_" --concurrency "$CONC" --wait-indexed "$waits" --label "shards=$shards"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

echo "load: $(uptime)" >&2
ONE=$(run 1 | tail -1)
FOUR=$(run 4 | tail -1)
echo "$ONE"
echo "$FOUR"
python3 - "$ONE" "$FOUR" <<'PY'
import json, sys
one, four = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"bench": "fanout_ratio", "qps_4_over_1": round(four["qps"] / one["qps"], 3),
                  "p99_4_over_1": round(four["p99_ms"] / one["p99_ms"], 3)}))
PY
