# Scenario 13 (needs scenario 1's operator; day-2 scenario 2 of the day-2 issue): a rolling
# upgrade of a populated index from release v0.1.0 to this build, a pod template change, and
# a refused rollback, under load the whole time.
#
# 13.1 An index `demo` in namespace s13 (2 shards x 3 replicas, no peer mTLS: v0.1.0 has
#      none) with spec.image kindex/kindex-node:v0.1.0, which the agent runs as release
#      v0.1.0's kindex-node (scripts/compat-node.sh): Ready, populated.
# 13.2 Two writers (py/history_writer.py, one pinned to each shard's keys, so each shard's
#      write gaps are its own), a reader (client Service and two pods) and the quorum
#      observer start and run until 13.4. spec.image is removed (the operator's default,
#      this build): py/rollout_watch.py samples pods, phase and each pod's Raft role and
#      checks the order (followers first, the leader only once leadership moved away, each
#      pod back and ready before the next, every pod once), phase Upgrading / Progressing
#      True then Ready; py/write_gaps.py measures each shard's write gap around each
#      leader change.
# 13.3 A pod template change (spec.resources) rolls the same way, checked the same way.
# 13.4 spec.image set back to kindex/kindex-node:v0.1.0: refused before any pod is touched
#      (phase Degraded, condition Degraded reason ImageRefused saying the volumes hold data
#      format 4 and v0.1.0 reads 2, a Warning event; pod uids, restart counts and the
#      StatefulSets' image unchanged); spec.image removed again -> Ready, nothing restarted.
#      Then the load stops: no shard ever below quorum, reads >= 99 % ok, replicas agree,
#      every replica matches both writers' histories.
NS13=s13
S13_OLD=kindex/kindex-node:v0.1.0

s13_vidx() { k -n "$NS13" get vidx demo "$@"; }
# s13_shape: Ready, 6/6, 3 voters per shard (scenario 1's helper, on this namespace).
s13_shape() { NS1=$NS13 vidx_shape 3; }
# s13_pods: "name uid restarts image" of the index's pods not being deleted, sorted.
s13_pods() {
  k -n "$NS13" get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.uid}{" "}{.status.containerStatuses[0].restartCount}{" "}{.spec.containers[0].image}{" "}{.metadata.deletionTimestamp}{"\n"}{end}' |
    awk 'NF == 4' | sort
}
s13_sts_images() {
  k -n "$NS13" get sts -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.spec.template.spec.containers[0].image}{"\n"}{end}' | sort -u
}
# s13_all_on IMAGE: all 6 pods run IMAGE.
s13_all_on() {
  local p
  p=$(s13_pods)
  [[ $(wc -l <<<"$p") == 6 ]] && ! awk -v i="$1" '$4 != i' <<<"$p" | grep -q .
}
# s13_rolled IMAGE: every pod runs IMAGE with the current template and the index is Ready.
s13_rolled() {
  s13_all_on "$1" && s13_shape &&
    [[ $(k -n "$NS13" get pods -l app.kubernetes.io/instance=demo \
      -o jsonpath='{range .items[*]}{.metadata.labels.controller-revision-hash}{"\n"}{end}' | sort -u | wc -l) == 2 ]] &&
    [[ $(k -n "$NS13" get sts -l app.kubernetes.io/instance=demo \
      -o jsonpath='{range .items[*]}{.status.updatedReplicas}{" "}{end}') == "3 3 " ]]
}
s13_ip() { k -n "$NS13" get pod "$1" -o jsonpath='{.status.podIP}'; }
s13_report() {
  s13_vidx -o yaml | sed -n '/^status:/,$p' | head -60
  k -n "$NS13" get pods -o wide
}
s13_default_image() {
  k -n kindex-system get deployment kindex-operator \
    -o jsonpath='{.spec.template.spec.containers[0].args}' | tr ',' '\n' | sed -n 's/.*--node-image=\([^"]*\).*/\1/p'
}

s13_create() {
  local cip ip t
  k create namespace "$NS13" >/dev/null
  t=$(now)
  k -n "$NS13" apply -f - >/dev/null <<EOF
apiVersion: kindex.dev/v1alpha1
kind: VectorIndex
metadata:
  name: demo
spec:
  image: $S13_OLD
  dimension: 16
  metric: cosine
  shards: 2
  replicas: 3
  storage:
    size: 64Mi
EOF
  waitfor 600 s13_shape || {
    s13_report
    return 1
  }
  echo "index on $S13_OLD Ready after $(since "$t")s"
  s13_all_on "$S13_OLD" || fail "not every pod runs $S13_OLD: $(s13_pods)"
  # Release v0.1.0 has no admin port: 7072 refuses, its Admin service answers on 7070
  # (where the operator falls back to). Its Status has no data format.
  ip=$(s13_ip demo-s0-0)
  ! curl -s -m 3 -o /dev/null "http://$ip:7072/" || fail "demo-s0-0 answers on 7072: not v0.1.0"
  [[ -z $(s13_vidx -o jsonpath='{.status.dataFormat}') ]] || fail "status.dataFormat set by v0.1.0 nodes"
  k -n "$NS13" get pod demo-s0-0 -o jsonpath='{.spec.containers[0].args}' | grep -vq -- '--admin-port' ||
    fail "the v0.1.0 pods were given --admin-port"
  cip=$(k -n "$NS13" get svc demo -o jsonpath='{.spec.clusterIP}')
  python3 "$ROOT"/e2e/fullstack/py/log_filler.py "http://$cip:7080" 3000 8 240
  waitfor 60 bash -c "[[ \$($KUBECTL -n $NS13 get vidx demo -o jsonpath='{.status.vectors}') == 3000 ]]" ||
    fail "VECTORS $(s13_vidx -o jsonpath='{.status.vectors}'), want 3000"
  s13_vidx
}

# s13_roll NAME PATCH WANT_IMAGE: apply PATCH under the running load, watch the rollout,
# check its order and phases, measure the write gaps of its leader changes.
s13_roll() {
  local name=$1 patch=$2 want=$3 t wrc=0 grc=0
  waitfor 120 s13_shape
  rm -f "$RUN/s13.$name.stop"
  python3 "$ROOT"/e2e/fullstack/py/rollout_watch.py watch "$KUBECTL" "$NS13" demo \
    "$RUN/s13.$name.stop" "$RUN/s13.$name.watch" 900 >"$RUN/s13.$name.watch.out" 2>&1 &
  local watcher=$!
  sleep 3
  t=$(now)
  k -n "$NS13" patch vidx demo --type merge -p "$patch" >/dev/null
  # The StatefulSets' new template, then every pod replaced and the index Ready.
  waitfor 60 bash -c "[[ \$($KUBECTL -n $NS13 get vidx demo -o jsonpath='{.status.phase}') != Ready ]]" ||
    fail "the phase never left Ready"
  waitfor 900 s13_rolled "$want" || {
    touch "$RUN/s13.$name.stop"
    s13_report
    return 1
  }
  local took
  took=$(since "$t")
  sleep 3
  touch "$RUN/s13.$name.stop"
  wait "$watcher" || true
  echo "$name: 2 x 3 pods rolled, Ready again after ${took}s"
  echo "rollout $name ${took}s" >>"$RUN/s13.timings"
  python3 "$ROOT"/e2e/fullstack/py/rollout_watch.py check "$RUN/s13.$name.watch" 2 3 || wrc=$?
  python3 "$ROOT"/e2e/fullstack/py/write_gaps.py "$RUN/s13.$name.watch.leaders" 5 \
    "$RUN/s13.w0.history" "$RUN/s13.w1.history" | tee "$RUN/s13.$name.gaps" || grc=$?
  s13_vidx
  ((wrc == 0)) || fail "rollout order or phases violated"
  ((grc == 0)) || fail "a write gap above 5 s, or no leader change seen"
}

s13_load_start() {
  local cip
  cip=$(k -n "$NS13" get svc demo -o jsonpath='{.spec.clusterIP}')
  rm -f "$RUN/s13.stop"
  python3 "$ROOT"/e2e/fullstack/py/quorum_observer.py "$KUBECTL" "$NS13" demo "$RUN/s13.stop" 1800 \
    >"$RUN/s13.observer" 2>&1 &
  echo $! >"$RUN/s13.pids"
  for s in 0 1; do
    python3 "$ROOT"/e2e/fullstack/py/history_writer.py "$RUN/s13.w$s.history" "$RUN/s13.stop" \
      "http://$cip:7080" "s13w$s-" 1000000 1800 "$s" >"$RUN/s13.w$s.out" 2>&1 &
    echo $! >>"$RUN/s13.pids"
  done
  # Through the client Service only: every pod is replaced, and a replaced pod may get
  # another IP (the agent hands out the lowest free one).
  python3 "$ROOT"/e2e/fullstack/py/reader.py "$RUN/s13.stop" demo 16 1800 \
    "http://$cip:7080" >"$RUN/s13.reader" 2>&1 &
  echo $! >>"$RUN/s13.pids"
  # Both writers past their key probing (100 keys of their shard each).
  waitfor 120 bash -c "[[ \$(grep -c '\"outcome\": \"ok\"' $RUN/s13.w0.history) -gt 150 && \$(grep -c '\"outcome\": \"ok\"' $RUN/s13.w1.history) -gt 150 ]]" ||
    fail "the writers do not get writes acknowledged"
}

s13_upgrade() {
  [[ -n $(s13_default_image) ]] || fail "no --node-image in the operator's args"
  echo "operator's default image (this build): $(s13_default_image)"
  # Whatever ends this check, the load stops unless the check passed (13.4 stops it then).
  trap '[[ -f $RUN/s13.2.ok ]] || touch "$RUN/s13.stop"' EXIT
  s13_load_start
  s13_roll upgrade '{"spec":{"image":null}}' "$(s13_default_image)"
  # Every node reports its data format now; after the writes went on, stamped upserts
  # (format 4, which v0.1.0 cannot read) are in every shard's log.
  waitfor 60 bash -c "[[ \$($KUBECTL -n $NS13 get vidx demo -o jsonpath='{.status.dataFormat}') == 4 ]]" ||
    fail "status.dataFormat $(s13_vidx -o jsonpath='{.status.dataFormat}'), want 4"
  echo "status.dataFormat: $(s13_vidx -o jsonpath='{.status.dataFormat}')"
  touch "$RUN/s13.2.ok"
}

s13_template() {
  trap '[[ -f $RUN/s13.3.ok ]] || touch "$RUN/s13.stop"' EXIT
  [[ -f $RUN/s13.2.ok ]] || fail "13.2 did not pass"
  s13_roll template '{"spec":{"resources":{"requests":{"cpu":"10m","memory":"64Mi"}}}}' "$(s13_default_image)"
  [[ $(k -n "$NS13" get pod demo-s0-0 -o jsonpath='{.spec.containers[0].resources.requests.cpu}') == 10m ]] ||
    fail "the new pods lack the new resources"
  touch "$RUN/s13.3.ok"
}

s13_rollback() {
  local before ev msg t
  trap 'touch "$RUN/s13.stop"' EXIT
  [[ -f $RUN/s13.pids ]] || fail "no load running (13.2 did not start it)"
  waitfor 120 s13_shape
  before=$(s13_pods)
  echo "$before"
  t=$(now)
  k -n "$NS13" patch vidx demo --type merge -p "{\"spec\":{\"image\":\"$S13_OLD\"}}" >/dev/null
  waitfor 60 bash -c "[[ \$($KUBECTL -n $NS13 get vidx demo -o jsonpath='{.status.phase} {.status.conditions[?(@.type==\"Degraded\")].reason}') == 'Degraded ImageRefused' ]]" || {
    s13_report
    return 1
  }
  echo "refused after $(since "$t")s"
  s13_vidx
  msg=$(s13_vidx -o jsonpath='{.status.conditions[?(@.type=="Degraded")].message}')
  echo "Degraded: $msg"
  [[ $msg == *"rollback to $S13_OLD refused: the volumes hold data format 4"* && $msg == *"v0.1.0 reads data format 2 at most"* ]] ||
    fail "the message does not say why"
  ev=$(k -n "$NS13" get events -o json | python3 -c '
import json, sys
for e in json.load(sys.stdin)["items"]:
    if e["involvedObject"]["kind"] == "VectorIndex" and e["type"] == "Warning" and \
            e["reason"] == "ImageRefused":
        print(e["message"])')
  [[ $ev == *"data format 4"* ]] || fail "no Warning event ImageRefused: $ev"
  echo "event: $ev"
  # Nothing is touched, also not later.
  sleep 15
  [[ $(s13_pods) == "$before" ]] || fail "pods changed: $(s13_pods)"
  [[ $(s13_sts_images) == "$(s13_default_image)" ]] || fail "a StatefulSet's image changed: $(s13_sts_images)"
  echo "15 s later: pod uids, restart counts and images unchanged; StatefulSets on $(s13_sts_images)"

  t=$(now)
  k -n "$NS13" patch vidx demo --type merge -p '{"spec":{"image":null}}' >/dev/null
  waitfor 120 s13_shape || {
    s13_report
    return 1
  }
  [[ $(s13_pods) == "$before" ]] || fail "pods changed after the image was set back: $(s13_pods)"
  echo "image set back: Ready after $(since "$t")s, no pod restarted"

  sleep 3
  touch "$RUN/s13.stop"
  local pid deadline=$((SECONDS + 60))
  for pid in $(cat "$RUN/s13.pids"); do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
  done
  cat "$RUN/s13.w0.out" "$RUN/s13.w1.out" "$RUN/s13.reader" "$RUN/s13.observer"
  grep -q "observer: QUORUM VIOLATION\|observer: no sample" "$RUN/s13.observer" &&
    fail "the observer saw a shard below quorum"
  grep -q "^observer: shard 1:" "$RUN/s13.observer" || fail "the observer did not finish"
  local rok rall
  read -r rall rok < <(sed -n 's/^reader: \([0-9]*\) reads: \([0-9]*\) ok.*/\1 \2/p' "$RUN/s13.reader")
  ((rall > 0 && rok * 100 >= rall * 99)) || fail "reads: only $rok of $rall ok (want >= 99%)"
  NS1=$NS13 waitfor 120 shards_agree 3
  NS1=$NS13 shards_agree 3
  local ips
  ips=$(k -n "$NS13" get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}')
  # shellcheck disable=SC2086 # one argument per pod IP
  python3 "$ROOT"/e2e/fullstack/py/history_check.py "$RUN/s13.w0.history" $ips
  # shellcheck disable=SC2086
  python3 "$ROOT"/e2e/fullstack/py/history_check.py "$RUN/s13.w1.history" $ips
  cat "$RUN/s13.timings"
}

check 13.1 "index 2 x 3 on release v0.1.0 (spec.image kindex/kindex-node:v0.1.0): Ready, populated" s13_create
check 13.2 "rolling upgrade v0.1.0 -> this build under writes and reads: followers first, leader after a transfer, each pod ready before the next; Upgrading then Ready; write gap per leader transfer" s13_upgrade
check 13.3 "pod template change (spec.resources) rolls the same way" s13_template
check 13.4 "rollback to v0.1.0 refused before any pod is touched (ImageRefused: data format 4); nothing lost, replicas agree" s13_rollback
