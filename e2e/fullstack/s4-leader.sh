# Scenario 4 (builds on scenarios 1-2): `kubectl delete pod` of shard 0's
# Raft leader while a writer runs (HTTP upserts through the index's client
# Service: its ClusterIP, routed by the agent's kube-proxy rules to a ready
# pod of either shard, whose coordinator routes each write to its shard's
# leader).
# The pod comes back on its PVC and rejoins; every acknowledged upsert is then
# readable (linearizable get), and the three replicas of each shard agree on
# live count and content checksum.
#
# Not the Raft-safety history checker the issue names (that checker lives with
# the Raft work): acknowledged upserts only, no re-upserts or deletes.

# shards_agree: for shard 0 and 1, 3 replicas with equal live count and checksum.
shards_agree() {
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex status -n "$NS1" --index demo -o json |
    python3 -c '
import json, sys
doc = json.load(sys.stdin)
ok = True
for shard in (0, 1):
    rows = {(n["status"]["vectorsLive"], n["status"]["contentChecksum"])
            for n in doc["nodes"] if "status" in n and n["status"]["shard"] == shard}
    count = sum(1 for n in doc["nodes"] if "status" in n and n["status"]["shard"] == shard)
    print("shard", shard, "replicas", count, "states", sorted(rows))
    ok = ok and count == 3 and len(rows) == 1
sys.exit(0 if ok else 1)'
}

s4_leader() {
  local leader uid cip
  leader=$(k -n "$NS1" get vidx demo -o jsonpath='{.status.shards[0].leader}')
  [[ $leader == demo-s0-* ]] || fail "no leader for shard 0 in status: '$leader'"
  uid=$(k -n "$NS1" get pod "$leader" -o jsonpath='{.metadata.uid}')
  cip=$(k -n "$NS1" get svc demo -o jsonpath='{.spec.clusterIP}')
  waitfor 30 curl -sf "http://$cip:7080/readyz"
  rm -f "$RUN/s4.stop"
  # The writer: one point per request, bounded to 3000 requests / 240 s.
  python3 - "$RUN/s4.acked" "$RUN/s4.stop" "http://$cip:7080" >"$RUN/s4.writer" 2>&1 <<'PY' &
import json, os, random, sys, time, urllib.request
acked, stop, base = sys.argv[1], sys.argv[2], sys.argv[3]
rnd = random.Random(4)
ok = err = 0
start = time.time()
with open(acked, "w") as out:
    for i in range(3000):
        if os.path.exists(stop) or time.time() - start > 240:
            break
        body = json.dumps({"points": [{"id": f"w{i}", "vector": [rnd.uniform(-1, 1) for _ in range(16)]}]}).encode()
        req = urllib.request.Request(base + "/v1/indexes/demo/points", body,
                                     {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status == 200:
                    out.write(f"w{i}\n"); out.flush(); ok += 1
        except Exception:
            err += 1
            time.sleep(0.2)
print(f"writer: {ok} acknowledged, {err} failed")
PY
  writer=$!
  sleep 3
  t=$(now)
  k -n "$NS1" delete pod "$leader" --wait=false >/dev/null
  echo "deleted leader $leader while writing"
  waitfor 180 bash -c "[[ \$($KUBECTL -n $NS1 get pod $leader -o jsonpath='{.metadata.uid}' 2>/dev/null) != '' && \$($KUBECTL -n $NS1 get pod $leader -o jsonpath='{.metadata.uid}') != $uid ]]"
  waitfor 240 pod_ready "$NS1" "$leader"
  echo "$leader back (new pod, same PVC) and Ready after $(since "$t")s"
  waitfor 120 bash -c "[[ \$($KUBECTL -n $NS1 get vidx demo -o jsonpath='{.status.shards[0].leader}') == demo-s0-* ]]"
  echo "shard 0 leader now: $(k -n "$NS1" get vidx demo -o jsonpath='{.status.shards[0].leader}')"
  sleep 3
  touch "$RUN/s4.stop"
  wait "$writer" || true
  cat "$RUN/s4.writer"
  n=$(wc -l <"$RUN/s4.acked")
  ((n > 0)) || fail "no write was acknowledged"
  # Every acknowledged id must be readable (linearizable), in batches of 500.
  python3 - "$RUN/s4.acked" "http://$cip:7080" <<'PY'
import json, sys, urllib.request
ids = [l.strip() for l in open(sys.argv[1]) if l.strip()]
base = sys.argv[2]
missing = []
for i in range(0, len(ids), 500):
    batch = ids[i:i + 500]
    body = json.dumps({"ids": batch, "withPayload": False, "consistency": "linearizable"}).encode()
    req = urllib.request.Request(base + "/v1/indexes/demo/points/get", body,
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        found = {p["id"] for p in json.load(r)["points"]}
    missing += [x for x in batch if x not in found]
print(f"{len(ids)} acknowledged upserts, {len(missing)} lost")
sys.exit(1 if missing else 0)
PY
  waitfor 120 shards_agree
  shards_agree
}

check 4.1 "delete shard 0's leader pod under writes: back on its PVC, 0 acknowledged upserts lost, replicas agree" s4_leader
