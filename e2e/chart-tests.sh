#!/usr/bin/env bash
# Packaging tests: the Helm chart (charts/kindex), the kustomize base (deploy/)
# and the Dockerfiles, against a real kube-apiserver.
#
#   bash e2e/chart-tests.sh     standalone: builds/reuses the tools (e2e/scripts/tools.sh)
#                               and starts its own kindex-testenv
#   . e2e/chart-tests.sh        from e2e/run.sh, after the API server is up: uses
#                               lib.sh's check/wait_for/retry/step, k, $KC, $HELM, $KUBECTL
#
# Checks:
#   1. versions: Chart version/appVersion, deploy/ images, Dockerfile VERSION
#      == the Cargo workspace version
#   2. the CRD copies in charts/kindex/crds/ and deploy/crds/ are byte-identical
#      to the generated crds/vectorindex.yaml (and are regular files, not symlinks)
#   3. values.schema.json rejects every file in charts/kindex/ci/invalid/ with the
#      error named on its `# expect:` line; every ci/*-values.yaml lints and renders
#   4. deploy/ renders the same objects as the chart's defaults
#   5. dashboard JSON, PrometheusRule, helm package contents, Dockerfile paths
#   6. server-side dry-run of every ci values render and of deploy/; the operator
#      pod template passes the "restricted" Pod Security Standard (enforced)
#   7. RBAC for real: the chart applied into kindex-system, then
#      `kubectl auth can-i --as=system:serviceaccount:kindex-system:kindex-operator`
#      for every verb the operator needs (granted) and a list it must not have
#      (denied); when a kindex-operator binary is built ($KINDEX_OPERATOR_BIN,
#      $CARGO_TARGET_DIR/debug or target/debug), it runs with the Deployment's
#      args and env as that ServiceAccount (the testenv's static token) and must
#      take its Lease, create an index's objects and write status with no 403;
#      a `helm install` with watchNamespace (Role in one namespace only); then
#      everything is uninstalled.
# Only objects this script created are removed. It never deletes namespace
# kindex-system (e2e/run.sh may still use it).

ct_standalone=0
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  ct_standalone=1
  set -euo pipefail
  cd "$(dirname "$0")/.."
  . e2e/lib.sh
  eval "$(bash e2e/scripts/tools.sh)"
  testenv_start
fi

ct_dir="$WORK/chart-tests"
mkdir -p "$ct_dir"
ct_chart=charts/kindex
ct_sa=system:serviceaccount:kindex-system:kindex-operator

ct_helm() { "$HELM" --kubeconfig "$KC" "$@"; }

# ---------------------------------------------------------------- 1. versions
step "packaging: versions follow the Cargo workspace"
ct_ws_version=$(awk '
  /^\[/ { sect = $0 }
  sect == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
' Cargo.toml)
ct_field() { awk -v k="$1:" '$1 == k { v = $2; gsub(/"/, "", v); print v; exit }' "$2"; }
ct_same() { # NAME EXPECTED ACTUAL
  if [[ "$2" == "$3" ]]; then echo "$1: $3"; else echo "$1: '$3', expected '$2'"; return 1; fi
}
check "workspace version is set ($ct_ws_version)" test -n "$ct_ws_version"
check "Chart.yaml version == workspace version" \
  ct_same "Chart version" "$ct_ws_version" "$(ct_field version $ct_chart/Chart.yaml)"
check "Chart.yaml appVersion == workspace version" \
  ct_same "Chart appVersion" "$ct_ws_version" "$(ct_field appVersion $ct_chart/Chart.yaml)"
check "deploy/ image tags == workspace version" bash -c '
  imgs=$(grep -ho "kindex/kindex-[a-z]*:[^[:space:]\"]*" deploy/deployment.yaml | sort -u)
  echo "$imgs"
  [ "$(echo "$imgs" | wc -l)" = 2 ] || exit 1
  ! echo "$imgs" | grep -v ":$1\$"' _ "$ct_ws_version"
for ct_df in Dockerfile.node Dockerfile.operator; do
  check "$ct_df ARG VERSION == workspace version" \
    ct_same "$ct_df" "$ct_ws_version" "$(sed -n 's/^ARG VERSION=//p' "$ct_df" | head -1)"
done

# ----------------------------------------------------------- 2. CRD copies
step "packaging: CRD copies match crds/vectorindex.yaml"
for ct_copy in $ct_chart/crds/vectorindex.yaml deploy/crds/vectorindex.yaml; do
  check "$ct_copy is a regular file (not a symlink: GitOps tools drop symlinks)" \
    bash -c '[ -f "$1" ] && [ ! -L "$1" ]' _ "$ct_copy"
  check "$ct_copy == crds/vectorindex.yaml (refresh: cp crds/vectorindex.yaml $ct_copy)" \
    cmp crds/vectorindex.yaml "$ct_copy"
done
check "the chart's crds/ holds only the VectorIndex CRD" \
  test "$(ls $ct_chart/crds)" = "vectorindex.yaml"

# ------------------------------------------------------ 3. values and schema
step "packaging: values.schema.json"
check "values.schema.json is JSON Schema draft-07 with additionalProperties: false" \
  python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
assert s["$schema"] == "http://json-schema.org/draft-07/schema#", s["$schema"]
assert s["additionalProperties"] is False
' $ct_chart/values.schema.json
ct_rejects() { # EXPECTED VALUES_FILE: helm must refuse to render, saying EXPECTED
  local out
  if out=$("$HELM" template kindex $ct_chart --namespace kindex-system --values "$2" 2>&1); then
    echo "accepted: $2"
    return 1
  fi
  echo "$out" | tail -n 3
  [[ -n "$1" ]] && grep -qF -- "$1" <<<"$out"
}
for ct_bad in "$ct_chart"/ci/invalid/*.yaml; do
  ct_expect=$(sed -n '1s/^# expect: //p' "$ct_bad")
  check "rejected values: ${ct_bad#"$ct_chart"/} -> $ct_expect" ct_rejects "$ct_expect" "$ct_bad"
done
for ct_vals in "$ct_chart"/ci/*-values.yaml; do
  check "helm lint --strict -f ${ct_vals#"$ct_chart"/}" "$HELM" lint --strict $ct_chart --values "$ct_vals"
  check "helm template -f ${ct_vals#"$ct_chart"/}" bash -c \
    '"$HELM" template kindex "$1" --namespace kindex-system --include-crds --values "$2" >"$3"' \
    _ $ct_chart "$ct_vals" "$ct_dir/$(basename "$ct_vals" .yaml).yaml"
done

# ----------------------------------------------- 4. deploy/ == chart defaults
step "packaging: deploy/ matches the chart's defaults"
# Both sides without what only one of them has: the Namespace object (Helm
# does not own the release namespace) and Helm's bookkeeping labels.
ct_normalize() { # FILE -> canonical JSON, one object per line, sorted
  python3 - "$1" <<'PY'
import json, sys, yaml
def num(x):  # 4096.0 and 4096 are the same number (kustomize rewrites floats)
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, dict):
        return {k: num(v) for k, v in x.items()}
    if isinstance(x, list):
        return [num(v) for v in x]
    return x
out = []
for d in yaml.safe_load_all(open(sys.argv[1])):
    if not d or d.get("kind") == "Namespace":
        continue
    for meta in (d.get("metadata"), d.get("spec", {}).get("template", {}).get("metadata")):
        if meta and meta.get("labels"):
            for l in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
                meta["labels"].pop(l, None)
    out.append(json.dumps(num(d), sort_keys=True))
print("\n".join(sorted(out)))
PY
}
ct_deploy_vs_chart() {
  "$KUBECTL" kustomize deploy >"$ct_dir/kustomize.yaml" || return 1
  "$HELM" template kindex $ct_chart --namespace kindex-system --include-crds >"$ct_dir/chart-defaults.yaml" || return 1
  ct_normalize "$ct_dir/kustomize.yaml" >"$ct_dir/kustomize.json" || return 1
  ct_normalize "$ct_dir/chart-defaults.yaml" >"$ct_dir/chart-defaults.json" || return 1
  grep -o '"kind": "[A-Za-z]*"' "$ct_dir/chart-defaults.json" | sort | uniq -c
  diff <(tr -d '\r' <"$ct_dir/chart-defaults.json" | python3 -c '
import json, sys
for l in sys.stdin: print(json.dumps(json.loads(l), indent=1, sort_keys=True))') \
       <(tr -d '\r' <"$ct_dir/kustomize.json" | python3 -c '
import json, sys
for l in sys.stdin: print(json.dumps(json.loads(l), indent=1, sort_keys=True))')
}
check "kubectl kustomize deploy == helm template (defaults, release kindex, ns kindex-system)" ct_deploy_vs_chart
check "deploy/ has the Namespace kindex-system and no examples" bash -c '
  grep -q "^kind: Namespace" "$1" && ! grep -q "^kind: VectorIndex" "$1"' _ "$ct_dir/kustomize.yaml"

# --------------------------------------- 5. monitoring, package, Dockerfiles
step "packaging: monitoring objects, helm package, Dockerfiles"
ct_monitoring() {
  python3 - "$ct_dir/monitoring-values.yaml" "$ct_chart/files/dashboard.json" <<'PY'
import json, re, sys, yaml
docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
kinds = {k for k, _ in docs}
for k in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"):
    assert k in kinds, f"{k} not rendered"
rule = next(d for (k, _), d in docs.items() if k == "PrometheusRule")
alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
want = {"KindexShardWithoutLeader": "kindex_raft_has_leader",
        "KindexReplicationLagHigh": "kindex_raft_replication_lag_entries",
        "KindexSnapshotStale": "kindex_snapshot_age_seconds",
        "KindexIndexQueueSaturated": "kindex_index_queue_capacity",
        "KindexNodeDown": "up{", "KindexOperatorDown": "up{"}
for a, metric in want.items():
    assert a in alerts, f"alert {a} missing"
    assert metric in alerts[a], f"{a}: {metric} not in {alerts[a]}"
for a, e in alerts.items():
    depth = 0
    for c in e:
        depth += {"(": 1, ")": -1}.get(c, 0)
        assert depth >= 0, f"{a}: unbalanced parentheses"
    assert depth == 0, f"{a}: unbalanced parentheses"
    assert "{{" not in e, f"{a}: unrendered template in expr"
print("alerts:", ", ".join(sorted(alerts)))
for src in (open(sys.argv[2]).read(),
            next(d for (k, _), d in docs.items() if k == "ConfigMap")["data"]["kindex.json"]):
    dash = json.loads(src)
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for m in ("kindex_index_queue_depth", "kindex_vectors", "kindex_request_duration_seconds_bucket"):
        assert m in exprs, f"dashboard: no panel uses {m}"
print("dashboard:", len(dash["panels"]), "panels")
PY
}
check "ServiceMonitor, PodMonitor, PrometheusRule (alerts on node metrics), dashboard JSON" ct_monitoring
ct_package() {
  "$HELM" package $ct_chart --destination "$ct_dir" >/dev/null || return 1
  local tgz="$ct_dir/kindex-$ct_ws_version.tgz" list
  list=$(tar tzf "$tgz") || return 1
  echo "$list"
  grep -qx 'kindex/crds/vectorindex.yaml' <<<"$list" &&
    grep -qx 'kindex/values.schema.json' <<<"$list" &&
    ! grep -q '^kindex/ci/' <<<"$list" &&
    tar xzf "$tgz" -O kindex/crds/vectorindex.yaml | cmp - crds/vectorindex.yaml
}
check "helm package: CRD and schema inside, ci/ left out" ct_package
ct_dockerfiles() {
  local df pkg bin
  for df in Dockerfile.node Dockerfile.operator; do
    pkg=${df#Dockerfile.}
    pkg=kindex-$pkg
    bin=$pkg
    grep -q "^FROM rust:.* AS builder" "$df" || { echo "$df: no rust builder stage"; return 1; }
    grep -q "cargo build --release --locked -p $pkg" "$df" || { echo "$df: no cargo build of $pkg"; return 1; }
    grep -q "^USER 65532" "$df" || { echo "$df: not USER 65532"; return 1; }
    grep -q "^ENTRYPOINT \[\"/usr/local/bin/$bin\"\]" "$df" || { echo "$df: ENTRYPOINT"; return 1; }
    # The package and its binary exist in the workspace.
    grep -rqs "^name = \"$pkg\"" ./*/Cargo.toml || { echo "$df: no crate $pkg"; return 1; }
    grep -rqs "name = \"$bin\"" ./*/Cargo.toml || [ -f "${pkg#kindex-}/src/main.rs" ] ||
      { echo "$df: no binary $bin"; return 1; }
    echo "$df: $pkg ok"
  done
  grep -q 'EXPOSE 7070 7071 7072 7080' Dockerfile.node || { echo "node: EXPOSE"; return 1; }
  grep -q 'EXPOSE 8080' Dockerfile.operator || { echo "operator: EXPOSE"; return 1; }
  # The build context keeps every workspace member and the lock file.
  local m
  for m in Cargo.toml Cargo.lock $(sed -n '/^members/s/.*\[\(.*\)\].*/\1/p' Cargo.toml | tr -d '",'); do
    [ -e "$m" ] || { echo "missing $m"; return 1; }
    if grep -Eqx "/?$m/?" .dockerignore; then echo ".dockerignore excludes $m"; return 1; fi
  done
  grep -Eqx '/?target/?' .dockerignore || { echo ".dockerignore keeps target/"; return 1; }
}
check "Dockerfiles: builder/runtime stages, crates, binaries, context" ct_dockerfiles

# ------------------------------------------------------ 6. server dry-runs
step "packaging: server-side dry-run"
ct_created_ns=()
ct_ensure_ns() { # NAME [LABEL=VALUE...]
  local ns=$1
  shift
  if ! k get namespace "$ns" >/dev/null 2>&1; then
    k create namespace "$ns" >/dev/null && ct_created_ns+=("$ns")
  fi
  if (($# > 0)); then k label namespace "$ns" --overwrite "$@" >/dev/null; fi
}
ct_ensure_ns kindex-system
ct_ensure_ns team-a
ct_ensure_ns team-b
ct_ensure_ns kindex-chart-test pod-security.kubernetes.io/enforce=restricted
# Minimal stand-ins for the Prometheus Operator CRDs (kinds only, any spec),
# so the monitoring objects can be sent to the API server.
ct_stub_crds() {
  local plural kind
  for plural in servicemonitors:ServiceMonitor podmonitors:PodMonitor prometheusrules:PrometheusRule; do
    kind=${plural#*:}
    plural=${plural%%:*}
    cat <<EOF
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: $plural.monitoring.coreos.com
  labels: {kindex.dev/test-stub: "true"}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {plural: $plural, kind: $kind}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
EOF
  done
}
ct_stubbed=0
if ! k get crd servicemonitors.monitoring.coreos.com >/dev/null 2>&1; then
  ct_stub_crds >"$ct_dir/stub-crds.yaml"
  if k apply -f "$ct_dir/stub-crds.yaml" >/dev/null &&
    k wait --for condition=Established --timeout=60s -f "$ct_dir/stub-crds.yaml" >/dev/null; then
    ct_stubbed=1
  fi
fi
check "VectorIndex CRD from the chart applies (server-side)" \
  k apply --server-side --field-manager=kindex-chart-tests -f $ct_chart/crds/vectorindex.yaml
check "VectorIndex CRD established" \
  k wait --for condition=Established --timeout=60s crd/vectorindexes.kindex.dev
for ct_vals in "$ct_chart"/ci/*-values.yaml; do
  ct_render="$ct_dir/$(basename "$ct_vals" .yaml).yaml"
  check "kubectl apply --dry-run=server: helm template -f ${ct_vals#"$ct_chart"/}" \
    k apply --dry-run=server -f "$ct_render"
done
check "kubectl apply -k deploy --dry-run=server" k apply -k deploy --dry-run=server
# Pod Security "restricted", enforced: a Pod made from the Deployment's template.
ct_pod_from_template() {
  "$HELM" template kindex $ct_chart --namespace kindex-system >"$ct_dir/pss-chart.yaml" || return 1
  python3 - "$ct_dir/pss-chart.yaml" <<'PY'
import sys, yaml
dep = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment")
t = dep["spec"]["template"]
print(yaml.safe_dump({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "kindex-operator-pss", "labels": t["metadata"]["labels"]},
                      "spec": t["spec"]}))
PY
}
ct_pss() {
  k get serviceaccount kindex-operator -n kindex-chart-test >/dev/null 2>&1 ||
    k create serviceaccount kindex-operator -n kindex-chart-test >/dev/null || return 1
  ct_pod_from_template >"$ct_dir/pss-pod.yaml" || return 1
  k apply --dry-run=server -n kindex-chart-test -f "$ct_dir/pss-pod.yaml" >"$ct_dir/pss.out" 2>&1
  local rc=$?
  cat "$ct_dir/pss.out"
  ((rc == 0)) && ! grep -qi 'violate\|forbidden' "$ct_dir/pss.out"
}
check "operator pod passes Pod Security 'restricted' (enforced, server dry-run)" ct_pss

# -------------------------------------------------------------- 7. RBAC
step "packaging: RBAC of the operator (chart applied for real in kindex-system)"
ct_can() { # VERB RESOURCE [ARGS...]: granted
  local out
  out=$(k auth can-i "$@" --as="$ct_as" 2>"$ct_dir/can-i.err") || true
  echo "can-i $* as $ct_as: $out $(grep -v 'not namespace scoped' "$ct_dir/can-i.err")"
  [[ "$out" == yes ]]
}
ct_cannot() { # VERB RESOURCE [ARGS...]: denied
  local out
  out=$(k auth can-i "$@" --as="$ct_as" 2>"$ct_dir/can-i.err") || true
  echo "can-i $* as $ct_as: $out $(grep -v 'not namespace scoped' "$ct_dir/can-i.err")"
  [[ "$out" == no ]]
}
ct_apply_default() {
  "$HELM" template kindex $ct_chart --namespace kindex-system >"$ct_dir/rbac-install.yaml" &&
    k apply --server-side --force-conflicts --field-manager=kindex-chart-tests -f "$ct_dir/rbac-install.yaml"
}
check "chart (defaults) applied into kindex-system" ct_apply_default
# RBAC is evaluated at once, but give the authorizer's cache a moment.
retry 20 0.25 k auth can-i list vectorindexes.kindex.dev --all-namespaces --as="$ct_sa" >/dev/null 2>&1 || true

ct_as=$ct_sa
ct_rw="get list watch create patch update delete"
ct_granted() { # label, then can-i arguments
  local name=$1
  shift
  check "granted: $name" ct_can "$@"
}
ct_denied() {
  local name=$1
  shift
  check "denied:  $name" ct_cannot "$@"
}
for v in get list watch patch; do
  ct_granted "$v vectorindexes (any namespace)" "$v" vectorindexes.kindex.dev -n team-a
done
ct_granted "watch vectorindexes --all-namespaces" watch vectorindexes.kindex.dev --all-namespaces
for v in get patch update; do
  ct_granted "$v vectorindexes/status" "$v" vectorindexes.kindex.dev --subresource=status -n team-a
done
for r in configmaps services statefulsets.apps poddisruptionbudgets.policy networkpolicies.networking.k8s.io; do
  for v in $ct_rw; do ct_granted "$v $r" "$v" "$r" -n team-a; done
done
for v in get list watch delete; do ct_granted "$v pods" "$v" pods -n team-a; done
for r in events events.events.k8s.io; do
  for v in create patch; do ct_granted "$v $r" "$v" "$r" -n team-a; done
done
ct_granted "create leases in kindex-system" create leases.coordination.k8s.io -n kindex-system
for v in get update patch; do
  ct_granted "$v lease kindex-operator in kindex-system" "$v" leases.coordination.k8s.io/kindex-operator -n kindex-system
done

ct_denied "* * (no wildcard)" '*' '*' --all-namespaces
# Secrets by name only (peer TLS of spec.peerTls): never listed, watched or deleted.
for v in get create patch; do ct_granted "$v secrets" "$v" secrets -n team-a; done
ct_denied "list secrets" list secrets -n team-a
ct_denied "watch secrets" watch secrets -n team-a
ct_denied "delete secrets" delete secrets -n team-a
ct_denied "list secrets --all-namespaces" list secrets --all-namespaces
ct_denied "delete persistentvolumeclaims" delete persistentvolumeclaims -n team-a
ct_denied "create persistentvolumeclaims" create persistentvolumeclaims -n team-a
ct_denied "create nodes" create nodes
ct_denied "get nodes" get nodes
ct_denied "create vectorindexes" create vectorindexes.kindex.dev -n team-a
ct_denied "delete vectorindexes" delete vectorindexes.kindex.dev -n team-a
ct_denied "update vectorindexes/scale" update vectorindexes.kindex.dev --subresource=scale -n team-a
ct_denied "create pods" create pods -n team-a
ct_denied "update pods" update pods -n team-a
ct_denied "create pods/exec" create pods --subresource=exec -n team-a
ct_denied "deletecollection pods" deletecollection pods -n team-a
ct_denied "delete events" delete events -n team-a
ct_denied "create deployments" create deployments.apps -n team-a
ct_denied "delete customresourcedefinitions" delete customresourcedefinitions.apiextensions.k8s.io
ct_denied "create leases outside its namespace" create leases.coordination.k8s.io -n team-a
ct_denied "update another lease in kindex-system" update leases.coordination.k8s.io/other -n kindex-system
ct_denied "escalate clusterroles" escalate clusterroles.rbac.authorization.k8s.io
ct_denied "bind clusterroles" bind clusterroles.rbac.authorization.k8s.io
ct_denied "create rolebindings" create rolebindings.rbac.authorization.k8s.io -n team-a
ct_denied "impersonate users" impersonate users

# The real operator binary, when one is built, run with the chart's arguments and
# environment as the ServiceAccount (the testenv's static token for
# system:serviceaccount:kindex-system:kindex-operator) under only these RBAC rules.
ct_find_operator() {
  local c
  for c in "${KINDEX_OPERATOR_BIN:-}" "${CARGO_TARGET_DIR:-target}/debug/kindex-operator" \
    target/debug/kindex-operator "${XDG_CACHE_HOME:-$HOME/.cache}/kindex/target/debug/kindex-operator"; do
    if [[ -n "$c" && -x "$c" ]]; then
      echo "$c"
      return 0
    fi
  done
  return 0
}
ct_op_bin=$(ct_find_operator)
if [[ -z "$ct_op_bin" ]]; then
  echo "  skip real operator under the chart's RBAC (no kindex-operator binary; cargo build -p kindex-operator)"
else
  step "packaging: the real operator ($ct_op_bin) with the chart's arguments and RBAC"
  ct_ensure_ns team-c
  ct_op_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  ct_server=$(k config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  ct_ca=$(k config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  # In a pod the namespace comes from the ServiceAccount mount; here from the context.
  printf '%s\n' \
    'apiVersion: v1' \
    'kind: Config' \
    "clusters: [{name: e2e, cluster: {server: \"$ct_server\", certificate-authority-data: \"$ct_ca\"}}]" \
    'users: [{name: kindex-operator, user: {token: e2e-operator-token}}]' \
    'contexts: [{name: sa, context: {cluster: e2e, user: kindex-operator, namespace: kindex-system}}]' \
    'current-context: sa' >"$ct_dir/sa.kubeconfig"
  # The container's args and env from the rendered Deployment (fieldRefs filled in
  # as the kubelet would, the metrics address moved to a free loopback port).
  python3 - "$ct_dir/rbac-install.yaml" "$ct_dir" "$ct_op_port" <<'PY'
import sys, yaml
dep = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment")
c = dep["spec"]["template"]["spec"]["containers"][0]
field = {"metadata.name": "kindex-operator-e2e", "metadata.namespace": "kindex-system"}
with open(sys.argv[2] + "/op.env", "w") as f:
    for e in c.get("env", []):
        v = e.get("value")
        if v is None:
            v = field[e["valueFrom"]["fieldRef"]["fieldPath"]]
        if e["name"] == "KINDEX_METRICS_ADDR":
            v = "127.0.0.1:" + sys.argv[3]
        f.write(f'{e["name"]}={v}\n')
open(sys.argv[2] + "/op.args", "w").write("\n".join(c.get("args", [])) + "\n")
PY
  k apply -n team-c -f deploy/examples/minimal.yaml >/dev/null 2>&1 || true
  mapfile -t ct_op_args <"$ct_dir/op.args"
  (
    set -a
    . "$ct_dir/op.env"
    set +a
    exec "$ct_op_bin" --kubeconfig "$ct_dir/sa.kubeconfig" "${ct_op_args[@]}"
  ) >"$ct_dir/operator.log" 2>&1 &
  ct_op_pid=$!
  PIDS+=("$ct_op_pid")
  wait_for "operator accepts the chart's args ($(tr '\n' ' ' <"$ct_dir/op.args")) and serves /healthz" 60 \
    curl -sf "http://127.0.0.1:$ct_op_port/healthz"
  if kill -0 "$ct_op_pid" 2>/dev/null; then
    wait_for "operator holds the Lease kindex-operator in kindex-system" 60 bash -c \
      'test "$("$1" --kubeconfig "$2" get lease kindex-operator -n kindex-system -o jsonpath={.spec.holderIdentity})" = kindex-operator-e2e' \
      _ "$KUBECTL" "$KC"
    wait_for "operator creates ConfigMap, Services, StatefulSet, PDB of team-c/demo" 60 \
      "$KUBECTL" --kubeconfig "$KC" get -n team-c configmap/demo-config service/demo \
      service/demo-s0-headless statefulset/demo-s0 poddisruptionbudget/demo-s0
    wait_for "operator writes team-c/demo status (phase)" 60 bash -c \
      'test -n "$("$1" --kubeconfig "$2" get vidx demo -n team-c -o jsonpath={.status.phase})"' _ "$KUBECTL" "$KC"
  else
    check "operator is running (its log follows)" bash -c 'tail -n 20 "$1"; false' _ "$ct_dir/operator.log"
  fi
  check "operator log has no 'forbidden'" bash -c '! grep -i "forbidden" "$1"' _ "$ct_dir/operator.log"
  kill -TERM "$ct_op_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$ct_op_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$ct_op_pid" 2>/dev/null || true
  wait "$ct_op_pid" 2>/dev/null || true
  k delete vidx demo -n team-c --ignore-not-found --wait=false >/dev/null 2>&1 || true
fi

ct_delete_default() {
  k delete --ignore-not-found --wait=false -f "$ct_dir/rbac-install.yaml" >/dev/null || return 1
  retry 20 0.25 ct_cannot list vectorindexes.kindex.dev --all-namespaces
}
check "chart (defaults) deleted: the permissions are gone" ct_delete_default

step "packaging: helm install with watchNamespace (Role in one namespace)"
ct_ns_release=kx-ns
ct_install_ns() {
  ct_helm install $ct_ns_release $ct_chart --namespace kindex-chart-test \
    --set watchNamespace=team-b --timeout 60s
}
check "helm install $ct_ns_release --set watchNamespace=team-b (namespace kindex-chart-test)" ct_install_ns
check "NOTES name the watched namespace" bash -c \
  '"$1" --kubeconfig "$2" get notes "$3" -n kindex-chart-test | grep -q "namespace team-b only"' \
  _ "$HELM" "$KC" $ct_ns_release
check "the operator Deployment is passed --namespace=team-b" bash -c \
  'test "$("$1" --kubeconfig "$2" get deploy kx-ns-kindex-operator -n kindex-chart-test \
     -o jsonpath="{.spec.template.spec.containers[0].args}")" = "[\"--node-image=kindex/kindex-node:$3\",\"--namespace=team-b\"]"' \
  _ "$KUBECTL" "$KC" "$ct_ws_version"
ct_as=system:serviceaccount:kindex-chart-test:kx-ns-kindex-operator
retry 20 0.25 k auth can-i list statefulsets.apps -n team-b --as="$ct_as" >/dev/null 2>&1 || true
for r in vectorindexes.kindex.dev statefulsets.apps pods configmaps; do
  ct_granted "list $r in the watched namespace team-b" list "$r" -n team-b
  ct_denied "list $r in team-a" list "$r" -n team-a
done
ct_denied "list vectorindexes --all-namespaces" list vectorindexes.kindex.dev --all-namespaces
ct_denied "create statefulsets in its own namespace" create statefulsets.apps -n kindex-chart-test
ct_granted "create leases in its own namespace" create leases.coordination.k8s.io -n kindex-chart-test
ct_granted "get secrets in the watched namespace team-b" get secrets -n team-b
ct_denied "get secrets in team-a" get secrets -n team-a
check "no ClusterRoleBinding for the operator in watchNamespace mode" bash -c \
  '! "$1" --kubeconfig "$2" get clusterrolebinding kx-ns-kindex-operator 2>/dev/null' _ "$KUBECTL" "$KC"
ct_uninstall_ns() {
  ct_helm uninstall $ct_ns_release --namespace kindex-chart-test --timeout 60s >/dev/null || return 1
  retry 20 0.25 ct_cannot list statefulsets.apps -n team-b
}
check "helm uninstall $ct_ns_release: the Role in team-b is gone" ct_uninstall_ns
check "the CRD stays after helm uninstall (Helm never deletes CRDs)" \
  k get crd vectorindexes.kindex.dev

# -------------------------------------------------------------- clean up
if ((ct_stubbed)); then
  k delete --ignore-not-found --wait=false -f "$ct_dir/stub-crds.yaml" >/dev/null 2>&1 || true
fi
for ct_ns in "${ct_created_ns[@]}"; do
  [[ "$ct_ns" == kindex-system ]] && continue
  k delete namespace "$ct_ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
done

if ((ct_standalone)); then
  summary
fi
