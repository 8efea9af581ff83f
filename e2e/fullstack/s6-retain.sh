# Scenario 6 (needs scenario 1's operator): deleting a VectorIndex removes its
# pods, StatefulSets and Services and keeps the PVCs when
# storage.retainOnDelete; re-creating it brings the same data back. Without
# retainOnDelete the PVCs (and their volumes) go with it; a scale-down keeps
# the removed replica's PVC either way (whenScaled: Retain).
NS6=s6

s6_apply() {
  k -n $NS6 apply -f - >/dev/null <<'EOF'
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata:
  name: keep
spec:
  dimension: 8
  metric: l2
  shards: 2
  replicas: 1
  storage:
    size: 32Mi
    retainOnDelete: true
EOF
}

s6_ready() {
  [[ $(k -n $NS6 get vidx keep -o jsonpath='{.status.phase} {.status.conditions[?(@.type=="Ready")].status}') == 'Ready True' ]]
}

s6_retain() {
  k create namespace $NS6 >/dev/null
  s6_apply
  waitfor 300 s6_ready
  python3 - "$RUN/keep.jsonl" <<'PY'
import json, random, sys
rnd = random.Random(7)
with open(sys.argv[1], "w") as f:
    for i in range(1000):
        f.write(json.dumps({"id": f"k{i}", "vector": [round(rnd.uniform(-1, 1), 4) for _ in range(8)]}) + "\n")
PY
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex upsert -n $NS6 --index keep --file "$RUN/keep.jsonl" -o json >/dev/null
  waitfor 120 bash -c "[[ \$($KUBECTL -n $NS6 get vidx keep -o jsonpath='{.status.vectors}') == 1000 ]]"
  pvcs=$(k -n $NS6 get pvc -o jsonpath='{.items[*].metadata.name}')
  echo "PVCs: $pvcs"
  [[ $(wc -w <<<"$pvcs") == 2 ]] || fail "want 2 PVCs"
  k -n $NS6 delete vidx keep --wait=true --timeout=120s >/dev/null
  waitfor 120 bash -c "[[ -z \$($KUBECTL -n $NS6 get pods,statefulsets,services -o name) ]]"
  [[ $(k -n $NS6 get pvc -o jsonpath='{.items[*].metadata.name}') == "$pvcs" ]] || fail "PVCs not kept"
  echo "pods, StatefulSets, Services gone; PVCs kept"
  t=$(now)
  s6_apply
  waitfor 300 s6_ready
  waitfor 120 bash -c "[[ \$($KUBECTL -n $NS6 get vidx keep -o jsonpath='{.status.vectors}') == 1000 ]]"
  echo "re-created: Ready with 1000 vectors after $(since "$t")s"
  out=$(PATH="$RUN/bin:$PATH" "$KUBECTL" kindex get -n $NS6 --index keep k42 -o json)
  grep -q '"k42"' <<<"$out" || fail "k42 not found after re-creation: $out"
}

check 6.1 "delete with retainOnDelete keeps PVCs; re-create brings the data back" s6_retain

# 6.2 The StatefulSet's PVC retention policy as the operator sets it, carried
# out by kube-controller-manager: whenScaled Retain (a replica removed by a
# scale-down keeps its claim), whenDeleted Delete without retainOnDelete.
s6_drop() {
  k -n $NS6 apply -f - >/dev/null <<'EOF'
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata:
  name: drop
spec:
  dimension: 8
  metric: l2
  shards: 1
  replicas: 2
  storage:
    size: 32Mi
    retainOnDelete: false
EOF
  drop_ready() {
    [[ $(k -n $NS6 get vidx drop -o jsonpath='{.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.status.ready}') == "Ready True $1" ]]
  }
  pvcs() { k -n $NS6 get pvc -l app.kubernetes.io/instance=drop -o jsonpath='{.items[*].metadata.name}'; }
  waitfor 300 drop_ready 2/2
  [[ $(pvcs | wc -w) == 2 ]] || fail "want 2 PVCs, have '$(pvcs)'"
  pvs=$(k -n $NS6 get pvc -l app.kubernetes.io/instance=drop -o jsonpath='{.items[*].spec.volumeName}')
  t=$(now)
  k -n $NS6 patch vidx drop --type merge -p '{"spec":{"replicas":1}}' >/dev/null
  waitfor 300 bash -c "[[ \$($KUBECTL -n $NS6 get pods -l app.kubernetes.io/instance=drop -o name | wc -l) == 1 ]]"
  waitfor 120 drop_ready 1/1
  [[ $(pvcs | wc -w) == 2 ]] || fail "scale-down removed a PVC: '$(pvcs)'"
  echo "scaled 2 -> 1 in $(since "$t")s; both PVCs kept (whenScaled Retain)"
  k -n $NS6 delete vidx drop --wait=true --timeout=120s >/dev/null
  waitfor 120 bash -c "[[ -z \$($KUBECTL -n $NS6 get pvc -l app.kubernetes.io/instance=drop -o name) ]]"
  for pv in $pvs; do
    waitfor 60 bash -c "! $KUBECTL get pv $pv >/dev/null 2>&1"
  done
  echo "deleted without retainOnDelete: PVCs and their volumes ($pvs) gone"
}

check 6.2 "scale-down keeps the PVC; delete without retainOnDelete removes PVCs" s6_drop
