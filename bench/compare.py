"""Joins the JSON lines of bench/hnsw_compare.sh into tables and ratios (issue 19).

Input files are named <dataset>.<variant>.pass<N>.jsonl (one ef point per line).
Per dataset: each variant's recall@10 (mean over passes) and QPS (median over passes,
and every pass) per ef; then, per variant, the lowest ef whose mean recall reaches
TARGET and its QPS, and the ratios:
  - QPS against hnswlib (f32) and hnswlib-thp at each one's own lowest ef reaching
    TARGET, per pass (the ratio of two engines measured in the same pass) and median;
  - f32 against the build before issue 19: none@prev / prev at every ef, on the same
    saved graph, per pass and median (> 1: this build is faster);
  - RssAnon per vector against the gate d + 150 for int8-disk.
"""
import json
import re
import statistics
import sys
from collections import defaultdict

TARGET = 0.95
ORDER = ["hnswlib", "hnswlib-thp", "prev", "none@prev", "none", "int8", "int8-disk", "binary"]
NAME = re.compile(r"(?P<ds>.+)\.(?P<variant>[^.]+)\.pass(?P<pass>\d+)\.jsonl$")


def load(paths):
    # rows[dataset][variant][ef][pass] = record
    rows = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for p in paths:
        m = NAME.search(p.rsplit("/", 1)[-1])
        if not m:
            continue
        for line in open(p):
            line = line.strip()
            if line.startswith("{") and '"engine"' in line:
                r = json.loads(line)
                rows[m["ds"]][m["variant"]][r["ef"]][int(m["pass"])] = r
    return rows


def fmt(x, spec):
    return "–" if x is None else format(x, spec)


def lowest(points):
    """The lowest ef whose mean recall reaches TARGET: (ef, mean recall), or None."""
    for ef in sorted(points):
        recall = statistics.mean(r["recall"] for r in points[ef].values())
        if recall >= TARGET:
            return ef, recall
    return None


def table(ds, variants):
    out = [f"\n### {ds}\n",
           "| variant | ef | recall@10 | QPS median | QPS per pass | p50 µs | build s | RssAnon B/vector |",
           "|---|---|---|---|---|---|---|---|"]
    for v in ORDER:
        for ef in sorted(variants.get(v, {})):
            per = variants[v][ef]
            passes = [per[p]["qps"] for p in sorted(per)]
            builds = [per[p]["build_s"] for p in sorted(per) if per[p].get("build_s") is not None]
            rss = [per[p].get("rss_anon_per_vector") for p in sorted(per)]
            out.append(
                f"| {v} | {ef} | {statistics.mean(r['recall'] for r in per.values()):.4f} "
                f"| {statistics.median(passes):.0f} | {', '.join(f'{q:.0f}' for q in passes)} "
                f"| {statistics.median(r['p50_us'] for r in per.values()):.0f} "
                f"| {fmt(statistics.median(builds) if builds else None, '.1f')} "
                f"| {', '.join(fmt(x, '.0f') for x in rss)} |")
    return out


def ratios(ds, variants):
    out = [""]
    best = {v: lowest(variants[v]) for v in ORDER if v in variants}
    for v, b in best.items():
        if b is None:
            out.append(f"- {v}: recall@10 ≥ {TARGET} not reached")
        else:
            ef, recall = b
            qps = statistics.median(r["qps"] for r in variants[v][ef].values())
            out.append(f"- {v}: lowest ef reaching {TARGET}: {ef} (recall {recall:.4f}, {qps:.0f} QPS)")
    for base in ("hnswlib", "hnswlib-thp"):
        if not best.get(base):
            continue
        bef = best[base][0]
        for v in ("none", "int8", "int8-disk", "binary"):
            if not best.get(v):
                continue
            vef = best[v][0]
            common = sorted(set(variants[v][vef]) & set(variants[base][bef]))
            per = [variants[v][vef][p]["qps"] / variants[base][bef][p]["qps"] for p in common]
            if per:
                out.append(f"- **QPS {v} / {base} at recall ≥ {TARGET}: {statistics.median(per):.2f}** "
                           f"(per pass {', '.join(f'{x:.2f}' for x in per)}; goal ≥ 2 for int8)")
    if "prev" in variants and "none@prev" in variants:
        lines = []
        allr = []
        for ef in sorted(set(variants["prev"]) & set(variants["none@prev"])):
            a, b = variants["none@prev"][ef], variants["prev"][ef]
            per = [a[p]["qps"] / b[p]["qps"] for p in sorted(set(a) & set(b))]
            allr += per
            lines.append(f"ef {ef}: {statistics.median(per):.3f} ({', '.join(f'{x:.3f}' for x in per)})")
        if allr:
            out.append(f"- **f32 QPS this build / before issue 19, same graph: median {statistics.median(allr):.3f}** "
                       f"(> 1 is faster; per ef, median (per pass): {'; '.join(lines)})")
    if "int8-disk" in variants:
        any_rec = next(iter(next(iter(variants["int8-disk"].values())).values()))
        dim = any_rec["dim"]
        rss = [r.get("rss_anon_per_vector") for per in variants["int8-disk"].values() for r in per.values()]
        rss = [x for x in rss if x is not None]
        if rss:
            worst = max(rss)
            verdict = "met" if worst <= dim + 150 else "not met"
            out.append(f"- **RssAnon per vector, int8 + vectors on disk: {worst:.0f} B (gate d + 150 = {dim + 150}: {verdict})**")
    return out


def main(paths):
    rows = load(paths)
    out = []
    for ds, variants in rows.items():
        out += table(ds, variants)
        out += ratios(ds, variants)
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
