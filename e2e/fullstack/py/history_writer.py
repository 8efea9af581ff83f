"""The full-stack scenarios' writer: one sequential client doing upserts, re-upserts and
deletes of 200 keys (PREFIX0..PREFIX199) over HTTP (through the index's client Service),
bounded to MAX_OPS requests / MAX_SECONDS (default 3000 / 240 s) or until STOPFILE exists.
Each operation is one JSON line in the history file:
  {"key", "op": "upsert"|"delete", "v": version (upserts), "outcome": "ok"|"fail"|"unknown"}
ok: acknowledged (200). fail: certainly not applied (refused before it reached a leader:
connection refused, 400/404/413/415/422). unknown: anything else (timeout, 5xx): it may
have been applied, now or later.
Usage: history_writer.py HISTORY STOPFILE BASE_URL [PREFIX [MAX_OPS [MAX_SECONDS]]]
A scenario gives each writer its own PREFIX, so one history describes its keys completely."""
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
rnd = random.Random(4)
KEYS = [f"{prefix}{i}" for i in range(200)]
DEFINITE = {400, 404, 405, 413, 415, 422}
counts = {"ok": 0, "fail": 0, "unknown": 0}
start = time.time()


def post(path, doc):
    req = urllib.request.Request(base + path, json.dumps(doc).encode(),
                                 {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return "ok" if r.status == 200 else "unknown"
    except urllib.error.HTTPError as e:
        return "fail" if e.code in DEFINITE else "unknown"
    except urllib.error.URLError as e:
        refused = isinstance(e.reason, ConnectionRefusedError)
        return "fail" if refused else "unknown"
    except Exception:  # timeouts, resets: the request may have been applied
        return "unknown"


with open(history, "w") as out:
    for i in range(1, max_ops + 1):
        if os.path.exists(stop) or time.time() - start > max_seconds:
            break
        key = rnd.choice(KEYS)
        if rnd.random() < 0.2:
            rec = {"key": key, "op": "delete"}
            rec["outcome"] = post("/v1/indexes/demo/points/delete", {"ids": [key]})
        else:
            vec = [rnd.uniform(-1, 1) for _ in range(16)]
            rec = {"key": key, "op": "upsert", "v": i}
            rec["outcome"] = post("/v1/indexes/demo/points",
                                  {"points": [{"id": key, "vector": vec, "payload": {"v": i}}]})
        counts[rec["outcome"]] += 1
        out.write(json.dumps(rec) + "\n")
        out.flush()
        if rec["outcome"] != "ok":
            time.sleep(0.2)
print(f"writer: {sum(counts.values())} operations: {counts['ok']} acknowledged, "
      f"{counts['fail']} refused, {counts['unknown']} unknown")
