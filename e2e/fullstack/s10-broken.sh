# Scenario 10 (builds on scenario 1's 2 x 3 index; day-2 scenario 4 of the day-2
# issue): a rollout to a broken image. spec.image is set to
# kindex/kindex-node:broken (the agent's image map runs a script that exits 1 at
# once for that tag) while a writer runs and an observer watches the quorum
# (py/quorum_observer.py). The operator restarts one pod, sees it crash-loop on
# the new template and pauses: phase Degraded, condition Degraded reason
# RolloutPaused naming the pod and its exit, a Warning event; no other pod is
# restarted, every shard keeps a quorum and writes go on. Removing spec.image
# again (the default image: the StatefulSets' original template) replaces the
# crash-looping pod and the index is Ready; replicas agree and match the
# writer's history.

# s10_uids: "name uid" of the index's pods that are not being deleted, sorted.
s10_uids() {
  k -n "$NS1" get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.uid}{" "}{.metadata.deletionTimestamp}{"\n"}{end}' |
    awk 'NF == 2' | sort
}

# s10_paused: phase Degraded, Degraded True reason RolloutPaused naming a crash loop.
s10_paused() {
  k -n "$NS1" get vidx demo -o json | python3 -c '
import json, sys
st = json.load(sys.stdin).get("status") or {}
c = {c["type"]: c for c in st.get("conditions") or []}
d = c.get("Degraded") or {}
p = c.get("Progressing") or {}
print(st.get("phase"), d.get("status"), d.get("reason"), d.get("message"))
m = d.get("message", "")
ok = st.get("phase") == "Degraded" and d.get("status") == "True" and \
    d.get("reason") == "RolloutPaused" and "crash-loops with the new pod template" in m and \
    "last exit code 1" in m and \
    (p.get("status"), p.get("reason")) == ("False", "RolloutPaused")
sys.exit(0 if ok else 1)'
}

# s10_acks: writes acknowledged so far.
s10_acks() { grep -c '"outcome": "ok"' "$RUN/s10.history" || true; }

s10_broken() {
  local cip before after changed broken t a0 a1 ev rn
  waitfor 120 vidx_shape 3
  [[ -z $(k -n "$NS1" get vidx demo -o jsonpath='{.spec.image}') ]] || fail "spec.image is already set"
  echo "image: $(k -n "$NS1" get sts demo-s0 -o jsonpath='{.spec.template.spec.containers[0].image}')"
  cip=$(k -n "$NS1" get svc demo -o jsonpath='{.spec.clusterIP}')
  before=$(s10_uids)
  [[ $(wc -l <<<"$before") == 6 ]] || fail "want 6 pods: $before"

  rm -f "$RUN/s10.stop"
  trap 'touch "$RUN/s10.stop"' EXIT
  python3 "$ROOT"/e2e/fullstack/py/quorum_observer.py "$KUBECTL" "$NS1" demo "$RUN/s10.stop" 600 \
    >"$RUN/s10.observer" 2>&1 &
  local observer=$!
  python3 "$ROOT"/e2e/fullstack/py/history_writer.py "$RUN/s10.history" "$RUN/s10.stop" \
    "http://$cip:7080" s10k 20000 600 >"$RUN/s10.writer" 2>&1 &
  local writer=$!
  sleep 3

  t=$(now)
  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"image":"kindex/kindex-node:broken"}}' >/dev/null
  waitfor 180 s10_paused || {
    k -n "$NS1" get pods -o wide
    return 1
  }
  s10_paused
  echo "rollout paused, Degraded after $(since "$t")s"
  k -n "$NS1" get vidx demo
  # Exactly one pod was restarted (replaced), and it crash-loops on the broken image.
  after=$(s10_uids)
  changed=$(comm -13 <(echo "$before") <(echo "$after"))
  echo "replaced: $changed"
  [[ $(wc -l <<<"$changed") == 1 && -n $changed ]] || fail "want exactly one replaced pod: $changed"
  broken=${changed%% *}
  k -n "$NS1" get vidx demo -o jsonpath='{.status.conditions[?(@.type=="Degraded")].message}' | grep -q "pod $broken crash-loops" ||
    fail "the reason does not name $broken"
  [[ $(k -n "$NS1" get pod "$broken" -o jsonpath='{.spec.containers[0].image}') == kindex/kindex-node:broken ]] ||
    fail "$broken does not run the broken image"
  ev=$(k -n "$NS1" get events -o json | python3 -c '
import json, sys
for e in json.load(sys.stdin)["items"]:
    if e["involvedObject"]["kind"] == "VectorIndex" and e["type"] == "Warning" and \
            e["reason"] == "RolloutPaused" and "crash-loops" in e["message"]:
        print(e["message"])')
  [[ -n $ev ]] || fail "no Warning event RolloutPaused"
  echo "event: $ev"

  # While it crash-loops: no other pod is touched, each shard keeps its quorum (the
  # observer), and writes are acknowledged.
  a0=$(s10_acks)
  sleep 20
  a1=$(s10_acks)
  ((a1 > a0)) || fail "no write acknowledged during the crash loop ($a0 -> $a1)"
  rn=$(restarts "$NS1" "$broken")
  ((rn >= 1)) || fail "$broken has not restarted ($rn)"
  [[ $(s10_uids) == "$after" ]] || fail "another pod was restarted: $(s10_uids)"
  s10_paused >/dev/null || fail "no longer paused: $(s10_paused)"
  echo "20 s of crash loop ($broken: $rn restarts): no other pod touched, $((a1 - a0)) writes acknowledged"

  # The fix: back to the default image (the StatefulSets' original template).
  t=$(now)
  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"image":null}}' >/dev/null
  waitfor 240 vidx_shape 3 || {
    k -n "$NS1" get vidx demo -o yaml | sed -n '/^status:/,$p' | head -40
    return 1
  }
  echo "image fixed: Ready again after $(since "$t")s"
  # Only the broken pod was replaced again; the five others were never restarted.
  [[ $(comm -12 <(echo "$before") <(s10_uids) | wc -l) == 5 ]] ||
    fail "pods other than $broken were restarted: $(s10_uids)"
  sleep 3
  touch "$RUN/s10.stop"
  wait "$writer" || true
  local obs_rc=0
  wait "$observer" || obs_rc=$?
  cat "$RUN/s10.writer" "$RUN/s10.observer"
  ((obs_rc == 0)) || fail "the observer saw a shard below quorum"
  waitfor 120 shards_agree 3
  shards_agree 3
  local ips
  ips=$(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}')
  # shellcheck disable=SC2086 # one argument per pod IP
  python3 "$ROOT"/e2e/fullstack/py/history_check.py "$RUN/s10.history" $ips
}

check 10.1 "rollout to a broken image: one pod restarted, rollout paused (Degraded, RolloutPaused naming it), quorum and writes kept; fixing the image resumes to Ready, nothing lost" s10_broken
