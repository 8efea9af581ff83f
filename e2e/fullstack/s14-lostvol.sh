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

# s14_purged POD: POD's Raft log is purged past index 0 (prints how far).
s14_purged() {
  local purged
  purged=$(curl -s "http://$(k -n "$NS1" get pod "$1" -o jsonpath='{.status.podIP}'):7080/metrics" |
    sed -n 's/^kindex_raft_purged_index \([0-9]*\).*/\1/p')
  echo "log purged up to ${purged:-none}"
  ((${purged:-0} > 0))
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
  local cip leader follower old_id new_id old_pv pid t t0 ips si uid ip events_before
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
  waitfor 60 s14_purged "$leader" || fail "leader $leader did not purge its log"
  echo "leader $leader: $(s14_purged "$leader")"

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
  ip=$(k -n "$NS1" get pod "$follower" -o jsonpath='{.status.podIP}')
  si=$(curl -s "http://$ip:7080/metrics" | sed -n 's/^kindex_raft_snapshot_index \([0-9]*\).*/\1/p')
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
