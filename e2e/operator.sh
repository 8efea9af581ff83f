# The operator against the real API server (sourced by e2e/run.sh).
# No kubelet runs here, so pods never start: this checks the objects the
# operator owns, its status reporting, scaling of the StatefulSets, runtime
# knobs, garbage collection and leader election. Raft membership steps need
# running pods and are covered by the operator's scenario tests.

target="${CARGO_TARGET_DIR:-target}"
OP_BIN="$target/debug/kindex-operator"
if [ ! -x "$OP_BIN" ]; then
  log "building kindex-operator"
  cargo build -p kindex-operator >&2
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
jp() { k get "$1" -o jsonpath="$2"; }
# eq NAME EXPECTED OBJ JSONPATH: wait (bounded) until the field equals EXPECTED.
eq() { wait_for "$1" 60 test_eq "$2" "$3" "$4"; }
test_eq() { local got; got=$(jp "$2" "$3"); [ "$got" = "$1" ] || { echo "expected '$1', got '$got'"; return 1; }; }

declare -A OP_PID OP_PORT
start_operator() {
  local id=$1 port
  port=$(free_port)
  "$OP_BIN" --kubeconfig "$KC" --namespace default --lease-namespace default --identity "$id" \
    --metrics-addr "127.0.0.1:$port" --requeue 5s --step-requeue 1s --wait-requeue 2s \
    >"$WORK/operator-$id.log" 2>&1 &
  OP_PID[$id]=$!
  OP_PORT[$id]=$port
  PIDS+=($!)
}

start_operator op-a
start_operator op-b
k apply -f deploy/examples/minimal.yaml >/dev/null

wait_for "ConfigMap demo-config" 60 k get configmap demo-config
wait_for "client Service demo" 60 k get service demo
eq "headless Service publishes not-ready addresses" true service/demo-s0-headless '{.spec.publishNotReadyAddresses}'
eq "StatefulSet demo-s0 uses OnDelete" OnDelete statefulset/demo-s0 '{.spec.updateStrategy.type}'
eq "StatefulSet has a data volumeClaimTemplate" data statefulset/demo-s0 '{.spec.volumeClaimTemplates[0].metadata.name}'
eq "StatefulSet probes /readyz" /readyz statefulset/demo-s0 '{.spec.template.spec.containers[0].readinessProbe.httpGet.path}'
wait_for "PodDisruptionBudget demo-s0" 60 k get pdb demo-s0
wait_for "NetworkPolicy demo-kindex" 60 k get networkpolicy demo-kindex
eq "NetworkPolicy: Raft and admin from the index's pods" "7070 7071 7072 7080" networkpolicy/demo-kindex '{.spec.ingress[0].ports[*].port}'
for obj in configmap/demo-config service/demo service/demo-s0-headless statefulset/demo-s0 poddisruptionbudget/demo-s0 networkpolicy/demo-kindex; do
  eq "owner reference on $obj" "VectorIndex/demo/true" "$obj" '{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}'
  eq "field manager kindex-operator on $obj" kindex-operator "$obj" '{.metadata.managedFields[?(@.manager=="kindex-operator")].manager}'
done
k patch vidx demo --type merge -p '{"spec":{"network":{"policy":false}}}' >/dev/null
wait_for "spec.network.policy false deletes the NetworkPolicy" 60 bash -c "! '$KUBECTL' --kubeconfig '$KC' get networkpolicy demo-kindex >/dev/null 2>&1"
k patch vidx demo --type merge -p '{"spec":{"network":null}}' >/dev/null
wait_for "the NetworkPolicy is back by default" 60 k get networkpolicy demo-kindex
eq "status.phase Creating (no pods without a kubelet)" Creating vectorindex/demo '{.status.phase}'
eq "condition Progressing=True" True vectorindex/demo '{.status.conditions[?(@.type=="Progressing")].status}'
eq "condition Ready=False" False vectorindex/demo '{.status.conditions[?(@.type=="Ready")].status}'
gen=$(jp vectorindex/demo '{.metadata.generation}')
eq "observedGeneration" "$gen" vectorindex/demo '{.status.observedGeneration}'
eq "status.selector for the scale subresource" "app.kubernetes.io/instance=demo,app.kubernetes.io/name=kindex" vectorindex/demo '{.status.selector}'
check "kubectl get vidx shows the phase" bash -c "'$KUBECTL' --kubeconfig '$KC' get vidx demo | grep -q Creating"

step "operator: scaling and runtime knobs"
k scale vidx demo --replicas 3 >/dev/null
eq "scale to 3 updates the StatefulSet" 3 statefulset/demo-s0 '{.spec.replicas}'
sts_gen=$(jp statefulset/demo-s0 '{.metadata.generation}')
k patch vidx demo --type merge -p '{"spec":{"hnsw":{"efSearch":200}}}' >/dev/null
wait_for "efSearch change reaches the ConfigMap" 60 bash -c "'$KUBECTL' --kubeconfig '$KC' get configmap demo-config -o jsonpath='{.data.runtime\.json}' | grep -q '\"efSearch\": *200'"
sleep 3
check "runtime knob change leaves the StatefulSet template alone" test "$(jp statefulset/demo-s0 '{.metadata.generation}')" = "$sts_gen"

step "operator: peer mTLS (spec.peerTls)"
k apply -f - >/dev/null <<'YAML'
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata: {name: sec}
spec: {dimension: 8, metric: l2, shards: 1, replicas: 1, peerTls: {enabled: true}}
YAML
wait_for "the operator creates the CA Secret sec-peer-ca" 60 k get secret sec-peer-ca
eq "the pods' Secret sec-peer-tls is a TLS Secret" kubernetes.io/tls secret/sec-peer-tls '{.type}'
for obj in secret/sec-peer-ca secret/sec-peer-tls; do
  eq "owner reference on $obj" "VectorIndex/sec/true" "$obj" '{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}'
done
peer_cert_ok() {
  local d="$WORK/sec-tls"
  mkdir -p "$d"
  for f in tls.crt ca.crt; do
    k get secret sec-peer-tls -o jsonpath="{.data.${f//./\\.}}" | base64 -d >"$d/$f" || return 1
  done
  openssl verify -CAfile "$d/ca.crt" "$d/tls.crt" &&
    openssl x509 -in "$d/tls.crt" -noout -ext subjectAltName | grep -q 'DNS:sec.default.kindex-peer' &&
    ! k get secret sec-peer-tls -o jsonpath='{.data}' | grep -q 'ca\.key'
}
check "the pods' certificate chains to the index CA, names sec.default.kindex-peer, no CA key in the pods' Secret" peer_cert_ok
eq "the StatefulSet mounts the pods' Secret" sec-peer-tls statefulset/sec-s0 '{.spec.template.spec.volumes[?(@.name=="peer-tls")].secret.secretName}'
check "the node is started with --peer-tls-dir and the index's peer name" bash -c \
  "'$KUBECTL' --kubeconfig '$KC' get statefulset sec-s0 -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -q '\"--peer-tls-dir\",\"/etc/kindex-peer-tls\",\"--peer-tls-server-name\",\"sec.default.kindex-peer\"'"
check_rejected "the API server refuses switching peer mTLS off on a running index" \
  "peerTls.enabled is set when the index is created" k patch vidx sec --type merge -p '{"spec":{"peerTls":{"enabled":false}}}'
check_rejected "the API server refuses switching peer mTLS on on a running index" \
  "peerTls.enabled is set when the index is created" k patch vidx demo --type merge -p '{"spec":{"peerTls":{"enabled":true}}}'
k delete vidx sec --wait=false >/dev/null
wait_for "the peer TLS Secrets are garbage-collected with the index" 90 bash -c "! '$KUBECTL' --kubeconfig '$KC' get secret sec-peer-ca sec-peer-tls 2>/dev/null"

step "operator: leader election and metrics"
holder=$(jp lease/kindex-operator '{.spec.holderIdentity}')
check "one operator holds the Lease ($holder)" bash -c "[ '$holder' = op-a ] || [ '$holder' = op-b ]"
check "metrics count reconciles" bash -c "curl -sf http://127.0.0.1:${OP_PORT[$holder]}/metrics | grep -q '^kindex_operator_reconciles_total'"
check "operator /healthz" curl -sf "http://127.0.0.1:${OP_PORT[$holder]}/healthz"
other=op-a; [ "$holder" = op-a ] && other=op-b
kill -TERM "${OP_PID[$holder]}"
wait_for "the standby takes the Lease after the leader stops" 90 test_eq "$other" lease/kindex-operator '{.spec.holderIdentity}'
k patch vidx demo --type merge -p '{"spec":{"hnsw":{"efSearch":100}}}' >/dev/null
wait_for "the new leader reconciles" 60 bash -c "'$KUBECTL' --kubeconfig '$KC' get configmap demo-config -o jsonpath='{.data.runtime\.json}' | grep -q '\"efSearch\": *100'"

step "operator: invalid spec and deletion"
long_name=$(cat <<'YAML'
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata: {name: this-name-is-far-too-long-for-the-derived-pod-names-x}
spec: {dimension: 8, metric: l2, shards: 1, replicas: 1}
YAML
)
check_rejected "the API server refuses a name the operator cannot use" \
  "metadata.name must be at most 40 characters" bash -c "echo '$long_name' | '$KUBECTL' --kubeconfig '$KC' apply -f -"
# An object that slipped past an older CRD (without the name rules) must still be reported
# by the operator, not crash-loop it: drop the root rules, create it, restore the CRD.
k patch crd vectorindexes.kindex.dev --type json \
  -p '[{"op": "remove", "path": "/spec/versions/0/schema/openAPIV3Schema/x-kubernetes-validations"}]' >/dev/null
check "created under a CRD without the name rules" retry 50 0.2 bash -c "echo '$long_name' | '$KUBECTL' --kubeconfig '$KC' apply -f - >/dev/null"
eq "invalid spec is reported as Failed, not crash-looped" Failed vectorindex/this-name-is-far-too-long-for-the-derived-pod-names-x '{.status.phase}'
k apply --server-side --force-conflicts --field-manager=kindex-e2e -f crds/vectorindex.yaml >/dev/null
check "the operator is still running" kill -0 "${OP_PID[$other]}"
# The StatefulSet controller creates the claim with the (pending) pod.
wait_for "PersistentVolumeClaim data-demo-s0-0 created from the claim template" 90 k get pvc data-demo-s0-0
k delete vidx demo --wait=false >/dev/null
wait_for "owned StatefulSet garbage-collected" 90 bash -c "! '$KUBECTL' --kubeconfig '$KC' get statefulset demo-s0 2>/dev/null"
wait_for "owned ConfigMap garbage-collected" 90 bash -c "! '$KUBECTL' --kubeconfig '$KC' get configmap demo-config 2>/dev/null"
wait_for "owned Services garbage-collected" 90 bash -c "! '$KUBECTL' --kubeconfig '$KC' get service demo demo-s0-headless 2>/dev/null"
check "retainOnDelete (default true) keeps the PersistentVolumeClaim" k get pvc data-demo-s0-0
