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

# spec.policies reaches every shard's Raft state machine (issue 16): the operator
# sends the quota (split over the 2 shards) to each shard leader, PoliciesSynced
# turns True, `kubectl kindex policy list` on every pod shows the version made by
# the resource; a reconcile of the unchanged resource makes no new version;
# removing the policy from the spec soft-deletes it.
s3_policies() {
  local t polj
  t=$(now)
  k -n "$NS1" patch vidx demo --type merge \
    -p '{"spec":{"policies":[{"name":"cap","kind":"quota","maxVectors":200000}]}}' >/dev/null
  waitfor 120 bash -c "[[ \$($KUBECTL --kubeconfig $KC -n $NS1 get vidx demo -o 'jsonpath={.status.conditions[?(@.type==\"PoliciesSynced\")].status}') == True ]]" ||
    fail "PoliciesSynced not True: $(k -n "$NS1" get vidx demo -o 'jsonpath={.status.conditions[?(@.type=="PoliciesSynced")]}')"
  echo "PoliciesSynced True $(since "$t")s after the change: $(k -n "$NS1" get vidx demo -o 'jsonpath={.status.conditions[?(@.type=="PoliciesSynced")].message}')"
  polj="$RUN/policies.json"
  # Followers apply the change shortly after the leader: poll until all 6 agree.
  waitfor 60 bash -c "PATH=$RUN/bin:\$PATH $KUBECTL kindex policy list -n $NS1 --index demo -o json >$polj 2>$RUN/policies.err &&
    python3 e2e/fullstack/py/policies_check.py $polj 6 cap 100000 1 >/dev/null" ||
    fail "policy stores: $(cat "$RUN/policies.err"; python3 e2e/fullstack/py/policies_check.py "$polj" 6 cap 100000 1 2>&1 | tail -1)"
  python3 e2e/fullstack/py/policies_check.py "$polj" 6 cap 100000 1
  # An unchanged resource reconciled again (annotation bump) makes no version.
  k -n "$NS1" annotate vidx demo kindex.dev/poke="$(date +%s)" --overwrite >/dev/null
  sleep 5
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex policy list -n "$NS1" --index demo -o json >"$polj"
  python3 e2e/fullstack/py/policies_check.py "$polj" 6 cap 100000 1 >/dev/null ||
    fail "a reconcile of the unchanged resource changed the stores: $(cat "$polj")"
  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"policies":[]}}' >/dev/null
  waitfor 60 bash -c "PATH=$RUN/bin:\$PATH $KUBECTL kindex policy list -n $NS1 --index demo -o json >$polj 2>$RUN/policies.err &&
    python3 e2e/fullstack/py/policies_check.py $polj 6 cap deleted 2 >/dev/null" ||
    fail "after removing the policy: $(cat "$RUN/policies.err"; python3 e2e/fullstack/py/policies_check.py "$polj" 6 cap deleted 2 2>&1 | tail -1)"
  echo "removed from the spec: soft-deleted (version 2) on all 6 pods"
}

check 3.2 "spec.policies: PoliciesSynced, every pod's store has the resource's quota, no version on re-reconcile, removal soft-deletes" s3_policies

# The other policy kinds of spec.policies on live pods (issue 16): a schema, a
# searchDefaults, a retention by a timestamp field and a per-tenant quota from the resource
# reach all 6 pods (PoliciesSynced; every pod's store holds each as written, made by the
# resource, checksums equal per shard), and the pods enforce them through the index's client
# Service: an upsert without the required field is refused naming it, a search over maxK and
# one without the required tenant match are refused, one matching a tenant answers. Removed
# at the end (later scenarios write points without a tenant).
s3_policy_kinds() {
  local t polj cip vec code
  t=$(now)
  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"policies":[
    {"name":"shape","kind":"schema","fields":{"tenant":{"type":"string","required":true}}},
    {"name":"search","kind":"searchDefaults","maxK":50,"requireMatch":["tenant"]},
    {"name":"keep","kind":"retention","maxAgeSeconds":8640000,"timestampField":"ts"},
    {"name":"per-tenant","kind":"quota","maxVectors":100000,"tenantField":"tenant"}]}}' >/dev/null
  waitfor 120 bash -c "[[ \$($KUBECTL --kubeconfig $KC -n $NS1 get vidx demo -o 'jsonpath={.status.conditions[?(@.type==\"PoliciesSynced\")].status}') == True ]]" ||
    fail "PoliciesSynced not True: $(k -n "$NS1" get vidx demo -o 'jsonpath={.status.conditions[?(@.type=="PoliciesSynced")]}')"
  echo "PoliciesSynced True $(since "$t")s after the change"
  polj="$RUN/policy-kinds.json"
  s3_stores() {
    PATH="$RUN/bin:$PATH" "$KUBECTL" kindex policy list -n "$NS1" --index demo -o json >"$polj" 2>"$RUN/policies.err" &&
      python3 e2e/fullstack/py/policies_check.py "$polj" 6 shape kind=schema 1 &&
      python3 e2e/fullstack/py/policies_check.py "$polj" 6 search kind=searchDefaults 1 &&
      python3 e2e/fullstack/py/policies_check.py "$polj" 6 keep kind=retention 1 &&
      python3 e2e/fullstack/py/policies_check.py "$polj" 6 per-tenant 50000 1 &&
      python3 - "$polj" <<'PY'
import json, sys
# The fields the node has only through spec.policies' typed fields: on every pod as written.
for n in json.load(open(sys.argv[1]))["nodes"]:
    p = n["store"]["policies"]
    keep, tenant = p["keep"]["versions"][-1]["policy"], p["per-tenant"]["versions"][-1]["policy"]
    if keep.get("timestampField") != "ts" or tenant.get("tenantField") != "tenant":
        sys.exit(f"{n['addr']}: keep {keep}, per-tenant {tenant}")
print("timestampField ts and tenantField tenant on all 6 pods")
PY
  }
  waitfor 60 s3_stores >/dev/null 2>&1 || { s3_stores; fail "policy stores: $(cat "$RUN/policies.err")"; }
  s3_stores

  cip=$(k -n "$NS1" get svc demo -o jsonpath='{.spec.clusterIP}')
  vec=$(python3 -c 'print([0.5] * 16)')
  # Each replica serving a request applies what it applied itself: retry briefly until every
  # pod behind the Service has it (the stores above are already equal, so this is at once).
  code=$(curl -s -o "$RUN/s33.out" -w '%{http_code}' -XPOST "http://$cip:7080/v1/indexes/demo/points" \
    -d "{\"points\":[{\"id\":\"no-tenant\",\"vector\":$vec,\"payload\":{\"x\":1}}]}")
  [[ $code == 400 ]] && grep -q tenant "$RUN/s33.out" ||
    fail "upsert without the required field: $code $(cat "$RUN/s33.out")"
  echo "upsert without 'tenant': $code $(cat "$RUN/s33.out")"
  code=$(curl -s -o "$RUN/s33.out" -w '%{http_code}' -XPOST "http://$cip:7080/v1/indexes/demo/points" \
    -d "{\"points\":[{\"id\":\"with-tenant\",\"vector\":$vec,\"payload\":{\"tenant\":\"a\"}}]}")
  [[ $code == 200 ]] || fail "upsert with the required field: $code $(cat "$RUN/s33.out")"
  code=$(curl -s -o "$RUN/s33.out" -w '%{http_code}' -XPOST "http://$cip:7080/v1/indexes/demo/search" \
    -d "{\"vector\":$vec,\"k\":100,\"filter\":{\"must\":[{\"field\":\"tenant\",\"match\":\"a\"}]}}")
  [[ $code == 400 ]] && grep -q "allows k up to 50" "$RUN/s33.out" || fail "search with k 100 > maxK 50: $code $(cat "$RUN/s33.out")"
  echo "search k=100: $code $(cat "$RUN/s33.out")"
  code=$(curl -s -o "$RUN/s33.out" -w '%{http_code}' -XPOST "http://$cip:7080/v1/indexes/demo/search" \
    -d "{\"vector\":$vec,\"k\":5}")
  [[ $code == 400 ]] && grep -q tenant "$RUN/s33.out" || fail "search without the tenant match: $code $(cat "$RUN/s33.out")"
  echo "search without a tenant match: $code $(cat "$RUN/s33.out")"
  code=$(curl -s -o "$RUN/s33.out" -w '%{http_code}' -XPOST "http://$cip:7080/v1/indexes/demo/search" \
    -d "{\"vector\":$vec,\"k\":5,\"filter\":{\"must\":[{\"field\":\"tenant\",\"match\":\"a\"}]}}")
  [[ $code == 200 ]] && grep -q with-tenant "$RUN/s33.out" || fail "search of tenant a: $code $(cat "$RUN/s33.out")"
  echo "search of tenant a: $code $(cat "$RUN/s33.out")"

  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"policies":[]}}' >/dev/null
  s3_removed() {
    PATH="$RUN/bin:$PATH" "$KUBECTL" kindex policy list -n "$NS1" --index demo -o json >"$polj" 2>"$RUN/policies.err" &&
      for n in shape search keep per-tenant; do python3 e2e/fullstack/py/policies_check.py "$polj" 6 "$n" deleted 2 || return 1; done
  }
  waitfor 60 s3_removed >/dev/null 2>&1 || { s3_removed; fail "after removing the policies: $(cat "$RUN/policies.err")"; }
  code=$(curl -s -o "$RUN/s33.out" -w '%{http_code}' -XPOST "http://$cip:7080/v1/indexes/demo/points/delete" \
    -d '{"ids":["with-tenant"]}')
  [[ $code == 200 ]] || fail "deleting the test point: $code $(cat "$RUN/s33.out")"
  echo "removed from the spec: all four soft-deleted (version 2) on all 6 pods"
}

check 3.3 "spec.policies schema, searchDefaults, retention by timestampField, per-tenant quota: on every pod's store, enforced through the client Service, removal soft-deletes" s3_policy_kinds
