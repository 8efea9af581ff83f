"""Write gap per leader transfer (scenario 13): for each change of a shard's leader in
LEADERS (lines "UNIX_SECONDS LEADER_OF_SHARD_0 LEADER_OF_SHARD_1 ...", sampled about twice a
second; "-" for none), the longest time between two consecutive acknowledged writes of that
shard's writer (HISTORY_i of history_writer.py with SHARD i) around the change: any pair of
consecutive acknowledgements whose interval overlaps [previous sample - 1 s, change + 1 s].
Also each shard's longest gap over the whole history and its median interval, for scale.
Usage: write_gaps.py LEADERS MAX_GAP HISTORY_0 HISTORY_1 ...
Prints one line per transfer; exit 1 if a gap exceeds MAX_GAP seconds or no transfer was seen."""
import json
import statistics
import sys

leaders_file, max_gap, histories = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
samples = []
for line in open(leaders_file):
    parts = line.split()
    if len(parts) == 1 + len(histories):
        samples.append((float(parts[0]), parts[1:]))

def ops(path):
    """The history's complete lines (the writer may be in the middle of one)."""
    for line in open(path):
        if line.endswith("\n") and line.strip():
            yield json.loads(line)


acks = [sorted(o["t"] for o in ops(h) if o["outcome"] == "ok" and "t" in o) for h in histories]

worst = 0.0
transfers = 0
for shard, ts in enumerate(acks):
    if len(ts) < 2:
        sys.exit(f"shard {shard}: fewer than 2 acknowledged writes")
    intervals = [b - a for a, b in zip(ts, ts[1:])]
    print(f"shard {shard}: {len(ts)} acknowledged writes, median interval "
          f"{statistics.median(intervals) * 1000:.0f} ms, longest gap {max(intervals):.2f} s")
    prev_t, prev = None, None
    for t, row in samples:
        cur = row[shard]
        if cur == "-":
            continue
        if prev is not None and cur != prev:
            lo, hi = prev_t - 1.0, t + 1.0
            gap = max((b - a for a, b in zip(ts, ts[1:]) if b >= lo and a <= hi), default=None)
            if gap is None:
                print(f"shard {shard}: leader {prev} -> {cur} at {t:.1f}: no writes around it")
                gap = float("inf")
            else:
                print(f"shard {shard}: leader {prev} -> {cur} at {t:.1f}: write gap {gap:.2f} s")
            worst = max(worst, gap)
            transfers += 1
        prev_t, prev = t, cur
if transfers == 0:
    sys.exit("no leader change seen")
print(f"{transfers} leader changes, worst write gap {worst:.2f} s (limit {max_gap} s)")
sys.exit(0 if worst <= max_gap else 1)
