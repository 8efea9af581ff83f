#!/usr/bin/env bash
# Bulk load through the Python client vs the Rust CLI (`kindex upsert --file`):
# docs-minilm-30k (30,000 x 384 float32, cosine) into one standalone release
# kindex-node, the loads interleaved in one script run (rounds rotate the order),
# each with its own id prefix so every load inserts new points, and the node's
# indexing queue drained between loads so each starts from the same quiet state.
#
#   bench/python_bulk.sh [rounds] [file]       KINDEX_BIN_DIR=dir: use those binaries
#
# Prints one JSON line per load and a summary; numbers go to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
FILE=${2:-/work/shared/datasets/docs-minilm-30k.base.npy}
[ -f "$FILE" ] || FILE="../shared/datasets/docs-minilm-30k.base.npy"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kindex/target}
if [ -n "${KINDEX_BIN_DIR:-}" ]; then
  BIN=$KINDEX_BIN_DIR  # kindex-node and kindex already built (e.g. to try the script)
else
  cargo build --release --locked -q -p kindex-node -p kindex
  BIN=$CARGO_TARGET_DIR/release
fi

# shellcheck source=scripts/python-env.sh
. scripts/python-env.sh
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$WORK" "${kindex_work:-}"; }
trap cleanup EXIT
kindex_python_env >&2

IP=127.0.91.1
"$BIN/kindex-node" --data-dir "$WORK/data" --listen $IP --dimension 384 --metric cosine \
  >"$WORK/node.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do curl -fs "http://$IP:7080/readyz" >/dev/null && break; sleep 0.1; done

queued() { curl -fs "http://$IP:7080/metrics" | awk '/^kindex_index_queue_depth/ {v = $2} END {print v + 0}'; }
drain() {
  for _ in $(seq 1 1200); do
    q=$(queued); [ "${q:-0}" = "0" ] && return 0; sleep 0.5
  done
  echo "indexing queue did not drain in 600 s" >&2; return 1
}

load() { # kind round
  local kind=$1 r=$2 t0 t1 out
  drain
  t0=$(date +%s.%N)
  case $kind in
    cli) out=$("$BIN/kindex" --addr "http://$IP:7070" -o json upsert --file "$FILE" --id-prefix "cli$r-") ;;
    py2) out=$("$vpy" bench/python_bulk.py --addr "$IP:7070" --file "$FILE" --id-prefix "py2$r-" --concurrency 2) ;;
    py1) out=$("$vpy" bench/python_bulk.py --addr "$IP:7070" --file "$FILE" --id-prefix "py1$r-" --concurrency 1) ;;
  esac
  t1=$(date +%s.%N)
  echo "$out" | "$vpy" -c "import json,sys; d=json.load(sys.stdin); d.update(kind='$kind', round=$r, wall=$t1-$t0); print(json.dumps(d))"
}

echo "load before: $(uptime)" >&2
kinds=(cli py2 py1)
for r in $(seq 1 "$ROUNDS"); do
  for i in 0 1 2; do
    load "${kinds[$(( (i + r - 1) % 3 ))]}" "$r"
  done
done | tee "$WORK/results.jsonl"
echo "load after: $(uptime)" >&2
drain
curl -fs "http://$IP:7080/v1/indexes/default/count"; echo

"$vpy" - "$WORK/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["kind"], []).append(r)
med = {k: statistics.median(x["rows"] / x["wall"] for x in v) for k, v in by.items()}
inner = {k: statistics.median(x["vectorsPerSecond"] for x in v) for k, v in by.items()}
for k in sorted(by):
    print(f"{k}: median {med[k]:.0f} vectors/s wall-clock (whole process), {inner[k]:.0f} vectors/s load loop, n={len(by[k])}")
for k in ("py2", "py1"):
    if k in med:
        print(f"ratio {k}/cli: {med[k] / med['cli']:.2f} wall-clock, {inner[k] / inner['cli']:.2f} load loop")
PY
