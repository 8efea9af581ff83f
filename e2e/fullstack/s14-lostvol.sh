# Scenario 14 (builds on scenarios 1-2; day-2 scenario 3 of the day-2 issue): a
# replica loses its volume. Under a writer through the client Service, a follower
# of shard 0 has its PVC and pod deleted: the StatefulSet makes a new pod on a new,
# empty volume, which starts under a NEW Raft identity (node id = ordinal +
# incarnation). While it is being rebuilt, the leader that holds the other copy of
# the newest writes is SIGKILLed. The operator replaces the old member by the new
# one with no manual step (learner, catch-up by snapshot, one membership change,
# event ReplaceMember), and every replica of every shard matches the writer's
# history at the end: nothing acknowledged is lost.
#
# No quorum observer here: killing the leader while one member is being replaced
# takes the shard below quorum on purpose (for seconds, until the leader's
# container restarts): that is the window this check is for.

# s14_members: shard 0's voters as the status lists them.
s14_members() {
  k -n "$NS1" get vidx demo -o jsonpath='{.status.shards[0].members}'
}

# s14_node_id POD: the Raft node id POD's node reports (Admin Status, through kubectl kindex).
s14_node_id() {
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex status -n "$NS1" --index demo -o json | python3 -c '
import json, sys
pod = sys.argv[1]
import re
ids = [n["status"]["nodeId"] for n in json.load(sys.stdin)["nodes"]
       if "status" in n and re.search(r"(^|[^-\w])" + re.escape(pod) + r"($|[^-\w])", n["addr"])]
sys.exit(1) if not ids else print(ids[0])' "$1"
}

# s14_pid POD: the kindex-node process of POD.
s14_pid() {
  local p
  for p in /proc/[0-9]*; do
    if [[ $(cat "$p/comm" 2>/dev/null) == kindex-node ]] &&
      tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "KINDEX_POD_NAME=$1"; then
      echo "${p#/proc/}"
      return 0
    fi
  done
  return 1
}

# s14_new_pvc PVC OLD_PV: PVC exists and is bound to another volume than OLD_PV.
s14_new_pvc() {
  local pv
  pv=$(k -n "$NS1" get pvc "$1" -o jsonpath='{.spec.volumeName}' 2>/dev/null) || return 1
  [[ -n $pv && $pv != "$2" ]]
}

# s14_new_id POD OLD_ID: POD's node answers with another id than OLD_ID.
s14_new_id() {
  local id
  id=$(s14_node_id "$1") || return 1
  [[ -n $id && $id != "$2" ]]
}

# s14_started POD OLD_UID: a new pod POD (another uid) whose container runs.
s14_started() {
  local got u started
  got=$(k -n "$NS1" get pod "$1" -o jsonpath='{.metadata.uid} {.status.containerStatuses[0].state.running.startedAt}' 2>/dev/null) || return 1
  read -r u started <<<"$got"
  [[ -n $u && $u != "$2" && -n $started ]]
}

# s14_replace_events: the messages of ReplaceMember events about the index, each
# with how often it was reported ("COUNT MESSAGE"; an earlier run's stay listed).
s14_replace_events() {
  k -n "$NS1" get events --field-selector involvedObject.kind=VectorIndex,reason=ReplaceMember -o json |
    python3 -c '
import json, sys
for e in json.load(sys.stdin)["items"]:
    n = max(e.get("count") or 1, (e.get("series") or {}).get("count") or 1)
    print(n, e["message"])'
}

s14_replaced_gone() {
  local m
  m=$(s14_members)
  [[ -n $m && $m != *replaced* ]]
}

s14_lost_volume() {
  local cip leader follower old_id new_id old_pv pid t t0 ips si uid events_before
  cip=$(k -n "$NS1" get svc demo -o jsonpath='{.spec.clusterIP}')
  waitfor 120 vidx_shape 3
  leader=$(k -n "$NS1" get vidx demo -o jsonpath='{.status.shards[0].leader}')
  follower=demo-s0-2
  [[ $leader != "$follower" ]] || follower=demo-s0-1
  old_id=$(s14_node_id "$follower")
  old_pv=$(k -n "$NS1" get pvc "data-$follower" -o jsonpath='{.spec.volumeName}')
  echo "shard 0: leader $leader; $follower is node $old_id on $old_pv"

  rm -f "$RUN/s14.stop"
  trap 'touch "$RUN/s14.stop"' EXIT
  python3 "$ROOT"/e2e/fullstack/py/history_writer.py "$RUN/s14.history" "$RUN/s14.stop" \
    "http://$cip:7080" s14k 20000 600 >"$RUN/s14.writer" 2>&1 &
  local writer=$!
  sleep 2
  # The new replica must be rebuilt from a snapshot: grow the logs past
  # --raft-log-keep and snapshot, so the leaders purge (checked).
  python3 "$ROOT"/e2e/fullstack/py/log_filler.py "http://$cip:7080" 2600 8 180
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex snapshot -n "$NS1" --index demo >/dev/null
  waitfor 60 log_purged "$leader" || fail "leader $leader did not purge its log"
  echo "leader $leader: $(log_purged "$leader")"

  # The volume is lost: PVC and pod deleted (the PVC goes once the pod is gone; the
  # StatefulSet then makes a new pod and a new PVC).
  uid=$(k -n "$NS1" get pod "$follower" -o jsonpath='{.metadata.uid}')
  events_before=$(s14_replace_events)
  t0=$(now)
  k -n "$NS1" delete pvc "data-$follower" --wait=false >/dev/null
  k -n "$NS1" delete pod "$follower" --wait=false >/dev/null
  waitfor 120 s14_new_pvc "data-$follower" "$old_pv" || fail "no new PVC for $follower"
  waitfor 120 s14_started "$follower" "$uid" || fail "no new pod $follower running"
  # As soon as the new, empty replica runs (before it can have been caught up and
  # swapped in), the leader (the other up-to-date copy) is SIGKILLed.
  [[ $(s14_replace_events) == "$events_before" ]] || fail "a ReplaceMember event before the kill: the window was missed"
  pid=$(s14_pid "$leader") || fail "no kindex-node process for $leader"
  kill -KILL "$pid"
  t=$(now)
  echo "new $follower running after $(since "$t0")s; SIGKILL to $leader (pid $pid), members then $(s14_members)"
  waitfor 180 s14_new_id "$follower" "$old_id" || fail "$follower did not come back under a new node id"
  new_id=$(s14_node_id "$follower")
  echo "$follower is on $(k -n "$NS1" get pvc "data-$follower" -o jsonpath='{.spec.volumeName}') as node $new_id (was $old_id)"
  [[ $((new_id & 0xffff)) == "${follower##*-}" ]] || fail "node id $new_id does not carry ordinal ${follower##*-}"

  waitfor 300 s14_replaced_gone || {
    k -n "$NS1" get vidx demo -o yaml | sed -n '/^status:/,$p'
    fail "the old member was not replaced"
  }
  waitfor 240 vidx_shape 3
  echo "replaced and Ready after $(since "$t")s (since the volume loss: $(since "$t0")s); members $(s14_members)"
  [[ $(s14_node_id "$follower") == "$new_id" ]] || fail "node id of $follower changed again"
  [[ $(s14_replace_events) != "$events_before" ]] && s14_replace_events | grep -F "by $follower on its new volume" ||
    fail "no new ReplaceMember event for $follower"
  si=$(pod_metric "$NS1" "$follower" kindex_raft_snapshot_index)
  echo "$follower: snapshot index ${si:-none}"
  ((${si:-0} > 0)) || fail "$follower was not rebuilt from a snapshot"

  sleep 2
  touch "$RUN/s14.stop"
  wait "$writer" || true
  cat "$RUN/s14.writer"
  grep -q '"outcome": "ok"' "$RUN/s14.history" || fail "no write was acknowledged"
  waitfor 120 shards_agree 3
  shards_agree 3
  ips=$(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}')
  # shellcheck disable=SC2086 # one argument per pod IP
  python3 "$ROOT"/e2e/fullstack/py/history_check.py "$RUN/s14.history" $ips
}

check 14.1 "lost volume: PVC + pod deleted under writes, new Raft identity, leader killed mid-rebuild, replaced by snapshot, nothing lost" s14_lost_volume

# 14.2 (full form only: KINDEX_FULLSTACK_FULL=1, see full.sh): the catch-up of a rebuilt
# replica holding 100,000 x 128-d vectors, timed. An index s14/big (1 shard x 3, 128-d)
# is loaded with `kubectl kindex upsert`, indexed on every replica and snapshotted; a
# follower then loses its volume (PVC + pod deleted) and the operator rebuilds it from a
# snapshot. Printed: volume lost -> new pod running -> replaced (ReplaceMember) and Ready
# with all 100,000 vectors and the leader's checksum.
NS14=s14
N14=100000
D14=128

s14big_status() {
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex status -n "$NS14" --index big -o json
}

# s14big_agree N: 3 replicas answer, each with N live vectors and an empty indexing queue,
# all with one content checksum.
s14big_agree() {
  s14big_status | python3 -c '
import json, sys
n = int(sys.argv[1])
rows = [m["status"] for m in json.load(sys.stdin)["nodes"] if "status" in m]
print("replicas", [(r.get("vectorsLive"), r.get("contentChecksum"), r.get("vectorsQueued")) for r in rows])
ok = len(rows) == 3 and all(int(r.get("vectorsLive") or 0) == n and not r.get("vectorsQueued") for r in rows)
sys.exit(0 if ok and len({r.get("contentChecksum") for r in rows}) == 1 else 1)' "$1"
}

s14big_ready() {
  [[ $(k -n "$NS14" get vidx big -o jsonpath='{.status.phase} {.status.ready}') == "Ready 3/3" ]]
}

s14big_replaced() {
  local m
  m=$(k -n "$NS14" get vidx big -o jsonpath='{.status.shards[0].members}')
  [[ -n $m && $m != *replaced* ]] && s14big_ready
}

s14_catchup_100k() {
  local t t0 t1 leader follower uid old_pv si
  k create namespace "$NS14" >/dev/null 2>&1 || true
  k -n "$NS14" apply -f - >/dev/null <<YAML
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata:
  name: big
spec:
  dimension: $D14
  metric: l2
  shards: 1
  replicas: 3
  storage:
    size: 2Gi
YAML
  waitfor 300 s14big_ready || fail "index s14/big not Ready"
  # fvecs (int32 dimension, then the floats, per row): no numpy needed.
  python3 - "$RUN/big.fvecs" "$N14" "$D14" <<'PY'
import array, random, struct, sys
path, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(14)
with open(path, "wb") as f:
    head = struct.pack("<i", d)
    for _ in range(n):
        f.write(head)
        array.array("f", (rnd.random() for _ in range(d))).tofile(f)
PY
  t=$(now)
  # Batches of 50: 2,000 log entries, past the node's --raft-log-keep (1,000), so the
  # snapshot below lets the leader purge and the new replica must install it (with the
  # log still there it would replay and re-index all of it instead: the slow path).
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex upsert -n "$NS14" --index big --file "$RUN/big.fvecs" \
    --id-prefix b --batch 50 -o json >"$RUN/s14big.upsert.json"
  echo "upsert of $N14 x $D14 through kubectl kindex: $(since "$t")s"
  waitfor 3600 s14big_agree "$N14" || fail "the replicas did not all index $N14 vectors"
  echo "indexed on all 3 replicas after $(since "$t")s"
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex snapshot -n "$NS14" --index big >/dev/null
  leader=$(k -n "$NS14" get vidx big -o jsonpath='{.status.shards[0].leader}')
  NS1=$NS14 waitfor 60 log_purged "$leader" || fail "leader $leader did not purge its log"
  echo "leader $leader: $(NS1=$NS14 log_purged "$leader")"
  follower=big-s0-2
  [[ $leader != "$follower" ]] || follower=big-s0-1
  uid=$(k -n "$NS14" get pod "$follower" -o jsonpath='{.metadata.uid}')
  old_pv=$(k -n "$NS14" get pvc "data-$follower" -o jsonpath='{.spec.volumeName}')
  t0=$(now)
  k -n "$NS14" delete pvc "data-$follower" --wait=false >/dev/null
  k -n "$NS14" delete pod "$follower" --wait=false >/dev/null
  NS1=$NS14 waitfor 180 s14_new_pvc "data-$follower" "$old_pv" || fail "no new PVC for $follower"
  NS1=$NS14 waitfor 180 s14_started "$follower" "$uid" || fail "no new pod $follower running"
  t1=$(now)
  echo "volume lost -> new $follower running: $(since "$t0")s"
  waitfor 900 s14big_replaced || {
    k -n "$NS14" get vidx big -o yaml | sed -n '/^status:/,$p'
    fail "$follower was not replaced"
  }
  waitfor 300 s14big_agree "$N14" || fail "the rebuilt replica does not hold the $N14 vectors"
  si=$(pod_metric "$NS14" "$follower" kindex_raft_snapshot_index)
  ((${si:-0} > 0)) || fail "$follower was not rebuilt from a snapshot"
  echo "catch-up of $follower ($N14 x $D14, snapshot index $si): running -> replaced, Ready" \
    "and equal in $(since "$t1")s; volume lost -> caught up in $(since "$t0")s"
  k -n "$NS14" delete vidx big --wait=true --timeout=120s >/dev/null
}

if ((FULL)); then
  check 14.2 "catch-up of a rebuilt replica holding 100,000 x 128-d (timed)" s14_catchup_100k
fi
