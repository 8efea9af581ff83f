# Scenario 4 (builds on scenarios 1-2): `kubectl delete pod` of shard 0's
# Raft leader while a writer runs (HTTP upserts, re-upserts and deletes of 200
# keys through the index's client Service: its ClusterIP, routed by
# kube-proxy to a ready pod of either shard, whose coordinator routes each
# write to its shard's leader; e2e/fullstack/py/history_writer.py records every
# operation and its outcome).
# The pod comes back on its PVC and rejoins; the replicas of each shard agree on
# live count and content checksum; then every replica is checked against the
# history (py/history_check.py): each key holds what its last acknowledged operation
# left, or the result of an operation whose outcome the writer could not know;
# lost, resurrected and stale keys are counted per replica.

s4_leader() {
  local leader uid cip
  leader=$(k -n "$NS1" get vidx demo -o jsonpath='{.status.shards[0].leader}')
  [[ $leader == demo-s0-* ]] || fail "no leader for shard 0 in status: '$leader'"
  uid=$(k -n "$NS1" get pod "$leader" -o jsonpath='{.metadata.uid}')
  cip=$(k -n "$NS1" get svc demo -o jsonpath='{.spec.clusterIP}')
  waitfor 30 curl -sf "http://$cip:7080/readyz"
  rm -f "$RUN/s4.stop"
  # The writer: one operation per request, bounded to 3000 requests / 240 s.
  python3 "$ROOT"/e2e/fullstack/py/history_writer.py "$RUN/s4.history" "$RUN/s4.stop" "http://$cip:7080" \
    >"$RUN/s4.writer" 2>&1 &
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
  grep -q '"outcome": "ok"' "$RUN/s4.history" || fail "no write was acknowledged"
  waitfor 120 shards_agree 3
  shards_agree 3
  local ips
  ips=$(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}')
  # shellcheck disable=SC2086 # one argument per pod IP
  python3 "$ROOT"/e2e/fullstack/py/history_check.py "$RUN/s4.history" $ips
}

check 4.1 "delete shard 0's leader pod under writes: back on its PVC, every replica matches the history (0 lost, resurrected, stale), replicas agree" s4_leader
