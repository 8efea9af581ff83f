"""Checks `kubectl kindex policy list -o json`: every one of N pods reports policy NAME at
VERSION with maxVectors MAX (or deleted, or of kind KIND), made by the resource, and the pods
of one shard report equal store checksums (pods are named <index>-s<shard>-<ordinal>).

    python3 policies_check.py FILE N NAME MAX|deleted|kind=KIND VERSION
"""

import json
import sys
from collections import defaultdict


def main() -> int:
    path, n, name, want, version = sys.argv[1:6]
    doc = json.load(open(path))
    nodes = doc["nodes"]
    problems = []
    if len(nodes) != int(n):
        problems.append(f"{len(nodes)} pods answered, want {n}")
    by_shard = defaultdict(set)
    for node in nodes:
        addr = node["addr"]
        shard = addr.split("-s")[-1].split("-")[0] if "-s" in addr else "?"
        by_shard[shard].add(node["checksum"])
        h = node["store"]["policies"].get(name)
        if h is None:
            problems.append(f"{addr}: no policy {name}")
            continue
        cur = h["versions"][-1]
        content = cur["policy"]
        if content is None:
            got = "deleted"
        elif want.startswith("kind="):
            got = f"kind={content.get('kind')}"
        else:
            got = str(content.get("maxVectors"))
        if got != want or h["latest"] != int(version) or cur["source"] != "resource":
            problems.append(
                f"{addr}: {name} version {h['latest']} {got} source {cur['source']}, want version {version} {want} source resource"
            )
    for shard, sums in by_shard.items():
        if len(sums) != 1:
            problems.append(f"shard {shard}: store checksums differ: {sorted(sums)}")
    if problems:
        print("; ".join(problems), file=sys.stderr)
        return 1
    print(f"{len(nodes)} pods: {name} version {version} ({want}), source resource, checksums equal per shard ({len(by_shard)} shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
