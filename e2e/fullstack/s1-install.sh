# Scenario 1: the user's path. `helm install` the chart -> the operator
# Deployment's pods Running (as the chart's ServiceAccount, through the
# in-cluster config: the kubernetes Service's ClusterIP) and one of them
# holding the Lease -> a VectorIndex of 2
# shards x 3 replicas -> phase Ready and condition Ready with 6 ready
# kindex-node pods spread over the 3 Nodes and
# a Raft leader per shard. The index has peer mTLS on (spec.peerTls), so every
# later scenario runs with the operator's certificates on the Raft and admin ports.
NS1=s1

s1_helm() {
  "$HELM" --kubeconfig "$KC" install kindex charts/kindex --namespace kindex-system --create-namespace \
    --wait --timeout 5m >/dev/null
  k -n kindex-system rollout status deployment/kindex-operator --timeout=120s
  pods=$(k -n kindex-system get pods -l app.kubernetes.io/component=operator,app.kubernetes.io/instance=kindex -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.phase}{"\n"}{end}')
  echo "$pods"
  [[ $(grep -c ' Running$' <<<"$pods") == 2 ]] || fail "want 2 Running operator pods"
  waitfor 120 bash -c "$KUBECTL -n kindex-system get lease kindex-operator -o jsonpath='{.spec.holderIdentity}' | grep -q ."
  holder=$(k -n kindex-system get lease kindex-operator -o jsonpath='{.spec.holderIdentity}')
  grep -q "^$holder Running$" <<<"$pods" || fail "Lease holder '$holder' is not a Running operator pod"
  echo "Lease kindex-operator held by $holder"
  # The holder reached the API server as an in-cluster client does: through
  # the kubernetes Service's ClusterIP (routed by kube-proxy), which is what its process was given, as a kubelet gives it.
  svc=$(k -n default get svc kubernetes -o jsonpath='{.spec.clusterIP} {.spec.ports[?(@.name=="https")].port}')
  read -r cip cport <<<"$svc"
  [[ $cip == 10.96.* ]] || fail "kubernetes Service ClusterIP '$cip'"
  env=""
  for d in /proc/[0-9]*; do
    [[ $(cat "$d/comm" 2>/dev/null) == kindex-operator ]] || continue
    e=$(tr '\0' '\n' <"$d/environ" 2>/dev/null) || continue
    grep -qx "HOSTNAME=$holder" <<<"$e" && env=$e
  done
  [[ -n $env ]] || fail "no kindex-operator process of pod $holder"
  grep -x 'KUBERNETES_SERVICE_\(HOST\|PORT\)=.*' <<<"$env"
  grep -qx "KUBERNETES_SERVICE_HOST=$cip" <<<"$env" || fail "operator's KUBERNETES_SERVICE_HOST is not the ClusterIP $cip"
  grep -qx "KUBERNETES_SERVICE_PORT=$cport" <<<"$env" || fail "operator's KUBERNETES_SERVICE_PORT is not $cport"
}

s1_index() {
  k create namespace $NS1 >/dev/null
  local t0
  t0=$(now)
  k -n $NS1 apply -f - >/dev/null <<'EOF'
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata:
  name: demo
spec:
  dimension: 16
  metric: cosine
  shards: 2
  replicas: 3
  peerTls:
    enabled: true
  storage:
    size: 64Mi
EOF
  # The healthy phase is Ready, with the Ready condition True.
  waitfor 600 bash -c "[[ \$($KUBECTL -n $NS1 get vidx demo -o jsonpath='{.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}') == 'Ready True' ]]" || {
    k -n $NS1 get vidx demo -o yaml | sed -n '/^status:/,$p' | head -60
    k -n $NS1 get pods -o wide
    return 1
  }
  # A timing for bench/RESULTS.md (issue 15): 2 x 3 pods, peer mTLS certificates issued.
  echo "index Ready after apply: $(since "$t0") s"
  k -n $NS1 get pods -o wide
  ready=$(k -n $NS1 get pods -l app.kubernetes.io/instance=demo -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)
  [[ $ready == 6 ]] || fail "$ready ready pods, want 6"
  nodes=$(k -n $NS1 get pods -l app.kubernetes.io/instance=demo -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u | wc -l)
  [[ $nodes == 3 ]] || fail "pods on $nodes nodes, want 3"
  leaders=$(k -n $NS1 get vidx demo -o jsonpath='{range .status.shards[*]}{.leader}{" "}{end}')
  echo "leaders: $leaders"
  for s in 0 1; do
    [[ " $leaders " == *" demo-s$s-"[0-2]" "* ]] || fail "no leader for shard $s in status (leaders: $leaders)"
  done
}

s1_columns() {
  out=$(k -n $NS1 get vidx demo)
  echo "$out"
  head -1 <<<"$out" | grep -qE 'NAME +SHARDS +REPLICAS +READY +VECTORS +PHASE +AGE' || fail "columns"
  tail -1 <<<"$out" | grep -qE '^demo +2 +3 +6/6 +0 +Ready ' || fail "row"
}

# The Raft groups formed over mTLS with the operator's CA: the admin port of a pod
# refuses a client without a certificate, answers one holding the index's
# certificate (from the Secret the operator wrote), and kubectl kindex finds that
# Secret by itself.
s1_peer_tls() {
  local ip dir out
  ip=$(k -n $NS1 get pod demo-s0-0 -o jsonpath='{.status.podIP}')
  [[ $ip == 10.244.* ]] || fail "pod IP '$ip'"
  dir="$RUN/tmp/s1-peer-tls"
  mkdir -p "$dir"
  for f in tls.crt tls.key ca.crt; do
    k -n $NS1 get secret demo-peer-tls -o jsonpath="{.data.${f//./\\.}}" | base64 -d >"$dir/$f"
  done
  if out=$("$RUN/bin/kindex" --admin-addr "http://$ip:7072" --timeout 5 status 2>&1); then
    fail "the admin port answered a client without a certificate: $out"
  fi
  echo "without a certificate: $(tail -1 <<<"$out")"
  out=$("$RUN/bin/kindex" --admin-addr "http://$ip:7072" --peer-tls-dir "$dir" \
    --peer-tls-server-name demo.$NS1.kindex-peer --timeout 10 -o json status) ||
    fail "the index's certificate was refused: $out"
  grep -q '"role"' <<<"$out" || fail "no status: $out"
  shards_agree 3
}

check 1.1 "helm install: operator pods Running, one holds the Lease (API server via the kubernetes Service)" s1_helm
check 1.2 "VectorIndex 2x3: phase Ready, 6 ready pods on 3 nodes, a leader per shard" s1_index
check 1.3 "kubectl get vidx columns" s1_columns
check 1.4 "peer mTLS: admin port refuses a client without a certificate, answers the index's; kubectl kindex status reads the Secret" s1_peer_tls
