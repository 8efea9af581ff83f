#!/usr/bin/env bash
# The Kubernetes test tier: a real kube-apiserver (+ etcd and
# kube-controller-manager) built from Go modules, on loopback.
#
# Checks, in order:
#   1. the VectorIndex CRD is accepted and established;
#   2. valid examples are accepted, invalid ones rejected (schema ranges and
#      enums; CEL admission rules on name, image, storage size and resource
#      quantities) with the message each example's `# expect:` line names,
#      invalid updates rejected with the CEL message;
#   3. printer columns (kubectl get vidx);
#   4. kubectl kindex: discovery through the kubeconfig (e2e/kubectl-plugin.sh)
#      and the operator against the real API server (e2e/operator.sh);
#   5. the Helm chart and the kustomize base with --dry-run=server, schema
#      rejections, CRD copy drift, and RBAC checked by running the operator as
#      its ServiceAccount (e2e/chart-tests.sh).
# Prints "N passed, M failed" and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. e2e/lib.sh

eval "$(bash e2e/scripts/tools.sh)"
testenv_start

step "CRD"
k apply --server-side --field-manager=kindex-e2e -f crds/vectorindex.yaml >/dev/null
check "CRD established" k wait --for condition=Established --timeout=60s crd/vectorindexes.kindex.dev
retry 50 0.2 k get vidx >/dev/null 2>&1 || true

step "valid examples"
for f in deploy/examples/minimal.yaml deploy/examples/production.yaml; do
  check "accepted: $f" retry 20 0.3 k apply -f "$f"
done
check "defaults applied by the API server (replicas=1, efSearch=64)" \
  test "$(k get vidx demo -o jsonpath='{.spec.replicas}/{.spec.hnsw.efSearch}')" = "1/64"

step "invalid objects are rejected, with a message naming the field"
# Each example's `# expect:` line is what the API server's refusal must contain.
for f in deploy/examples/invalid/*.yaml; do
  want=$(sed -n 's/^# expect: //p' "$f")
  [ -n "$want" ] || { echo "  $f has no '# expect:' line" >&2; exit 1; }
  check_rejected "rejected: $f" "$want" k apply -f "$f"
done

step "invalid updates are rejected with the CEL message"
for f in deploy/examples/invalid-updates/*.yaml; do
  check_rejected "rejected: $f" "immutable" k apply -f "$f"
done
check "dimension unchanged after rejected updates" \
  test "$(k get vidx demo -o jsonpath='{.spec.dimension}')" = "384"
check "a runtime knob can change" k patch vidx demo --type merge -p '{"spec":{"hnsw":{"efSearch":128}}}'

step "printer columns"
cols=$(k get vidx demo | sed -n 1p) # sed reads it all: `head` could SIGPIPE kubectl (pipefail)
echo "$cols"
check "columns SHARDS REPLICAS READY VECTORS PHASE AGE" \
  bash -c "echo '$cols' | grep -qE 'SHARDS +REPLICAS +READY +VECTORS +PHASE +AGE'"
check "short name vidx and scale subresource" k get --raw /apis/kindex.dev/v1alpha1/namespaces/default/vectorindexes/demo/scale
k delete vidx --all --wait=false >/dev/null

if [ -f e2e/kubectl-plugin.sh ]; then
  step "kubectl kindex: discovery through the kubeconfig"
  . e2e/kubectl-plugin.sh
fi

if [ -f e2e/operator.sh ]; then
  step "operator"
  . e2e/operator.sh
fi

# Server-side dry runs need the target namespace to exist.
k create namespace kindex-system >/dev/null 2>&1 || true
if [ -f deploy/kustomization.yaml ]; then
  step "kustomize base (server dry-run)"
  check "kubectl apply -k deploy --dry-run=server" k apply -k deploy --dry-run=server
fi
if [ -f charts/kindex/Chart.yaml ]; then
  step "Helm chart"
  check "helm lint" "$HELM" lint charts/kindex
  check "helm template | kubectl apply --dry-run=server" \
    bash -c "'$HELM' template kindex charts/kindex --namespace kindex-system | '$KUBECTL' --kubeconfig '$KC' apply --dry-run=server -f -"
fi

if [ -f e2e/chart-tests.sh ]; then
  step "chart, kustomize and RBAC (least privilege, as the operator's ServiceAccount)"
  . e2e/chart-tests.sh
fi

summary
