# Scenario 2 (builds on scenario 1's index s1/demo): 50,000 vectors loaded
# with `kubectl kindex upsert` through the real port-forward (API server ->
# node agent -> pod) -> the VECTORS column shows 50000; a stored vector
# searched through a pod of each shard comes back top-1; a write's session
# token makes a read through another pod see it; a pod reaches the index
# through its client Service (name -> ClusterIP -> a ready pod).
N2=50000

# http_json PORT PATH BODY: POST JSON to a forwarded node port, print the reply.
http_json() {
  curl -sS --fail-with-body --max-time 30 -H 'content-type: application/json' \
    -d "$3" "http://127.0.0.1:$1$2"
}

s2_load() {
  python3 - "$RUN/vecs.jsonl" "$N2" <<'PY'
import json, random, sys
rnd = random.Random(42)
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"id": f"v{i}", "vector": [round(rnd.gauss(0, 1), 5) for _ in range(16)]}) + "\n")
PY
  t=$(now)
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex upsert -n "$NS1" --index demo --file "$RUN/vecs.jsonl" -o json >"$RUN/upsert.json"
  took=$(since "$t")
  echo "upsert of $N2 vectors through kubectl kindex: ${took}s"
  waitfor 180 bash -c "[[ \$($KUBECTL -n $NS1 get vidx demo -o jsonpath='{.status.vectors}') == $N2 ]]"
  k -n "$NS1" get vidx demo
  k -n "$NS1" get vidx demo | tail -1 | grep -qE "^demo +2 +3 +6/6 +$N2 " || fail "VECTORS column is not $N2"
}

s2_search() {
  local pids=()
  k -n "$NS1" port-forward pod/demo-s0-0 17080:7080 >"$RUN/pf0.log" 2>&1 &
  pids+=($!)
  k -n "$NS1" port-forward pod/demo-s1-1 17081:7080 >"$RUN/pf1.log" 2>&1 &
  pids+=($!)
  trap 'kill "${pids[@]}" 2>/dev/null || true' RETURN
  waitfor 30 curl -sf http://127.0.0.1:17080/readyz
  waitfor 30 curl -sf http://127.0.0.1:17081/readyz
  vec=$(sed -n '12346p' "$RUN/vecs.jsonl" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["vector"]))')
  for port in 17080 17081; do
    top=$(http_json $port /v1/indexes/demo/search "{\"vector\": $vec, \"k\": 1}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["hits"][0]["id"])')
    echo "search through port $port: top-1 $top"
    [[ $top == v12345 ]] || fail "top-1 through port $port is $top, want v12345"
  done
  # A write through a pod of shard 0, then a session read through a pod of
  # shard 1 carrying the write's token.
  probe='[9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9]'
  token=$(http_json 17080 /v1/indexes/demo/points "{\"points\": [{\"id\": \"session-probe\", \"vector\": $probe}]}" |
    python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["token"]))')
  echo "write token: $token"
  top=$(http_json 17081 /v1/indexes/demo/search "{\"vector\": $probe, \"k\": 1, \"consistency\": \"session\", \"token\": $token}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["hits"][0]["id"])')
  echo "session read through the other pod: top-1 $top"
  [[ $top == session-probe ]] || fail "the session read did not see the write"
}

# 2.3 The client Service as a client in the cluster uses it: from a pod, the
# Service name resolves to its ClusterIP, and the kindex CLI's upsert and
# search through <name>:7070 (routed by kube-proxy to a
# ready pod) see the data.
s2_service() {
  k -n "$NS1" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kindex-e2e/shell:1
    command: [sh, -c, 'exec sleep 3600']
EOF
  trap 'k -n "$NS1" delete pod client --wait=false >/dev/null 2>&1 || true' RETURN
  waitfor 90 pod_ready "$NS1" client
  cip=$(k -n "$NS1" get svc demo -o jsonpath='{.spec.clusterIP}')
  fq=demo.$NS1.svc.cluster.local
  got=$(k -n "$NS1" exec client -- getent hosts $fq | awk '{print $1}')
  [[ $got == "$cip" ]] || fail "$fq resolves to '$got', want the ClusterIP $cip"
  echo '{"id": "via-service", "vector": [7,1,7,1,7,1,7,1,7,1,7,1,7,1,7,1]}' >"$RUN/svc-probe.jsonl"
  k -n "$NS1" exec client -- "$RUN/bin/kindex" --addr "http://$fq:7070" --index demo upsert --file "$RUN/svc-probe.jsonl"
  out=$(k -n "$NS1" exec client -- "$RUN/bin/kindex" --addr "http://$fq:7070" --index demo search --vector '[7,1,7,1,7,1,7,1,7,1,7,1,7,1,7,1]')
  echo "$out"
  grep -qE "^1 +via-service " <<<"$out" || fail "search through $fq:7070: the upserted vector is not top-1"
  vec=$(sed -n '12346p' "$RUN/vecs.jsonl" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["vector"]))')
  out=$(k -n "$NS1" exec client -- "$RUN/bin/kindex" --addr "http://$cip:7070" --index demo search --vector "$vec")
  grep -qE "^1 +v12345 " <<<"$out" || fail "search through $cip:7070: v12345 is not top-1: $out"
  echo "upsert and search through the client Service $fq ($cip:7070) from a pod"
  # Admin RPCs are not served through the client Service (issue 18): its port
  # 7070 answers them UNIMPLEMENTED, and it has no admin port (7072) at all.
  # (sh -c and rc=: kubectl exec's exit status is not the command's.)
  out=$(k -n "$NS1" exec client -- sh -c "'$RUN/bin/kindex' --addr http://$fq:7070 --admin-addr http://$fq:7070 --timeout 10 status; echo rc=\$?" 2>&1)
  { grep -q unimplemented <<<"$out" && ! grep -q 'rc=0' <<<"$out"; } ||
    fail "Admin Status through $fq:7070: want unimplemented, got: $out"
  out=$(k -n "$NS1" exec client -- sh -c "'$RUN/bin/kindex' --addr http://$fq:7070 --timeout 10 status; echo rc=\$?" 2>&1)
  if grep -q 'rc=0' <<<"$out"; then fail "Admin Status answered through $fq:7072: $out"; fi
  echo "Admin refused through the client Service (7070: unimplemented; no port 7072)"
}

check 2.1 "kubectl kindex upsert of 50,000 vectors; VECTORS column 50000" s2_load
check 2.2 "top-1 through a pod of each shard; session token read-your-writes" s2_search
check 2.3 "upsert and search through the client Service from a pod (ClusterIP); Admin not served through it" s2_service
