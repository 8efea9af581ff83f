"""Joins kindex-bench and hnswlib JSON lines into a side-by-side table.

For each dataset: every ef point of both engines, then the acceptance check:
QPS at the lowest ef reaching recall@10 >= target, and build time, as ratios
kindex / hnswlib (> 1 means kindex is faster for QPS; < 1 for build seconds).
"""
import json
import sys
from collections import defaultdict

TARGET = 0.95


def main(paths):
    rows = defaultdict(lambda: defaultdict(list))
    for p in paths:
        for line in open(p):
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                if "engine" in r:
                    rows[r["dataset"]][r["engine"]].append(r)
    out = []
    for ds, engines in rows.items():
        out.append(f"\n### {ds}\n")
        out.append("| engine | ef | recall@10 | QPS (1 thread) | p50 µs | p99 µs | build s |")
        out.append("|---|---|---|---|---|---|---|")
        for eng in ("kindex", "hnswlib"):
            for r in sorted(engines.get(eng, []), key=lambda r: r["ef"]):
                out.append(f"| {eng} | {r['ef']} | {r['recall']:.4f} | {r['qps']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['build_s']:.1f} |")
        best = {}
        for eng in ("kindex", "hnswlib"):
            ok = sorted((r for r in engines.get(eng, []) if r["recall"] >= TARGET), key=lambda r: r["ef"])
            best[eng] = ok[0] if ok else None
        k, h = best["kindex"], best["hnswlib"]
        if k and h:
            out.append("")
            out.append(f"- lowest ef with recall@10 ≥ {TARGET}: kindex ef={k['ef']} ({k['recall']:.4f}, {k['qps']:.0f} QPS), "
                       f"hnswlib ef={h['ef']} ({h['recall']:.4f}, {h['qps']:.0f} QPS)")
            out.append(f"- **QPS ratio kindex/hnswlib at that recall: {k['qps'] / h['qps']:.2f}**")
            out.append(f"- **build time ratio kindex/hnswlib ({k['threads']} threads): {k['build_s'] / h['build_s']:.2f}** "
                       f"({k['build_s']:.1f} s vs {h['build_s']:.1f} s)")
            snap = engines["kindex"][0]
            if snap.get("snapshot_bytes"):
                out.append(f"- kindex snapshot: {snap['snapshot_bytes'] / 1e6:.0f} MB, save {snap['snapshot_save_mb_s']:.0f} MB/s, "
                           f"load (all checksums) {snap['snapshot_load_mb_s']:.0f} MB/s; ~{snap['bytes_per_vector']} B/vector in memory")
        else:
            out.append(f"\n- a target recall of {TARGET} was not reached by: "
                       + ", ".join(e for e in ("kindex", "hnswlib") if not best[e]))
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
