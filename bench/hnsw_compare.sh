#!/usr/bin/env bash
# kindex vs hnswlib on the same files, in the same run, on this machine.
# Datasets: every *.base.npy in $KINDEX_DATASETS (default ../shared/datasets)
# plus a seeded 200k x 128 Gaussian mixture generated once into bench/out/.
# Prints a markdown table with ratios (paste into bench/RESULTS.md).
#
#   bench/hnsw_compare.sh                 all datasets
#   SYNTH_N=50000 bench/hnsw_compare.sh   a smaller synthetic set
#   ONLY=synth bench/hnsw_compare.sh      only datasets whose name contains "synth"
#   VENV=/path/to/venv                    reuse an existing hnswlib venv
# The binary is built into $CARGO_TARGET_DIR (default target/).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASETS="${KINDEX_DATASETS:-../shared/datasets}"
OUT=bench/out
THREADS="${THREADS:-2}"
EF="${EF:-16,24,32,48,64,96,128,256}"
SYNTH_N="${SYNTH_N:-200000}"
ONLY="${ONLY:-}"
VENV="${VENV:-bench/.venv}"
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "hnswlib==0.8.0" "numpy<3" >&2
cargo build --release -p kindex-bench >&2
KB="${CARGO_TARGET_DIR:-target}/release/kindex-bench"

synth="$OUT/synth-$((SYNTH_N / 1000))k-128d"
if [ ! -f "$synth.gt_ids.npy" ]; then
  echo "generating $synth (seeded)" >&2
  $KB synth --out "$OUT" --n "$SYNTH_N" --dim 128 --metric l2 >&2
fi

run() { # name base query gt metric
  case "$1" in *"$ONLY"*) ;; *) return 0 ;; esac
  echo "== $1: hnswlib" >&2
  "$VENV/bin/python" bench/hnswlib_bench.py --name "$1" --base "$2" --query "$3" --gt "$4" \
    --metric "$5" --threads "$THREADS" --ef "$EF" | tee "$OUT/$1.hnswlib.jsonl" >&2
  echo "== $1: kindex" >&2
  $KB hnsw --name "$1" --base "$2" --query "$3" --gt "$4" --metric "$5" --threads "$THREADS" \
    --ef "$EF" --snapshot-dir "$OUT/snapshots" | tee "$OUT/$1.kindex.jsonl" >&2
}

for base in "$DATASETS"/*.base.npy; do
  [ -e "$base" ] || continue
  stem="${base%.base.npy}"
  metric=cosine
  grep -qi '"metric": *"l2"' "$stem.meta.json" 2>/dev/null && metric=l2
  run "$(basename "$stem")" "$base" "$stem.query.npy" "$stem.gt_ids.npy" "$metric"
done
run "$(basename "$synth")" "$synth.base.npy" "$synth.query.npy" "$synth.gt_ids.npy" l2

shopt -s nullglob
"$VENV/bin/python" bench/compare.py "$OUT"/*"$ONLY"*.jsonl
