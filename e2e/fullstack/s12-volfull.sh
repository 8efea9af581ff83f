# Scenario 12 (needs scenario 1's operator; day-2 scenario 9 of the day-2 issue):
# a replica's volume fills up. An index `demo` (1 shard × 3 replicas, dimension 16)
# in namespace s12 gets three static hostPath volumes, each a size-limited tmpfs
# mounted in the tier's mount namespace before the pods start. Under a writer
# through the client Service, the shard leader's volume is filled: writes are
# refused with a clear error (507, "volume full on <pod>"), reads keep working,
# the VectorIndex says which pod and why (Degraded/VolumeFull, a Warning event).
# Freeing space, and in a second round growing the tmpfs (`mount -o
# remount,size=`), recovers without any Raft step or restart; the writer's
# history is checked on every replica.
NS12=s12
S12_DIR=/tmp/s12
S12_SIZE=48m

# s12_volumes: the StorageClass (no provisioner) and three tmpfs-backed hostPath
# volumes, each bound in advance to its pod's claim.
s12_volumes() {
  local o
  k apply -f - >/dev/null <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: s12-tmpfs
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Retain
volumeBindingMode: Immediate
EOF
  for o in 0 1 2; do
    mkdir -p "$S12_DIR/pv-$o"
    mount -t tmpfs -o size=$S12_SIZE,mode=0755 s12-volume "$S12_DIR/pv-$o"
    k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: s12-pv-$o
spec:
  capacity:
    storage: 48Mi
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: s12-tmpfs
  hostPath:
    path: $S12_DIR/pv-$o
  claimRef:
    namespace: $NS12
    name: data-demo-s0-$o
EOF
  done
}

s12_cleanup() {
  local o
  k delete namespace $NS12 --wait=true --timeout=120s >/dev/null 2>&1 || true
  k delete pv s12-pv-0 s12-pv-1 s12-pv-2 --wait=false >/dev/null 2>&1 || true
  for o in 0 1 2; do
    umount "$S12_DIR/pv-$o" 2>/dev/null || true
  done
}

s12_ready() {
  [[ $(k -n $NS12 get vidx demo -o jsonpath='{.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.status.ready}') == 'Ready True 3/3' ]]
}

# s12_put URL ID: one upsert; prints "CODE BODY".
s12_put() {
  python3 - "$1" "$2" <<'EOF'
import json, sys, urllib.error, urllib.request
doc = {"points": [{"id": sys.argv[2], "vector": [0.25] * 16}]}
req = urllib.request.Request(sys.argv[1] + "/v1/indexes/demo/points", json.dumps(doc).encode(),
                             {"content-type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=15) as r:
        print(r.status, r.read().decode()[:300])
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode()[:400])
except Exception as e:
    print(0, e)
EOF
}

# s12_refused URL POD: a write through URL is refused because POD's volume is full.
s12_refused() {
  local out
  out=$(s12_put "$1" "s12probe$RANDOM")
  echo "$out"
  [[ $out == 507* && $out == *"volume full on $2"* ]]
}

s12_accepted() {
  local out
  out=$(s12_put "$1" "s12probe$RANDOM")
  echo "$out"
  [[ $out == 200* ]]
}

# s12_reads URL IP: a search through the Service and a get on the full pod answer.
s12_reads() {
  local out
  out=$(curl -s -m 20 -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
    "$1/v1/indexes/demo/search" -d "{\"vector\": [$(python3 -c 'print(",".join(["0.1"] * 16))')], \"k\": 5}")
  [[ $out == 200 ]] || fail "search through the Service during the full volume: HTTP $out"
  out=$(curl -s -m 20 -H 'content-type: application/json' "http://$2:7080/v1/indexes/demo/points/get" \
    -d '{"ids": ["s12warm0", "s12warm1"], "consistency": "eventual"}')
  [[ $out == *'"s12warm0"'* && $out == *'"s12warm1"'* ]] ||
    fail "get on the full pod did not answer with the points: ${out:0:300}"
}

# s12_status_says POD: phase Degraded, Degraded True reason VolumeFull naming POD.
s12_status_says() {
  k -n $NS12 get vidx demo -o json | python3 -c '
import json, sys
pod = sys.argv[1]
st = json.load(sys.stdin).get("status") or {}
c = [c for c in st.get("conditions") or [] if c["type"] == "Degraded"]
print(st.get("phase"), c and (c[0]["status"], c[0]["reason"], c[0]["message"]))
ok = st.get("phase") == "Degraded" and c and c[0]["status"] == "True" and \
    c[0]["reason"] == "VolumeFull" and c[0]["message"].startswith(f"{pod} (leader): volume full on {pod}: ")
sys.exit(0 if ok else 1)' "$1"
}

s12_event() {
  k -n $NS12 get events -o json | python3 -c '
import json, sys
ev = [e for e in json.load(sys.stdin)["items"]
      if e["involvedObject"]["kind"] == "VectorIndex" and e["type"] == "Warning"
      and e["reason"] == "VolumeFull"]
for e in ev:
    print(e["reason"], e["message"])
sys.exit(0 if any(sys.argv[1] in e["message"] for e in ev) else 1)' "$1"
}

# s12_agree: the 3 replicas answer Status with equal live count and checksum.
s12_agree() {
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex status -n $NS12 --index demo -o json | python3 -c '
import json, sys
doc = json.load(sys.stdin)
rows = [(m["status"]["vectorsLive"], m["status"]["contentChecksum"]) for m in doc["nodes"] if "status" in m]
print("replicas", len(rows), "states", sorted(set(rows)))
sys.exit(0 if len(rows) == 3 and len(set(rows)) == 1 else 1)'
}

# s12_round LEADER DIR HOW: fill LEADER's volume, check refusal/reads/status,
# recover by HOW (free: delete the filler; grow: remount the tmpfs larger).
s12_round() {
  local leader=$1 dir=$2 how=$3 ip avail t out restarts0
  ip=$(k -n $NS12 get pod "$leader" -o jsonpath='{.status.podIP}')
  restarts0=$(restarts $NS12 "$leader")
  avail=$(df -B1 --output=avail "$dir" | tail -1)
  t=$(now)
  fallocate -l $((avail - (2 << 20))) "$dir/filler"
  echo "$how round: filled $leader's volume ($(df -h --output=avail,size "$dir" | tail -1 | xargs) avail/size)"
  waitfor 30 s12_refused "$URL" "$leader" || fail "no write refused for the full volume"
  echo "writes refused $(since "$t")s after the fill: $(s12_refused "$URL" "$leader")"
  s12_reads "$URL" "$ip"
  echo "reads answer (search through the Service, get on $leader)"
  waitfor 60 s12_status_says "$leader" || fail "status does not name $leader's full volume"
  echo "status names the pod $(since "$t")s after the fill: $(s12_status_says "$leader")"
  waitfor 30 s12_event "$leader" || fail "no Warning event VolumeFull naming $leader"
  echo "event: $(s12_event "$leader" | tail -1)"
  k -n $NS12 get vidx demo
  sleep 3 # the writer meets the refusal too
  t=$(now)
  case $how in
    free) rm -f "$dir/filler" ;;
    grow) mount -o remount,size=96m "$dir" ;;
  esac
  waitfor 30 s12_accepted "$URL" || fail "writes still refused after $how"
  echo "writes accepted again $(since "$t")s after $how"
  waitfor 60 s12_ready || fail "the index is not Ready after $how"
  echo "index Ready again $(since "$t")s after $how"
  out=$(k -n $NS12 get vidx demo -o jsonpath='{.status.conditions[?(@.type=="Degraded")].status}')
  [[ $out == False ]] || fail "Degraded still $out after $how"
  [[ $(restarts $NS12 "$leader") == "$restarts0" ]] || fail "$leader restarted"
  [[ $(k -n $NS12 get vidx demo -o jsonpath='{.status.shards[0].leader}') == "$leader" ]] ||
    echo "note: leadership moved away from $leader"
  rm -f "$dir/filler"
}

s12_volfull() {
  local cip leader ord ips
  trap 's12_cleanup' EXIT
  s12_volumes
  k create namespace $NS12 >/dev/null
  k -n $NS12 apply -f - >/dev/null <<EOF
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata:
  name: demo
spec:
  dimension: 16
  metric: l2
  shards: 1
  replicas: 3
  storage:
    size: 32Mi
    storageClassName: s12-tmpfs
EOF
  waitfor 300 s12_ready || {
    k -n $NS12 get pods,pvc -o wide
    return 1
  }
  cip=$(k -n $NS12 get svc demo -o jsonpath='{.spec.clusterIP}')
  URL="http://$cip:7080"
  s12_accepted "$URL" >/dev/null # the Service routes
  s12_put "$URL" s12warm0 >/dev/null
  s12_put "$URL" s12warm1 >/dev/null
  leader=$(k -n $NS12 get vidx demo -o jsonpath='{.status.shards[0].leader}')
  ord=${leader##*-}
  echo "leader $leader, its volume $S12_DIR/pv-$ord: $(df -h --output=size,avail "$S12_DIR/pv-$ord" | tail -1 | xargs)"
  grep -q " $S12_DIR/pv-$ord tmpfs " /proc/mounts || fail "$S12_DIR/pv-$ord is not a tmpfs"

  rm -f "$RUN/s12.stop"
  python3 "$ROOT"/e2e/fullstack/py/history_writer.py "$RUN/s12.history" "$RUN/s12.stop" \
    "$URL" s12k 20000 600 >"$RUN/s12.writer" 2>&1 &
  local writer=$!
  sleep 3
  s12_round "$leader" "$S12_DIR/pv-$ord" free
  leader=$(k -n $NS12 get vidx demo -o jsonpath='{.status.shards[0].leader}')
  ord=${leader##*-}
  s12_round "$leader" "$S12_DIR/pv-$ord" grow
  sleep 3
  touch "$RUN/s12.stop"
  wait "$writer" || true
  cat "$RUN/s12.writer"
  grep -q '"outcome": "ok"' "$RUN/s12.history" || fail "no write was acknowledged"
  waitfor 120 s12_agree || fail "replicas do not agree"
  s12_agree
  ips=$(k -n $NS12 get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}')
  # shellcheck disable=SC2086 # one argument per pod IP
  python3 "$ROOT"/e2e/fullstack/py/history_check.py "$RUN/s12.history" $ips
}

check 12.1 "volume full: the leader's tmpfs volume filled under a writer: writes refused (507 naming the pod), reads answer, status Degraded/VolumeFull + event name the pod; freed, then grown: writes resume without a restart or Raft step; nothing acknowledged lost" s12_volfull
