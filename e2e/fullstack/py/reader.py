"""The full-stack scenarios' reader: searches with a random vector and gets random keys over
HTTP, alternating between the given base URLs (the client Service and pods), with the
default consistency (a read on each shard's leader), until STOPFILE exists or MAX_SECONDS.
Prints its counts; a read that fails is printed with its error (first 10).
Usage: reader.py STOPFILE INDEX DIMENSION MAX_SECONDS BASE_URL..."""
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request

stop, index, dim, max_seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
bases = sys.argv[5:]
rnd = random.Random(5)
ok = failed = 0
start = time.time()


def post(url, doc):
    req = urllib.request.Request(url, json.dumps(doc).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        json.load(r)


i = 0
while not os.path.exists(stop) and time.time() - start < max_seconds:
    base = bases[i % len(bases)]
    i += 1
    try:
        if i % 2:
            post(f"{base}/v1/indexes/{index}/search",
                 {"vector": [rnd.uniform(-1, 1) for _ in range(dim)], "k": 10})
        else:
            post(f"{base}/v1/indexes/{index}/points/get", {"ids": [f"k{rnd.randrange(200)}"]})
        ok += 1
    except Exception as e:  # counted and shown: the scenario decides what is acceptable
        failed += 1
        if failed <= 10:
            print(f"reader: t={time.time() - start:.1f}s {base}: {e}")
        time.sleep(0.2)
    time.sleep(0.05)
print(f"reader: {ok + failed} reads: {ok} ok, {failed} failed")
