# Scenario 3 (builds on scenario 1's index s1/demo): changing
# spec.hnsw.efSearch reaches every node without a restart. The operator
# rewrites the runtime ConfigMap, the agent updates the mounted file in place
# (atomic ..data swap, as a kubelet does), each node reloads it; each pod's own
# log (kubectl logs) shows the new value and no restartCount moves.
s3_efsearch() {
  pods=$(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo -o jsonpath='{.items[*].metadata.name}')
  before=$(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo -o jsonpath='{range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount} {end}')
  t=$(now)
  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"hnsw":{"efSearch":173}}}' >/dev/null
  for p in $pods; do
    waitfor 180 bash -c "$KUBECTL -n $NS1 logs $p | grep 'runtime config reloaded' | grep -q 'ef_search: 173'"
  done
  echo "efSearch 173 reached all $(wc -w <<<"$pods") nodes in $(since "$t")s"
  after=$(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo -o jsonpath='{range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount} {end}')
  [[ $before == "$after" ]] || fail "restart counts changed: $before -> $after"
  echo "restart counts unchanged: $after"
}

check 3.1 "efSearch change reaches every node without a restart" s3_efsearch
