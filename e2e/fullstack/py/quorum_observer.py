"""Watches an index for the whole of a day-2 scenario and fails it if any shard ever has
fewer ready voters than a quorum, or if a voter's pod is being deleted while the other
ready voters are no quorum.

Every ~0.5 s it reads the VectorIndex (its status lists each shard's Raft voters, as the
operator last saw them) and the index's pods (Ready condition, deletionTimestamp). A voter
counts as up when its pod exists, is Ready and is not being deleted. A shard violates
quorum when up voters < len(voters) // 2 + 1. Bounded by STOPFILE and MAX_SECONDS.
Prints one summary line per shard (samples, most voters seen, fewest up) and each
violation; exit 1 on any.
Usage: quorum_observer.py KUBECTL NAMESPACE INDEX STOPFILE [MAX_SECONDS]"""
import json
import os
import subprocess
import sys
import time

kubectl, ns, index, stop = sys.argv[1:5]
max_seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 900


def get(*args):
    out = subprocess.run([kubectl, "-n", ns, "get", *args, "-o", "json"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


def up_pods(pods):
    up = set()
    for p in pods["items"]:
        if p["metadata"].get("deletionTimestamp"):
            continue
        conds = (p.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
            up.add(p["metadata"]["name"])
    return up


seen = {}  # shard -> {"samples", "max_voters", "min_up"}
violations = []
start = time.time()
while not os.path.exists(stop) and time.time() - start < max_seconds:
    vi = get("vectorindex", index)
    pods = get("pods", "-l", f"app.kubernetes.io/instance={index}")
    if vi is None or pods is None:  # API hiccup: no sample, not a verdict
        time.sleep(0.5)
        continue
    up = up_pods(pods)
    t = time.time() - start
    for s in (vi.get("status") or {}).get("shards") or []:
        voters = s.get("members") or []
        if not voters:
            continue
        n_up = sum(1 for v in voters if v in up)
        st = seen.setdefault(s["shard"], {"samples": 0, "max_voters": 0, "min_up": len(voters)})
        st["samples"] += 1
        st["max_voters"] = max(st["max_voters"], len(voters))
        st["min_up"] = min(st["min_up"], n_up)
        if n_up < len(voters) // 2 + 1:
            down = sorted(set(voters) - up)
            violations.append(f"t={t:.1f}s shard {s['shard']}: {n_up} of {len(voters)} voters up "
                              f"(not up: {', '.join(down)})")
    time.sleep(0.5)

for shard, st in sorted(seen.items()):
    print(f"observer: shard {shard}: {st['samples']} samples, up to {st['max_voters']} voters, "
          f"never fewer than {st['min_up']} up")
for v in violations[:20]:
    print(f"observer: QUORUM VIOLATION {v}")
if not seen:
    print("observer: no sample with voters in status")
sys.exit(1 if violations or not seen else 0)
