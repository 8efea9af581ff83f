# Scenario 0: the node agent behaves like a kubelet. Each behaviour is its
# own check line. Pods use the image kindex-e2e/shell (mapped to /bin/sh):
# small shell programs run as real processes in their pod's namespaces.
NS0=s0
k create namespace $NS0 >/dev/null

s0_apply() { k -n $NS0 apply -f - >/dev/null; }

s0_pods() {
  s0_apply <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: readiness}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: kindex-e2e/shell:1
    command: [sh, -c, "touch /tmp/ready; exec sleep 3600"]
    readinessProbe:
      exec: {command: [test, -f, /tmp/ready]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: liveness}
spec:
  terminationGracePeriodSeconds: 2
  volumes: [{name: state, emptyDir: {}}]
  containers:
  - name: main
    image: kindex-e2e/shell:1
    command: [sh, -c, 'n=$(( $(cat /state/n 2>/dev/null || echo 0) + 1 )); echo $n > /state/n; echo "run $n"; touch /tmp/alive; exec sleep 3600']
    volumeMounts: [{name: state, mountPath: /state}]
    livenessProbe:
      exec: {command: [test, -f, /tmp/alive]}
      periodSeconds: 1
      failureThreshold: 2
EOF
}

# 0.1 Ready follows the readiness probe; the pod has its own IP and hostname.
s0_readiness() {
  waitfor 90 pod_ready $NS0 readiness
  ip=$(k -n $NS0 get pod readiness -o jsonpath='{.status.podIP}')
  [[ $ip == 10.244.0.* ]] || fail "pod IP $ip not in 10.244.0.0/24"
  [[ $(k -n $NS0 exec readiness -- hostname) == readiness ]] || fail "hostname is not the pod name"
  k -n $NS0 exec readiness -- rm /tmp/ready
  waitfor 30 pod_unready $NS0 readiness
  k -n $NS0 exec readiness -- touch /tmp/ready
  waitfor 30 pod_ready $NS0 readiness
  [[ $(restarts $NS0 readiness) == 0 ]] || fail "readiness changes restarted the container"
  echo "ip $ip, ready -> unready -> ready"
}

# 0.2 A failing liveness probe restarts the container; logs --previous
# shows the run before.
s0_liveness() {
  waitfor 90 pod_ready $NS0 liveness
  k -n $NS0 exec liveness -- rm /tmp/alive
  waitfor 60 bash -c "[[ \$($KUBECTL -n $NS0 get pod liveness -o jsonpath='{.status.containerStatuses[0].restartCount}') == 1 ]]"
  waitfor 30 pod_ready $NS0 liveness
  code=$(k -n $NS0 get pod liveness -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}')
  [[ $code == 143 || $code == 137 ]] || fail "last state exit code $code, want 143 (SIGTERM) or 137"
  prev=$(k -n $NS0 logs liveness --previous)
  cur=$(k -n $NS0 logs liveness)
  [[ $prev == "run 1" ]] || fail "logs --previous: '$prev', want 'run 1'"
  [[ $cur == "run 2" ]] || fail "logs: '$cur', want 'run 2'"
  echo "restartCount 1, last exit $code, --previous '$prev', current '$cur'"
}

# 0.3 A crashing container reaches CrashLoopBackOff with a growing back-off
# (the tier runs the agent with base 2s: restarts ~2s, 4s, 8s apart).
s0_crashloop() {
  s0_apply <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: main
    image: kindex-e2e/shell:1
    command: [sh, -c, 'echo "crashing"; exit 3']
EOF
  local deadline=$((SECONDS + 120)) last=-1 seen_backoff="" times=()
  while ((SECONDS < deadline)); do
    local st
    st=$(k -n $NS0 get pod crasher -o jsonpath='{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.waiting.reason}' 2>/dev/null || true)
    local n=${st%% *} reason=${st#* }
    [[ $reason == CrashLoopBackOff ]] && seen_backoff=1
    if [[ -n $n && $n != "$last" && $n =~ ^[0-9]+$ ]]; then
      times+=("$n:$(now)")
      last=$n
    fi
    [[ $last =~ ^[0-9]+$ ]] && ((last >= 4)) && break
    sleep 0.2
  done
  [[ -n $seen_backoff ]] || fail "state never showed CrashLoopBackOff"
  ((last >= 4)) || fail "restartCount only reached $last"
  code=$(k -n $NS0 get pod crasher -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}')
  [[ $code == 3 ]] || fail "last exit code $code, want 3"
  # Gaps between restarts 1->2, 2->3, 3->4 must grow (each >= 1.5x the one before).
  python3 - "${times[@]}" <<'PY'
import sys
t = {int(a.split(":")[0]): float(a.split(":")[1]) for a in sys.argv[1:]}
gaps = [t[i + 1] - t[i] for i in (1, 2, 3) if i in t and i + 1 in t]
print("restart gaps:", " ".join(f"{g:.1f}s" for g in gaps))
assert len(gaps) == 3, f"not every restart was observed: {sorted(t)}"
assert gaps[1] >= 1.5 * gaps[0] and gaps[2] >= 1.5 * gaps[1], "back-off does not grow"
PY
}

# 0.4 preStop runs and the grace period is honoured: a process ignoring
# SIGTERM is killed at the end of the grace period (6s), one that handles it
# goes at once.
s0_grace() {
  s0_apply <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 6
  volumes: [{name: out, hostPath: {path: /tmp/s0-grace, type: DirectoryOrCreate}}]
  containers:
  - name: main
    image: kindex-e2e/shell:1
    command: [sh, -c, 'trap "" TERM; echo up; while true; do sleep 1; done']
    volumeMounts: [{name: out, mountPath: /out}]
    lifecycle:
      preStop:
        exec: {command: [sh, -c, 'echo prestop > /out/prestop']}
---
apiVersion: v1
kind: Pod
metadata: {name: polite}
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: main
    image: kindex-e2e/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; echo up; while true; do sleep 0.2; done']
EOF
  waitfor 90 pod_ready $NS0 stubborn
  waitfor 90 pod_ready $NS0 polite
  t=$(now)
  k -n $NS0 delete pod stubborn --wait=true --timeout=60s >/dev/null
  stubborn=$(since "$t")
  t=$(now)
  k -n $NS0 delete pod polite --wait=true --timeout=60s >/dev/null
  polite=$(since "$t")
  [[ $(cat /tmp/s0-grace/prestop 2>/dev/null) == prestop ]] || fail "preStop hook did not run"
  echo "SIGTERM-ignoring pod gone after ${stubborn}s (grace 6s), SIGTERM-handling pod after ${polite}s (grace 30s)"
  python3 -c "import sys; s, p = float(sys.argv[1]), float(sys.argv[2]); assert 6 <= s < 20, s; assert p < 6, p" "$stubborn" "$polite"
}

# 0.5 runAsUser/runAsGroup, readOnlyRootFilesystem, and fsGroup making a
# dynamically provisioned volume writable (the same pod without fsGroup
# cannot write it).
s0_security() {
  for name in secure nofsgroup; do
    local fsg=""
    [[ $name == secure ]] && fsg="fsGroup: 2000"
    s0_apply <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $name-data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 1000, runAsGroup: 3000, $fsg}
  volumes: [{name: data, persistentVolumeClaim: {claimName: $name-data}}]
  containers:
  - name: main
    image: kindex-e2e/shell:1
    command: [sh, -c, 'id; touch /rootfs-write 2>/dev/null && echo root-writable || echo root-readonly; touch /data/f 2>/dev/null && echo data-writable || echo data-not-writable; exec sleep 3600']
    securityContext: {readOnlyRootFilesystem: true}
    volumeMounts: [{name: data, mountPath: /data}]
EOF
  done
  waitfor 120 pod_ready $NS0 secure
  waitfor 120 pod_ready $NS0 nofsgroup
  [[ $(k -n $NS0 get pvc secure-data -o jsonpath='{.status.phase}') == Bound ]] || fail "PVC not bound"
  waitfor 10 bash -c "$KUBECTL -n $NS0 logs secure | grep -q data-"
  out=$(k -n $NS0 logs secure)
  echo "secure: $out"
  [[ $out == *"uid=1000"* && $out == *"gid=3000"* && $out == *"2000"* ]] || fail "not running as 1000:3000 with group 2000"
  [[ $out == *root-readonly* ]] || fail "root filesystem is writable"
  [[ $out == *data-writable* ]] || fail "fsGroup did not make the volume writable"
  waitfor 10 bash -c "$KUBECTL -n $NS0 logs nofsgroup | grep -q data-"
  out=$(k -n $NS0 logs nofsgroup)
  echo "nofsgroup: $out"
  [[ $out == *data-not-writable* ]] || fail "the volume is writable without fsGroup (the check proves nothing)"
}

# 0.6 ConfigMap (updated in place), Secret and the projected ServiceAccount
# token are mounted; the token authenticates as the pod's ServiceAccount.
s0_volumes() {
  k -n $NS0 create configmap cfg --from-literal=greeting=hello >/dev/null
  k -n $NS0 create secret generic sec --from-literal=password=s3cret >/dev/null
  s0_apply <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: vols}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: cfg, configMap: {name: cfg}}
  - {name: sec, secret: {secretName: sec}}
  containers:
  - name: main
    image: kindex-e2e/shell:1
    command: [sh, -c, 'exec sleep 3600']
    volumeMounts:
    - {name: cfg, mountPath: /etc/cfg, readOnly: true}
    - {name: sec, mountPath: /etc/sec, readOnly: true}
EOF
  waitfor 90 pod_ready $NS0 vols
  [[ $(k -n $NS0 exec vols -- cat /etc/cfg/greeting) == hello ]] || fail "configmap not mounted"
  [[ $(k -n $NS0 exec vols -- cat /etc/sec/password) == s3cret ]] || fail "secret not mounted"
  sa=/var/run/secrets/kubernetes.io/serviceaccount
  [[ $(k -n $NS0 exec vols -- cat $sa/namespace) == "$NS0" ]] || fail "token volume: namespace"
  k -n $NS0 exec vols -- cat $sa/ca.crt | grep -c 'BEGIN CERTIFICATE' >/dev/null || fail "token volume: ca.crt"
  tok=$(k -n $NS0 exec vols -- cat $sa/token)
  who=$(k create -o 'jsonpath={.status.authenticated} {.status.user.username}' -f - <<EOF
apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec: {token: "$tok"}
EOF
  )
  [[ $who == "true system:serviceaccount:$NS0:default" ]] || fail "token review: '$who'"
  k -n $NS0 exec vols -- touch /etc/cfg/x 2>/dev/null && fail "readOnly configMap mount is writable"
  t=$(now)
  k -n $NS0 patch configmap cfg --type merge -p '{"data":{"greeting":"bye"}}' >/dev/null
  waitfor 60 bash -c "[[ \$($KUBECTL -n $NS0 exec vols -- cat /etc/cfg/greeting) == bye ]]"
  echo "configmap update seen in the pod after $(since "$t")s; token: $who"
  [[ $(restarts $NS0 vols) == 0 ]] || fail "the update restarted the container"
}

# in_pod POD CMD: run CMD with sh in POD's container; prints its output and
# "rc=N" (kubectl exec's own exit status is not the command's).
in_pod() { k -n $NS0 exec "$1" -- sh -c "$2; echo rc=\$?" 2>&1; }

# 0.7 ClusterIP Services route, through kube-proxy (nftables mode):
# a pod reaches the API server through the kubernetes
# Service; a Service's name resolves to its ClusterIP; with no ready
# endpoint connections are refused, once one is ready they reach it (also
# from that endpoint itself: hairpin), and are refused again when it goes
# unready. The pod's KUBERNETES_SERVICE_HOST/PORT are the ClusterIP's.
s0_services() {
  s0_apply <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kindex-e2e/shell:1
    command: [sh, -c, 'mkdir -p /tmp/www && cd /tmp/www && hostname >who && echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT" >env && exec python3 -m http.server 8080']
    readinessProbe:
      exec: {command: [test, -f, /tmp/ready]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
EOF
  read -r kip kport <<<"$(k -n default get svc kubernetes -o jsonpath='{.spec.clusterIP} {.spec.ports[?(@.name=="https")].port}')"
  [[ $kip == 10.96.* ]] || fail "kubernetes ClusterIP '$kip'"
  sa=/var/run/secrets/kubernetes.io/serviceaccount
  out=$(in_pod readiness "curl -sS --max-time 10 --cacert $sa/ca.crt -H \"Authorization: Bearer \$(cat $sa/token)\" https://$kip:$kport/version")
  grep -q '"gitVersion"' <<<"$out" || fail "API server not reached through $kip:$kport: $out"
  echo "API server through the kubernetes Service $kip:$kport"
  wip=$(k -n $NS0 get svc web -o jsonpath='{.spec.clusterIP}')
  url=http://web.$NS0.svc.cluster.local/
  waitfor 30 bash -c "$KUBECTL -n $NS0 exec readiness -- getent hosts web.$NS0.svc.cluster.local | grep -q '^$wip '"
  waitfor 60 bash -c "[[ \$($KUBECTL -n $NS0 get pod web -o jsonpath='{.status.phase}') == Running ]]"
  # Not ready: refused (curl's 7), not a time-out.
  refused() { $KUBECTL -n $NS0 exec readiness -- sh -c "curl -sS --max-time 5 ${url}who; echo rc=\$?" 2>&1 | grep -qx rc=7; }
  waitfor 30 refused
  echo "no ready endpoint: $wip:80 refuses"
  k -n $NS0 exec web -- touch /tmp/ready
  waitfor 60 bash -c "[[ \$($KUBECTL -n $NS0 exec readiness -- curl -sS --max-time 5 ${url}who) == web ]]"
  echo "ready endpoint: $url reaches pod web"
  out=$(in_pod web "curl -sS --max-time 5 ${url}who")
  [[ $out == $'web\nrc=0' ]] || fail "hairpin (web -> its own Service) failed: $out"
  out=$(in_pod readiness "curl -sS --max-time 5 ${url}env")
  [[ $out == "$kip:$kport"$'\nrc=0' ]] || fail "pod env KUBERNETES_SERVICE_HOST:PORT is '$out', want $kip:$kport"
  echo "hairpin ok; pod env KUBERNETES_SERVICE_HOST:PORT = $kip:$kport"
  k -n $NS0 exec web -- rm /tmp/ready
  waitfor 30 refused
  echo "endpoint unready: refused again"
}

s0_pods
check 0.1 "readiness probe gates Ready; pod IP and hostname" s0_readiness
check 0.2 "liveness probe restarts; logs --previous" s0_liveness
check 0.3 "CrashLoopBackOff with growing back-off" s0_crashloop
check 0.4 "preStop and grace period (SIGTERM, then SIGKILL)" s0_grace
check 0.5 "runAsUser, readOnlyRootFilesystem, fsGroup on a provisioned PVC" s0_security
check 0.6 "ConfigMap (updated in place), Secret, ServiceAccount token" s0_volumes
check 0.7 "ClusterIP Services route (kubernetes Service; refuse until ready; hairpin)" s0_services
k delete namespace $NS0 --wait=false >/dev/null
