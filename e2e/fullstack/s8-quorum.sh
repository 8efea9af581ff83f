# Scenario 8 (builds on scenarios 1-2; day-2 scenarios 8 and 7 of the day-2 issue):
# voluntary disruptions through the Eviction API respect each shard's
# PodDisruptionBudget, and a shard that loses its quorum anyway (pods deleted, not
# evicted) fails writes at once with a clear error, lists itself in search
# `failures`, shows in status, and recovers fully when its pods return; a writer
# runs the whole time and every replica is checked against its history at the end.
#
# All three Nodes are cordoned first, so an evicted or deleted pod's replacement
# stays Pending (the pods' anti-affinity is only preferred) until they are
# uncordoned: that keeps a replica down for as long as the check needs.

# s8_evict POD: asks the Eviction API to evict POD (kubectl prints the refusal).
s8_evict() {
  k create --raw "/api/v1/namespaces/$NS1/pods/$1/eviction" -f - <<EOF
{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "$1", "namespace": "$NS1"}}
EOF
}

# s8_allowed SHARD N: the shard's PDB allows exactly N more disruptions.
s8_allowed() {
  [[ $(k -n "$NS1" get pdb "demo-s$1" -o jsonpath='{.status.disruptionsAllowed}') == "$2" ]]
}

# s8_replaced POD: POD was deleted and its replacement is not scheduled (Pending).
s8_replaced() {
  [[ $(k -n "$NS1" get pod "$1" -o jsonpath='{.status.phase}') == Pending ]]
}

# s8_status_says: the index status says shard 0 lost its quorum (phase, condition).
s8_status_says() {
  k -n "$NS1" get vidx demo -o json | python3 -c '
import json, sys
st = json.load(sys.stdin).get("status") or {}
conds = [c for c in st.get("conditions") or [] if c.get("status") == "True"
         and c.get("type") == "Degraded" and c.get("reason") == "QuorumLost"
         and c.get("message", "").startswith("shard 0: 1 of 3 voters ready")]
print(st.get("phase"), [(c["type"], c.get("reason"), c.get("message")) for c in conds])
sys.exit(0 if st.get("phase") == "Degraded" and conds else 1)'
}

s8_quorum() {
  local cip nodes leader followers a b s1pod out t
  cip=$(k -n "$NS1" get svc demo -o jsonpath='{.spec.clusterIP}')
  waitfor 120 vidx_shape 3
  waitfor 60 s8_allowed 0 1
  waitfor 60 s8_allowed 1 1
  leader=$(k -n "$NS1" get vidx demo -o jsonpath='{.status.shards[0].leader}')
  mapfile -t followers < <(k -n "$NS1" get vidx demo \
    -o jsonpath='{.status.shards[0].members[*]}' | tr ' ' '\n' | grep -vx "$leader")
  a=${followers[0]} b=${followers[1]}
  s1pod=$(k -n "$NS1" get vidx demo -o jsonpath='{.status.shards[1].leader}')
  echo "shard 0: leader $leader, followers $a $b"

  rm -f "$RUN/s8.stop"
  trap 'touch "$RUN/s8.stop"; k uncordon $(k get nodes -o name) >/dev/null 2>&1 || true' EXIT
  python3 "$ROOT"/e2e/fullstack/py/history_writer.py "$RUN/s8.history" "$RUN/s8.stop" \
    "http://$cip:7080" s8k 20000 600 >"$RUN/s8.writer" 2>&1 &
  local writer=$!
  sleep 3
  nodes=$(k get nodes -o name)
  # shellcheck disable=SC2086 # one argument per node
  k cordon $nodes >/dev/null

  # Eviction: one follower of shard 0 may go (maxUnavailable 1 of 3 voters) ...
  s8_evict "$a" >/dev/null
  waitfor 120 s8_replaced "$a"
  waitfor 60 s8_allowed 0 0
  # ... a second one may not: the API refuses with 429 and the pod keeps running.
  if out=$(s8_evict "$b" 2>&1); then fail "evicting a second replica of shard 0 was allowed"; fi
  echo "second eviction in shard 0 refused: $out"
  grep -qi "disruption budget" <<<"$out" || fail "the refusal does not name the budget: $out"
  pod_ready "$NS1" "$b" || fail "$b is not Ready after a refused eviction"
  # The budgets are per shard: shard 1 still allows one (its leader: a transfer first).
  s8_evict "$s1pod" >/dev/null || fail "evicting one replica of shard 1 was refused"
  waitfor 120 s8_replaced "$s1pod"

  # Quorum lost: the second follower is deleted (not a voluntary eviction), so shard 0
  # keeps 1 of 3 voters. Writes to it are refused at once, naming the cause.
  k -n "$NS1" delete pod "$b" --wait=false >/dev/null
  waitfor 120 s8_replaced "$b"
  sleep 7 # past the leader's 5 s without a majority's acknowledgement
  python3 - "http://$cip:7080" <<'EOF' || fail "writes during the quorum loss: see above"
import concurrent.futures, json, sys, time, urllib.error, urllib.request
base = sys.argv[1]
def put(i):
    doc = {"points": [{"id": f"s8q{i}", "vector": [1.0 + 0.1 * i] + [0.5] * 15}]}
    req = urllib.request.Request(base + "/v1/indexes/demo/points", json.dumps(doc).encode(),
                                 {"content-type": "application/json"})
    t = time.time()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, "", time.time() - t
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), time.time() - t
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    res = list(ex.map(put, range(16)))
ok = [r for r in res if r[0] == 200]
refused = [r for r in res if r[0] == 503 and "lost its quorum" in r[1]]
print(f"quorum lost: {len(ok)} writes to shard 1 acknowledged, {len(refused)} to shard 0 "
      f"refused, slowest {max(r[2] for r in res):.1f}s")
for code, body, took in res:
    if code != 200:
        print(f"  {code} after {took:.1f}s: {body[:300]}")
sys.exit(0 if ok and refused and len(ok) + len(refused) == len(res)
         and max(r[2] for r in res) < 5 else 1)
EOF
  # A search answers from shard 1 and lists shard 0 in `failures`.
  out=$(curl -s -m 60 -H 'content-type: application/json' "http://$cip:7080/v1/indexes/demo/search" \
    -d "{\"vector\": [$(python3 -c 'print(",".join(["0.1"] * 16))')], \"k\": 5}")
  echo "search during the quorum loss: ${out:0:400}"
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
sys.exit(0 if d["hits"] and [f["shard"] for f in d["failures"]] == [0] else 1)' "$out" ||
    fail "the search did not answer from shard 1 and list shard 0 in failures"
  waitfor 120 s8_status_says || fail "status does not show shard 0 down"
  s8_status_says

  # Recovery: uncordon; the replacements start on their PVCs, the shard elects a leader.
  t=$(now)
  # shellcheck disable=SC2086 # one argument per node
  k uncordon $nodes >/dev/null
  waitfor 240 vidx_shape 3 || fail "the index did not come back Ready"
  echo "uncordoned: 2x3 Ready again after $(since "$t")s"
  sleep 3
  touch "$RUN/s8.stop"
  wait "$writer" || true
  cat "$RUN/s8.writer"
  grep -q '"outcome": "ok"' "$RUN/s8.history" || fail "no write was acknowledged"
  waitfor 120 shards_agree 3
  shards_agree 3
  local ips
  ips=$(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}')
  # shellcheck disable=SC2086 # one argument per pod IP
  python3 "$ROOT"/e2e/fullstack/py/history_check.py "$RUN/s8.history" $ips
}

check 8.1 "eviction respects each shard's PDB; a shard without quorum refuses writes at once, shows in search failures and status, recovers with nothing lost" s8_quorum
