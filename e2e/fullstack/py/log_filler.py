"""Grows every shard's Raft log by about COUNT / shards entries: COUNT single-point upserts
(ids fill0..fill<COUNT-1>, 16-d) over HTTP, THREADS at a time, each its own log entry.
Bounded by MAX_SECONDS; exits 1 if any upsert was not acknowledged.
Usage: log_filler.py BASE_URL COUNT [THREADS [MAX_SECONDS]]"""
import json
import random
import sys
import threading
import time
import urllib.request

base, count = sys.argv[1], int(sys.argv[2])
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 8
max_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 120
start = time.time()
failed = []
lock = threading.Lock()


def work(t):
    rnd = random.Random(t)
    for i in range(t, count, threads):
        if time.time() - start > max_seconds:
            with lock:
                failed.append(f"fill{i}: out of time")
            return
        doc = {"points": [{"id": f"fill{i}", "vector": [rnd.uniform(-1, 1) for _ in range(16)]}]}
        req = urllib.request.Request(base + "/v1/indexes/demo/points", json.dumps(doc).encode(),
                                     {"content-type": "application/json"})
        why = None
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status != 200:
                    why = f"status {r.status}"
        except Exception as e:  # every failure is reported
            why = str(e)
        if why:
            with lock:
                failed.append(f"fill{i}: {why}")


ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(f"log filler: {count} upserts in {time.time() - start:.1f}s, {len(failed)} failed")
for f in failed[:5]:
    print("  " + f)
sys.exit(1 if failed else 0)
