# `kubectl kindex` against the real API server (sourced by e2e/run.sh, before
# the operator starts). No kubelet runs here, so pods never start: Pod objects
# are created by hand with the operator's labels, and their Ready status is
# patched in. This checks discovery through the kubeconfig and its errors
# (unknown index, no pods, no ready pod, RBAC); the port-forward itself needs a
# kubelet, so only the API server's refusal of it ("no host assigned") is
# checked, not a working forward.

target="${CARGO_TARGET_DIR:-target}"
PLUGIN_BIN="$target/debug/kubectl-kindex"
if [ ! -x "$PLUGIN_BIN" ]; then
  log "building kubectl-kindex"
  cargo build -p kindex --bin kubectl-kindex >&2
fi
PLUGIN_DIR="$WORK/plugins"
mkdir -p "$PLUGIN_DIR"
ln -sf "$(cd "$(dirname "$PLUGIN_BIN")" && pwd)/kubectl-kindex" "$PLUGIN_DIR/kubectl-kindex"
# kubectl runs plugins found on PATH; kubectl's own flags must not come before
# the plugin name, so the kubeconfig comes from KUBECONFIG.
kk() { KUBECONFIG="${KK_CONFIG:-$KC}" PATH="$PLUGIN_DIR:$PATH" "$KUBECTL" kindex "$@"; }
# expect_fail NAME PATTERN CMD...: CMD fails and its output contains PATTERN (fixed string).
expect_fail() {
  local pattern=$1
  shift
  if "$@" >"$WORK/plugin.out" 2>&1; then
    echo "succeeded unexpectedly:"; cat "$WORK/plugin.out"; return 1
  fi
  grep -qF -- "$pattern" "$WORK/plugin.out" || { echo "missing '$pattern' in:"; cat "$WORK/plugin.out"; return 1; }
}

check "kubectl finds the plugin on PATH" bash -c "PATH='$PLUGIN_DIR:$PATH' '$KUBECTL' plugin list 2>/dev/null | grep -q kubectl-kindex"

k create namespace plug >/dev/null
k apply -f - >/dev/null <<'YAML'
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata: {name: vecs, namespace: plug}
spec: {dimension: 8, metric: l2, shards: 1, replicas: 2}
YAML

check "unknown index: named, with the namespace's indexes" \
  expect_fail 'VectorIndex "nope" not found in namespace "plug"; it has: vecs' kk -n plug --index nope count
check "index without pods: says so" \
  expect_fail 'index "vecs" has no pods in namespace "plug" yet' kk -n plug --index vecs count

for i in 0 1; do
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: vecs-s0-$i
  namespace: plug
  labels: {app.kubernetes.io/name: kindex, app.kubernetes.io/instance: vecs, kindex.dev/shard: "0"}
spec:
  containers:
  - name: node
    image: kindex-node:e2e
    ports: [{name: grpc, containerPort: 7070}, {name: http, containerPort: 7080}]
YAML
done
check "no ready pod: each pod's state (the only index in the namespace is used)" \
  expect_fail 'no ready pod of index "vecs" in namespace "plug": vecs-s0-0 Pending, vecs-s0-1 Pending' kk -n plug count

k -n plug patch pod vecs-s0-1 --subresource=status --type=merge \
  -p '{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}' >/dev/null
# The ready pod is picked; without a kubelet the API server refuses to forward.
check "the ready pod is picked and port-forwarded (refused: no kubelet)" \
  expect_fail 'port-forward to pod/vecs-s0-1 port 7070 failed: pod vecs-s0-1 does not have a host assigned' kk -n plug count
k -n plug patch vidx vecs --subresource=status --type=merge \
  -p '{"status":{"phase":"Degraded","ready":"1/2","vectors":42}}' >/dev/null
status_shows_index_and_pods() {
  local out rc=0
  out=$(kk -n plug status 2>&1) || rc=$?
  echo "$out"
  [ "$rc" -ne 0 ] || { echo "expected a failure exit: no pod is reachable"; return 1; }
  grep -qF 'VectorIndex plug/vecs: phase Degraded, ready 1/2, 42 vectors' <<<"$out" &&
    [ "$(grep -c UNREACHABLE <<<"$out")" = 2 ] &&
    grep -qF 'pod/vecs-s0-0: pod is Pending' <<<"$out"
}
status_json() {
  # Exits 1 (no pod reachable) but still prints the document.
  local out
  out=$(kk -n plug status -o json 2>/dev/null) || true
  python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["vectorIndex"]["status"]["vectors"] == 42, d
assert [n["addr"] for n in d["nodes"]] == ["pod/vecs-s0-0", "pod/vecs-s0-1"], d
' <<<"$out"
}
check "status: VectorIndex status line and a row per pod" status_shows_index_and_pods
check "status -o json carries the VectorIndex status" status_json
check "--kubeconfig and --context flags" \
  expect_fail 'does not have a host assigned' env -u KUBECONFIG PATH="$PLUGIN_DIR:$PATH" "$KUBECTL" kindex \
    --kubeconfig "$KC" --context "$(k config current-context)" -n plug count
check "--addr overrides discovery" \
  expect_fail 'Count on http://127.0.0.1:1 failed' kk -n plug --addr 127.0.0.1:1 --timeout 3 count

# RBAC: a user who may read pods and indexes but not create pods/portforward,
# and one who may do nothing; both reached by impersonation from the admin.
k -n plug create role kindex-reader --verb=get,list --resource=pods,vectorindexes.kindex.dev >/dev/null
k -n plug create rolebinding alice-reads --role=kindex-reader --user=alice >/dev/null
as_user() {
  k config view --raw -o json | python3 -c "import json,sys; c=json.load(sys.stdin); [u['user'].__setitem__('as', sys.argv[1]) for u in c['users']]; json.dump(c, sys.stdout)" "$1" >"$WORK/$1.kubeconfig"
  echo "$WORK/$1.kubeconfig"
}
KK_CONFIG=$(as_user alice)
check "RBAC: missing pods/portforward is named" \
  expect_fail 'forbidden: you may not create pods/portforward in namespace "plug"' kk -n plug count
KK_CONFIG=$(as_user bob)
check "RBAC: missing pod list is named" \
  expect_fail 'forbidden: you may not list pods in namespace "plug"' kk -n plug --index vecs count
unset KK_CONFIG

k delete namespace plug --wait=false >/dev/null
