# Scenario 9 (needs scenario 1's operator; day-2 scenario 6 of the day-2 issue):
# structural config drift on live pods. An index keeps its PVC
# (storage.retainOnDelete), is deleted and re-created under the same name with
# another dimension: its pod finds data of the old structural config on its
# volume and refuses to start. The operator reports it (condition ConfigDrift,
# a Warning event, both naming the field; phase Failed), nothing on the volume
# changes, and re-creating the index with the original dimension brings the
# same vectors back.
NS9=s9

s9_apply() {
  k -n $NS9 apply -f - >/dev/null <<EOF
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata:
  name: drift
spec:
  dimension: $1
  metric: l2
  shards: 1
  replicas: 1
  storage:
    size: 32Mi
    retainOnDelete: true
EOF
}

s9_ready() {
  [[ $(k -n $NS9 get vidx drift -o jsonpath='{.status.phase} {.status.conditions[?(@.type=="Ready")].status}') == 'Ready True' ]]
}

# s9_delete: the index is deleted; its pod, StatefulSet, Services and ConfigMap
# (the recorded structural config) are gone, its PVC stays.
s9_delete() {
  k -n $NS9 delete vidx drift --wait=true --timeout=120s >/dev/null
  waitfor 120 bash -c "[[ -z \$($KUBECTL -n $NS9 get pods,statefulsets,services,configmaps -l app.kubernetes.io/instance=drift -o name) ]]"
  [[ -n $(k -n $NS9 get pvc -l app.kubernetes.io/instance=drift -o name) ]] || fail "the PVC was not kept"
}

# s9_sums DIR: every file under DIR with its SHA-256 (relative paths, sorted).
s9_sums() {
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
}

# s9_drift_reported: ConfigDrift True naming dimension (both values), phase Failed.
s9_drift_reported() {
  k -n $NS9 get vidx drift -o json | python3 -c '
import json, sys
st = json.load(sys.stdin).get("status") or {}
c = [c for c in st.get("conditions") or [] if c["type"] == "ConfigDrift"]
print(st.get("phase"), c and (c[0]["status"], c[0]["reason"], c[0]["message"]))
ok = st.get("phase") == "Failed" and c and c[0]["status"] == "True" and \
    c[0]["reason"] == "StructuralMismatch" and \
    c[0]["message"].startswith("drift-s0-0: structural config drift") and \
    "dimension=8" in c[0]["message"] and "dimension=16" in c[0]["message"]
sys.exit(0 if ok else 1)'
}

# s9_event: a Warning event about the VectorIndex naming the field.
s9_event() {
  k -n $NS9 get events -o json | python3 -c '
import json, sys
ev = [e for e in json.load(sys.stdin)["items"]
      if e["involvedObject"]["kind"] == "VectorIndex" and e["involvedObject"]["name"] == "drift"
      and e["type"] == "Warning" and e["reason"] == "StructuralMismatch"]
for e in ev:
    print(e["reason"], e["message"])
sys.exit(0 if any("dimension=8" in e["message"] and "dimension=16" in e["message"] for e in ev) else 1)'
}

s9_drift() {
  local pvc pv dir before after t
  k create namespace $NS9 >/dev/null
  s9_apply 8
  waitfor 300 s9_ready
  python3 - "$RUN/s9.jsonl" <<'PY'
import json, random, sys
rnd = random.Random(9)
with open(sys.argv[1], "w") as f:
    for i in range(300):
        f.write(json.dumps({"id": f"d{i}", "vector": [round(rnd.uniform(-1, 1), 4) for _ in range(8)]}) + "\n")
PY
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex upsert -n $NS9 --index drift --file "$RUN/s9.jsonl" -o json >/dev/null
  waitfor 120 bash -c "[[ \$($KUBECTL -n $NS9 get vidx drift -o jsonpath='{.status.vectors}') == 300 ]]"
  s9_delete
  pvc=$(k -n $NS9 get pvc -l app.kubernetes.io/instance=drift -o jsonpath='{.items[0].metadata.name}')
  pv=$(k -n $NS9 get pvc "$pvc" -o jsonpath='{.spec.volumeName}')
  dir=$(k get pv "$pv" -o jsonpath='{.spec.hostPath.path}')
  [[ -d $dir ]] || fail "volume $pv: no directory '$dir'"
  before=$(s9_sums "$dir")
  echo "PVC $pvc kept, volume $dir: $(wc -l <<<"$before") files"
  grep -q 'structural.json$' <<<"$before" || fail "no structural.json on the volume"

  # The same name, another dimension: the new pod mounts the old volume.
  t=$(now)
  s9_apply 16
  waitfor 180 s9_drift_reported || {
    k -n $NS9 get pods -o wide
    k -n $NS9 get pod drift-s0-0 -o jsonpath='{.status.containerStatuses[0]}'
    return 1
  }
  s9_drift_reported
  echo "ConfigDrift reported after $(since "$t")s"
  waitfor 60 s9_event || fail "no Warning event StructuralMismatch naming dimension"
  s9_event
  k -n $NS9 get vidx drift
  # The node refused the volume before touching it: it keeps failing, every file
  # is as it was (no rewrite, no new file), over at least two starts.
  waitfor 120 bash -c "(( \$($KUBECTL -n $NS9 get pod drift-s0-0 -o jsonpath='{.status.containerStatuses[0].restartCount}') >= 2 ))"
  pod_ready $NS9 drift-s0-0 && fail "the pod is Ready on a volume of another dimension"
  after=$(s9_sums "$dir")
  [[ $after == "$before" ]] || {
    diff <(echo "$before") <(echo "$after") || true
    fail "the volume changed while the node refused it"
  }
  echo "after $(restarts $NS9 drift-s0-0) restarts the volume's files are unchanged"

  # Back to the original dimension: the same data, Ready, no drift.
  s9_delete
  t=$(now)
  s9_apply 8
  waitfor 300 s9_ready
  waitfor 120 bash -c "[[ \$($KUBECTL -n $NS9 get vidx drift -o jsonpath='{.status.vectors}') == 300 ]]"
  [[ $(k -n $NS9 get vidx drift -o jsonpath='{.status.conditions[?(@.type=="ConfigDrift")].status}') == False ]] ||
    fail "ConfigDrift still True with the original dimension"
  out=$(PATH="$RUN/bin:$PATH" "$KUBECTL" kindex get -n $NS9 --index drift d42 -o json)
  grep -q '"d42"' <<<"$out" || fail "d42 not found after re-creation: $out"
  echo "original dimension: Ready with the 300 vectors after $(since "$t")s"
  k delete namespace $NS9 --wait=false >/dev/null
}

check 9.1 "config drift: a re-created index with another dimension finds the old volume: ConfigDrift + event name the field, phase Failed, volume untouched; the original dimension brings the data back" s9_drift
