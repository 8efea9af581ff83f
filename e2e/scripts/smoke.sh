#!/usr/bin/env bash
# Smoke test of the Kubernetes test tier: builds (or reuses) the tools, starts
# kindex-testenv (kube-apiserver + etcd + kube-controller-manager) on
# loopback, and checks what kindex's tests will rely on:
#   - kubectl talks to the server (version, api-resources);
#   - a CRD with a CEL `self == oldSelf` rule accepts valid objects and
#     updates and rejects a change of the immutable field with the CEL message;
#   - a static-token user is held to RBAC;
#   - the garbage collector deletes an object whose owner was deleted;
#   - helm installs and uninstalls a chart.
# Exits 0 when all pass. Everything it starts is stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
READY_TIMEOUT=${READY_TIMEOUT:-120}

log() { echo "smoke: $*" >&2; }
fail() {
	log "FAIL: $*"
	exit 1
}

eval "$(bash "$here/tools.sh")"

work=$(mktemp -d "${TMPDIR:-/tmp}/kindex-smoke.XXXXXX")
env_pid=""
cleanup() {
	local rc=$?
	if [[ -n "$env_pid" ]] && kill -0 "$env_pid" 2>/dev/null; then
		kill -TERM "$env_pid" 2>/dev/null || true
		for _ in $(seq 1 300); do kill -0 "$env_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$env_pid" 2>/dev/null || true
		wait "$env_pid" 2>/dev/null || true
	fi
	if [[ $rc != 0 && -f "$work/testenv.log" ]]; then
		log "last lines of the kindex-testenv log:"
		tail -n 40 "$work/testenv.log" >&2
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT

kc="$work/admin.kubeconfig"
start=$(date +%s%N)
# --max-lifetime bounds the environment even if this script is killed hard.
"$KINDEX_TESTENV" --controller-manager --kubeconfig-out "$kc" --max-lifetime 10m \
	--extra-token "smoke-viewer-token,viewer,viewer-uid,smoke-viewers" \
	>"$work/testenv.out" 2>"$work/testenv.log" &
env_pid=$!
deadline=$((SECONDS + READY_TIMEOUT))
until grep -q '^READY ' "$work/testenv.out" 2>/dev/null; do
	kill -0 "$env_pid" 2>/dev/null || fail "kindex-testenv exited before READY"
	((SECONDS < deadline)) || fail "kindex-testenv not READY after ${READY_TIMEOUT}s"
	sleep 0.1
done
log "READY after $((($(date +%s%N) - start) / 1000000)) ms: $(cat "$work/testenv.out")"

k() { "$KUBECTL" --kubeconfig "$kc" "$@"; }

log "kubectl version"
k version
log "kubectl api-resources | head"
k api-resources | head -n 8 || true # head closes the pipe early

log "CRD with a CEL immutability rule"
k apply -f - <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.kindex.dev
spec:
  group: smoke.kindex.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [shards]
              properties:
                shards:
                  type: integer
                  minimum: 1
                  x-kubernetes-validations:
                    - rule: self == oldSelf
                      message: shards is immutable
                replicas:
                  type: integer
                  minimum: 1
EOF
k wait --for condition=Established --timeout=60s crd/widgets.smoke.kindex.dev

widget() { # widget SHARDS REPLICAS
	printf 'apiVersion: smoke.kindex.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {shards: %s, replicas: %s}\n' "$1" "$2"
}
# The API may serve the new type a moment after Established; retry briefly.
for i in $(seq 1 50); do
	widget 3 1 | k apply -f - 2>"$work/err" && break
	((i < 50)) || fail "creating a valid Widget: $(cat "$work/err")"
	sleep 0.2
done
widget 3 2 | k apply -f - || fail "a valid update (replicas 1 -> 2) was rejected"
k get widget w1 -o jsonpath='{.spec}{"\n"}'
if widget 4 2 | k apply -f - 2>"$work/err"; then
	fail "changing the immutable field shards was accepted"
fi
grep -q 'shards is immutable' "$work/err" || fail "rejected without the CEL message: $(cat "$work/err")"
log "rejected as expected: $(cat "$work/err")"
[[ "$(k get widget w1 -o jsonpath='{.spec.shards}')" == 3 ]] || fail "shards changed"
if printf 'apiVersion: smoke.kindex.dev/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {shards: 0}\n' |
	k create -f - 2>"$work/err"; then
	fail "shards: 0 (below minimum) was accepted"
fi
log "rejected as expected: $(cat "$work/err")"

log "RBAC: a static-token user gets only what a RoleBinding grants"
"$KINDEX_TESTENV" kubeconfig --from "$kc" --token smoke-viewer-token --user viewer --out "$work/viewer.kubeconfig"
kv() { "$KUBECTL" --kubeconfig "$work/viewer.kubeconfig" "$@"; }
[[ "$(kv auth can-i list widgets.smoke.kindex.dev || true)" == no ]] || fail "viewer could list widgets before any grant"
k create role widget-reader --verb=get,list --resource=widgets.smoke.kindex.dev
k create rolebinding widget-readers --role=widget-reader --group=smoke-viewers
for i in $(seq 1 50); do # the RBAC authorizer's cache catches up within a moment
	[[ "$(kv auth can-i list widgets.smoke.kindex.dev || true)" == yes ]] && break
	((i < 50)) || fail "viewer still cannot list widgets after the RoleBinding"
	sleep 0.2
done
kv get widgets
if kv delete widget w1 2>"$work/err"; then fail "viewer could delete a widget"; fi
log "forbidden as expected: $(cat "$work/err")"

log "garbage collection (kube-controller-manager)"
k create configmap gc-owner --from-literal=a=b
owner_uid=$(k get configmap gc-owner -o jsonpath='{.metadata.uid}')
k apply -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: gc-child
  ownerReferences:
    - {apiVersion: v1, kind: ConfigMap, name: gc-owner, uid: "$owner_uid"}
data: {k: "v"}
EOF
k delete configmap gc-owner
for i in $(seq 1 100); do
	k get configmap gc-child >/dev/null 2>&1 || break
	((i < 100)) || fail "the garbage collector did not delete gc-child within 20s"
	sleep 0.2
done
log "gc-child was garbage-collected"

log "helm"
"$HELM" version
mkdir -p "$work/chart/templates"
printf 'apiVersion: v2\nname: smoke\nversion: 0.1.0\n' >"$work/chart/Chart.yaml"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-cm}\ndata: {shards: "{{ .Values.shards }}"}\n' \
	>"$work/chart/templates/cm.yaml"
printf 'shards: 3\n' >"$work/chart/values.yaml"
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"
"$HELM" --kubeconfig "$kc" install smoke "$work/chart" --set shards=5
[[ "$(k get configmap smoke-cm -o jsonpath='{.data.shards}')" == 5 ]] || fail "helm release object missing or wrong"
"$HELM" --kubeconfig "$kc" uninstall smoke

log "PASS (total $((($(date +%s%N) - start) / 1000000)) ms after start)"
