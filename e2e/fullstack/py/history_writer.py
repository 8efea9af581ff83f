"""The full-stack scenarios' writer: one sequential client doing upserts, re-upserts and
deletes of 200 keys (PREFIX0..PREFIX199) over HTTP (through the index's client Service),
bounded to MAX_OPS requests / MAX_SECONDS (default 3000 / 240 s) or until STOPFILE exists.
Each operation is one JSON line in the history file:
  {"key", "op": "upsert"|"delete", "v": version (upserts), "outcome": "ok"|"fail"|"unknown"}
ok: acknowledged (200). fail: certainly not applied (refused before it reached a leader:
connection refused, 400/404/413/415/422). unknown: anything else (timeout, 5xx): it may
have been applied, now or later.
Usage: history_writer.py HISTORY STOPFILE BASE_URL [PREFIX [MAX_OPS [MAX_SECONDS [SHARD]]]]
A scenario gives each writer its own PREFIX, so one history describes its keys completely.
Each line also has "t" (Unix seconds when the request was answered) and, when acknowledged,
"shard" (the shard of the write token). With SHARD, the writer keeps to 100 keys of that
shard of a 2-shard index, found by writing PREFIX0, PREFIX1, ... once each (recorded like
any operation) until 100 were acknowledged on that shard: its gaps between acknowledged
writes are that shard's write gaps (scenario 13 measures leader transfers with them)."""
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request

history, stop, base = sys.argv[1], sys.argv[2], sys.argv[3]
prefix = sys.argv[4] if len(sys.argv) > 4 else "k"
max_ops = int(sys.argv[5]) if len(sys.argv) > 5 else 3000
max_seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 240
only_shard = int(sys.argv[7]) if len(sys.argv) > 7 else None
rnd = random.Random(4)
KEYS = [f"{prefix}{i}" for i in range(200)]
DEFINITE = {400, 404, 405, 413, 415, 422}
counts = {"ok": 0, "fail": 0, "unknown": 0}
start = time.time()


def post(path, doc):
    """(outcome, shard of the write token or None)."""
    req = urllib.request.Request(base + path, json.dumps(doc).encode(),
                                 {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 200:
                return "unknown", None
            try:
                shards = json.load(r)["token"]["shards"]
                return "ok", (shards[0]["shard"] if len(shards) == 1 else None)
            except Exception:  # acknowledged all the same
                return "ok", None
    except urllib.error.HTTPError as e:
        return ("fail" if e.code in DEFINITE else "unknown"), None
    except urllib.error.URLError as e:
        refused = isinstance(e.reason, ConnectionRefusedError)
        return ("fail" if refused else "unknown"), None
    except Exception:  # timeouts, resets: the request may have been applied
        return "unknown", None


def upsert(key, i):
    vec = [rnd.uniform(-1, 1) for _ in range(16)]
    rec = {"key": key, "op": "upsert", "v": i}
    rec["outcome"], shard = post("/v1/indexes/demo/points",
                                 {"points": [{"id": key, "vector": vec, "payload": {"v": i}}]})
    return rec, shard


def done():
    return os.path.exists(stop) or time.time() - start > max_seconds


def record(out, rec, shard):
    rec["t"] = round(time.time(), 3)
    if shard is not None:
        rec["shard"] = shard
    counts[rec["outcome"]] += 1
    out.write(json.dumps(rec) + "\n")
    out.flush()
    if rec["outcome"] != "ok":
        time.sleep(0.2)


with open(history, "w") as out:
    i = 0
    if only_shard is not None:
        KEYS = []
        n = 0
        while len(KEYS) < 100 and n < 2000 and not done():
            i += 1
            key = f"{prefix}{n}"
            rec, shard = upsert(key, i)
            record(out, rec, shard)
            if rec["outcome"] == "ok":
                n += 1
                if shard == only_shard:
                    KEYS.append(key)
        if not KEYS:
            sys.exit(f"writer: no key of shard {only_shard} acknowledged")
    while i < max_ops and not done():
        i += 1
        key = rnd.choice(KEYS)
        shard = None
        if rnd.random() < 0.2:
            rec = {"key": key, "op": "delete"}
            rec["outcome"], shard = post("/v1/indexes/demo/points/delete", {"ids": [key]})
        else:
            rec, shard = upsert(key, i)
        record(out, rec, shard)
print(f"writer: {sum(counts.values())} operations: {counts['ok']} acknowledged, "
      f"{counts['fail']} refused, {counts['unknown']} unknown")
