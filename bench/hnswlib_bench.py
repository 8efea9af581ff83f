"""hnswlib on the same files as kindex-bench, printing the same JSON lines.

QPS is measured the way hnswlib is fastest: one knn_query call over all
queries with num_threads=1 (pure C++ loop, no per-query Python overhead).
Latency percentiles come from per-query calls.
"""
import argparse
import json
import time

import hnswlib
import numpy as np


def rss_anon():
    """Anonymous resident bytes of this process (None without /proc)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--query", required=True)
    ap.add_argument("--gt", required=True)
    ap.add_argument("--metric", default="cosine")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ef", default="16,24,32,48,64,96,128,256")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--name", default="")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    base = np.load(a.base).astype(np.float32)
    query = np.load(a.query).astype(np.float32)
    gt = np.load(a.gt)[:, : a.k]
    space = {"cosine": "cosine", "l2": "l2", "dot": "ip"}[a.metric]

    before = rss_anon()
    index = hnswlib.Index(space=space, dim=base.shape[1])
    index.init_index(max_elements=base.shape[0], M=a.m, ef_construction=a.ef_construction, random_seed=100)
    index.set_num_threads(a.threads)
    t = time.perf_counter()
    index.add_items(base, np.arange(base.shape[0]))
    build_s = time.perf_counter() - t
    # What the index added (vectors, links, labels), as kindex-bench reports it.
    after = rss_anon()
    rss_per_vector = (after - before) / base.shape[0] if before is not None and after is not None else None

    index.set_num_threads(1)
    for ef in [int(x) for x in a.ef.split(",")]:
        index.set_ef(max(ef, a.k))
        index.knn_query(query[:100], k=a.k)  # warm-up
        # Best of `repeat` runs, as kindex-bench does.
        secs = float("inf")
        for _ in range(a.repeat):
            t = time.perf_counter()
            labels, _ = index.knn_query(query, k=a.k, num_threads=1)
            secs = min(secs, time.perf_counter() - t)
        hits = sum(len(set(labels[i]) & set(gt[i])) for i in range(len(query)))
        lat = []
        for i in range(len(query)):
            s = time.perf_counter()
            index.knn_query(query[i : i + 1], k=a.k, num_threads=1)
            lat.append(time.perf_counter() - s)
        lat.sort()
        pct = lambda p: lat[min(len(lat) - 1, len(lat) * p // 100)] * 1e6
        print(json.dumps({
            "engine": "hnswlib", "dataset": a.name, "n": int(base.shape[0]), "dim": int(base.shape[1]),
            "metric": a.metric, "m": a.m, "ef_construction": a.ef_construction, "threads": a.threads,
            "ef": ef, "k": a.k, "recall": hits / (len(query) * a.k), "qps": len(query) / secs,
            "p50_us": pct(50), "p99_us": pct(99), "build_s": build_s,
            "rss_anon_per_vector": rss_per_vector,
        }), flush=True)


if __name__ == "__main__":
    main()
