"""The full-stack scenarios' checker: every replica against a writer's history
(history_writer.py).
For each key the allowed final states are the result of its last acknowledged operation
(absent if none or a delete), plus the result of any operation whose outcome is unknown
(it may have landed at any time after its invocation). A replica holding anything else is
counted: lost (absent, but the last acknowledged write was an upsert and no unknown delete),
resurrected (present though the last acknowledged op was a delete, from no unknown upsert),
stale (another version than allowed). Each replica is read on its own pod with eventual
consistency, which a node answers from its own replica for its shard's keys.
Usage: history_check.py HISTORY POD_IP...  (exit 1 on any anomaly)"""
import json
import sys
import urllib.request

history, pods = sys.argv[1], sys.argv[2:]
ops = [json.loads(line) for line in open(history) if line.strip()]
allowed = {}  # key -> allowed final versions (None = absent)
last_acked = {}  # key -> result of its last acknowledged op
for o in ops:
    result = o.get("v") if o["op"] == "upsert" else None
    if o["outcome"] == "ok":
        allowed[o["key"]] = {result}
        last_acked[o["key"]] = result
    else:
        allowed.setdefault(o["key"], {None})
# An unknown op may land at any time after it was sent, even after a later acknowledged op.
for o in ops:
    if o["outcome"] == "unknown":
        allowed[o["key"]].add(o.get("v") if o["op"] == "upsert" else None)

keys = sorted(allowed)
bad = 0
for ip in pods:
    state = {}
    for i in range(0, len(keys), 100):
        body = json.dumps({"ids": keys[i:i + 100], "withPayload": True,
                           "consistency": "eventual"}).encode()
        req = urllib.request.Request(f"http://{ip}:7080/v1/indexes/demo/points/get", body,
                                     {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            for p in json.load(r)["points"]:
                state[p["id"]] = (p.get("payload") or {}).get("v")
    lost = resurrected = stale = 0
    for k in keys:
        got = state.get(k)
        if got in allowed[k]:
            continue
        if got is None:
            lost += 1
        elif k in last_acked and last_acked[k] is None:
            resurrected += 1
        else:
            stale += 1
        if bad < 10:
            print(f"  pod {ip}: key {k} holds {got}, allowed {sorted(allowed[k], key=str)}")
    bad += lost + resurrected + stale
    print(f"pod {ip}: {len(keys)} keys, {lost} lost, {resurrected} resurrected, {stale} stale")
acked = sum(1 for o in ops if o["outcome"] == "ok")
unknown = sum(1 for o in ops if o["outcome"] == "unknown")
print(f"{len(ops)} operations ({acked} acknowledged, {unknown} unknown) on {len(keys)} keys, "
      f"{len(pods)} replicas: {bad} anomalies")
sys.exit(1 if bad else 0)
