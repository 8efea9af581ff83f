#!/usr/bin/env bash
# kindex vs hnswlib on the same files, in the same run, on this machine, interleaved
# pass by pass so every engine sees the same machine noise (issue 19).
#
# Per pass and dataset, one after the other:
#   hnswlib            f32, glibc malloc as configured (THP only where the system's
#                      transparent_hugepage setting gives it to plain malloc)
#   kindex none        f32 (this build; its arena asks for huge pages, MADV_HUGEPAGE)
#   hnswlib-thp        f32 with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (malloc asks for
#                      THP too, as kindex does)
#   kindex int8        codes in RAM, exact rescoring of rescore x k candidates
#   kindex-prev none   f32, the build of $PREV (before issue 19) on its own graph, saved
#   kindex none@prev   f32, this build searching $PREV's saved graph: the f32 ratio
#                      none@prev / prev compares code, not two graphs
#   kindex int8-disk   int8 with the f32 vectors in mapped files (--vectors-on-disk)
#   kindex binary      one bit per dimension, rescoring $BINARY_RESCORE x k (default 10)
# Each engine builds its own graph each pass (2 threads; graphs differ run to run)
# except the two "@prev" rows. Prints a markdown table per dataset with median QPS over
# the passes, RssAnon per vector, and the ratios the issue asks for (paste into
# bench/RESULTS.md with the machine load).
#
#   bench/hnsw_compare.sh                    all datasets, 2 passes
#   PASSES=3 ONLY=minilm bench/hnsw_compare.sh
#   SYNTH_N=1000000 ONLY=synth-1000k bench/hnsw_compare.sh   the 1M x 128 set
#   PREV= bench/hnsw_compare.sh              no previous build
#   MODES="none int8" bench/hnsw_compare.sh  a subset of the kindex modes
#   VENV=/path/to/venv                       reuse an existing hnswlib venv
# The binaries are built into $CARGO_TARGET_DIR (default target/); $PREV's from a git
# worktree under bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASETS="${KINDEX_DATASETS:-../shared/datasets}"
OUT=bench/out
THREADS="${THREADS:-2}"
EF="${EF:-16,24,32,48,64,96,128,256}"
SYNTH_N="${SYNTH_N:-200000}"
ONLY="${ONLY:-}"
VENV="${VENV:-bench/.venv}"
PASSES="${PASSES:-2}"
MODES="${MODES:-none int8 int8-disk binary}"
RESCORE="${RESCORE:-3}"
BINARY_RESCORE="${BINARY_RESCORE:-10}"
# The last commit before issue 19 (int8 quantization, c7f057d).
PREV="${PREV-c7f057d^}"
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "hnswlib==0.8.0" "numpy<3" >&2

PREV_KB=""
if [ -n "$PREV" ]; then
  rev=$(git rev-parse --short "$PREV")
  PREV_KB="$OUT/kindex-bench-$rev"
  if [ ! -x "$PREV_KB" ]; then
    echo "building kindex-bench at $PREV ($rev)" >&2
    rm -rf "$OUT/prev-src"
    git worktree prune
    git worktree add -q --detach "$OUT/prev-src" "$rev"
    (cd "$OUT/prev-src" && cargo build --release -p kindex-bench --target-dir "$TARGET") >&2
    cp "$TARGET/release/kindex-bench" "$PREV_KB"
    git worktree remove --force "$OUT/prev-src"
  fi
fi
# After the previous build: cargo links this build's binary into place again.
cargo build --release -p kindex-bench >&2
KB="$OUT/kindex-bench-current"
cp "$TARGET/release/kindex-bench" "$KB"

synth="$OUT/synth-$((SYNTH_N / 1000))k-128d"
if [ ! -f "$synth.gt_ids.npy" ]; then
  echo "generating $synth (seeded)" >&2
  $KB synth --out "$OUT" --n "$SYNTH_N" --dim 128 --metric l2 >&2
fi

rss_thp() { # the system settings, for the report
  echo "THP enabled: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo ?)," \
    "defrag: $(cat /sys/kernel/mm/transparent_hugepage/defrag 2>/dev/null || echo ?)"
}

one() { # name base query gt metric pass variant
  local name=$1 base=$2 query=$3 gt=$4 metric=$5 pass=$6 variant=$7
  local out="$OUT/$name.$variant.pass$pass.jsonl"
  local common=(--name "$name" --base "$base" --query "$query" --gt "$gt" --metric "$metric"
    --threads "$THREADS" --ef "$EF")
  echo "== $name pass $pass: $variant ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
  case $variant in
    hnswlib) "$VENV/bin/python" bench/hnswlib_bench.py "${common[@]}" ;;
    hnswlib-thp) GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$VENV/bin/python" bench/hnswlib_bench.py "${common[@]}" ;;
    none) $KB hnsw "${common[@]}" --quantization none ;;
    int8) $KB hnsw "${common[@]}" --quantization int8 --rescore "$RESCORE" ;;
    int8-disk)
      rm -rf "$OUT/vectors" && mkdir -p "$OUT/vectors"
      $KB hnsw "${common[@]}" --quantization int8 --rescore "$RESCORE" --vectors-on-disk "$OUT/vectors" ;;
    binary) $KB hnsw "${common[@]}" --quantization binary --rescore "$BINARY_RESCORE" ;;
    prev) $PREV_KB hnsw "${common[@]}" --index-cache "$OUT/graph-prev-$name" ;;
    none@prev) $KB hnsw "${common[@]}" --quantization none --index-cache "$OUT/graph-prev-$name" ;;
  esac | tee "$out" >&2
}

run() { # name base query gt metric
  case "$1" in *"$ONLY"*) ;; *) return 0 ;; esac
  rm -rf "$OUT/graph-prev-$1" "$OUT/$1".*.pass*.jsonl
  for pass in $(seq 1 "$PASSES"); do
    for variant in hnswlib none hnswlib-thp int8 prev none@prev int8-disk binary; do
      case $variant in
        none | int8 | int8-disk | binary) [[ " $MODES " == *" $variant "* ]] || continue ;;
        prev | none@prev) [ -n "$PREV_KB" ] || continue ;;
      esac
      one "$@" "$pass" "$variant"
    done
  done
}

echo "$(rss_thp); $(nproc) cores; started $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)" \
  | tee "$OUT/compare.env" >&2
for base in "$DATASETS"/*.base.npy; do
  [ -e "$base" ] || continue
  stem="${base%.base.npy}"
  metric=cosine
  grep -qi '"metric": *"l2"' "$stem.meta.json" 2>/dev/null && metric=l2
  run "$(basename "$stem")" "$base" "$stem.query.npy" "$stem.gt_ids.npy" "$metric"
done
run "$(basename "$synth")" "$synth.base.npy" "$synth.query.npy" "$synth.gt_ids.npy" l2
echo "ended $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/compare.env" >&2

shopt -s nullglob
cat "$OUT/compare.env"
"$VENV/bin/python" bench/compare.py "$OUT"/*"$ONLY"*.pass*.jsonl
