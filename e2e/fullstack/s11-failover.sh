# Scenario 11 (builds on scenario 1's index s1/demo and the chart's two operator pods;
# day-2 scenario 5 of issue 15): the operator's leader is SIGKILLed in the middle of a
# scale-up (3 -> 4) and again in the middle of the scale-down back to 3, while a writer
# (upserts, re-upserts, deletes through the client Service) and the quorum observer run.
# The standby takes the Lease and finishes each; no shard ever has fewer ready voters than
# a quorum; no membership step is carried out twice for a pod (the operator's AddLearner /
# PromoteVoter / RemoveVoters events); every replica matches the writer's history.

s11_holder() { k -n kindex-system get lease kindex-operator -o jsonpath='{.spec.holderIdentity}'; }

# s11_members: each shard's voter count, e.g. "4 3".
s11_members() {
  k -n "$NS1" get vidx demo -o jsonpath='{range .status.shards[*]}{.members}{"\n"}{end}' |
    python3 -c 'import json, sys; print(" ".join(str(len(json.loads(l or "[]"))) for l in sys.stdin if l.strip()))'
}

# s11_removed_one: a shard has gone below 4 voters.
s11_removed_one() { [[ $(s11_members) != "4 4" ]]; }
# s11_scaledown_started: phase Scaling, or a voter already removed (release binaries remove
# them within a second of the patch: the phase can be Scaling for less than one poll).
s11_scaledown_started() {
  [[ $(k -n "$NS1" get vidx demo -o jsonpath='{.status.phase}') == Scaling ]] || s11_removed_one
}

# s11_kill_leader: SIGKILL to the kindex-operator process of the pod holding the Lease (no
# graceful release: the standby must wait the Lease out) and the pod deleted, then wait for
# the standby to take the Lease.
s11_kill_leader() {
  local holder pid p t
  holder=$(s11_holder)
  [[ -n $holder ]] || fail "nobody holds the operator Lease"
  pid=""
  for p in /proc/[0-9]*; do
    if [[ $(cat "$p/comm" 2>/dev/null) == kindex-operato* ]] &&
      tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "POD_NAME=$holder"; then
      pid=${p#/proc/}
    fi
  done
  [[ -n $pid ]] || fail "no kindex-operator process for the Lease holder $holder"
  kill -KILL "$pid"
  t=$(now)
  # The pod goes too: restarted in place, the container would come back under the same
  # identity (the pod name) and could hold the Lease again.
  k -n kindex-system delete pod "$holder" --grace-period=0 --force --wait=false >/dev/null 2>&1
  echo "SIGKILL to the operator leader $holder (pid $pid), pod deleted, with voters per shard: $(s11_members)"
  waitfor 90 bash -c "h=\$($KUBECTL -n kindex-system get lease kindex-operator -o jsonpath='{.spec.holderIdentity}'); [[ -n \$h && \$h != $holder ]]" ||
    fail "no other operator pod took the Lease from $holder"
  echo "  $(s11_holder) holds the Lease $(since "$t")s later"
}

# s11_steps: "REASON POD COUNT" for the operator's membership events of this index, every
# series counted (events.k8s.io; the Recorder folds repeats into one series).
s11_steps() {
  k -n "$NS1" get events.events.k8s.io -o json | python3 -c '
import json, sys
from collections import Counter
c = Counter()
for e in json.load(sys.stdin)["items"]:
    if e.get("reason") in ("AddLearner", "PromoteVoter", "RemoveVoters") and (e.get("regarding") or {}).get("name") == "demo":
        pod = (e.get("related") or {}).get("name", "?")
        c[(e["reason"], pod)] += (e.get("series") or {}).get("count", 1)
for (r, p), n in sorted(c.items()):
    print(r, p, n)'
}

s11_failover() {
  local cip t before after ips
  cip=$(k -n "$NS1" get svc demo -o jsonpath='{.spec.clusterIP}')
  waitfor 120 vidx_shape 3 || fail "the index is not Ready with 3 replicas to start with"
  before=$(s11_steps)
  rm -f "$RUN/s11.stop"
  trap 'touch "$RUN/s11.stop"' EXIT
  python3 "$ROOT"/e2e/fullstack/py/quorum_observer.py "$KUBECTL" "$NS1" demo "$RUN/s11.stop" 900 \
    >"$RUN/s11.observer" 2>&1 &
  local observer=$!
  python3 "$ROOT"/e2e/fullstack/py/history_writer.py "$RUN/s11.history" "$RUN/s11.stop" \
    "http://$cip:7080" s11k 20000 900 >"$RUN/s11.writer" 2>&1 &
  local writer=$!
  sleep 2

  # Mid scale-up: the new pods exist, and not every shard has promoted its new voter yet.
  t=$(now)
  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"replicas":4}}' >/dev/null
  waitfor 120 bash -c "$KUBECTL -n $NS1 get pod demo-s0-3 demo-s1-3 >/dev/null 2>&1" ||
    fail "the operator did not start the scale-up"
  [[ $(s11_members) != "4 4" ]] || fail "both shards had 4 voters before the kill: the window was missed"
  s11_kill_leader
  waitfor 480 vidx_shape 4 || { k -n "$NS1" get vidx demo -o yaml | sed -n '/^status:/,$p'; fail "3 -> 4 did not finish"; }
  echo "3 -> 4 finished by the standby: every shard 4 voters, 8/8 ready after $(since "$t")s"

  # Mid scale-down: the operator has begun (a shard is below 4 voters or a step is in
  # flight) and the extra pods are not all gone yet.
  t=$(now)
  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"replicas":3}}' >/dev/null
  waitfor 120 s11_scaledown_started || fail "the scale-down did not start"
  waitfor 60 s11_removed_one || echo "  (no voter removed within 60 s; killing anyway)"
  if ! k -n "$NS1" get pod demo-s0-3 demo-s1-3 >/dev/null 2>&1 && [[ $(s11_members) == "3 3" ]]; then
    fail "the scale-down had finished before the kill: the window was missed"
  fi
  s11_kill_leader
  waitfor 480 vidx_shape 3 || { k -n "$NS1" get vidx demo -o yaml | sed -n '/^status:/,$p'; fail "4 -> 3 did not finish"; }
  waitfor 180 bash -c "[[ \$($KUBECTL -n $NS1 get pods -l app.kubernetes.io/instance=demo -o name | wc -l) == 6 ]]"
  echo "4 -> 3 finished by the standby: every shard 3 voters, 6/6 ready, 2 pods gone after $(since "$t")s"
  sleep 2

  touch "$RUN/s11.stop"
  wait "$writer" || true
  local obs_rc=0
  wait "$observer" || obs_rc=$?
  cat "$RUN/s11.writer" "$RUN/s11.observer"
  ((obs_rc == 0)) || fail "the observer saw a shard below quorum"
  grep -q '"outcome": "ok"' "$RUN/s11.history" || fail "no write was acknowledged"

  # Each step at most once per pod in this check (a kill can land after a step and before
  # its event: 0 is possible, 2 is a step done twice).
  after=$(s11_steps)
  python3 - "$before" "$after" <<'EOF' || fail "a membership step was carried out twice"
import sys
def parse(s):
    return {tuple(l.split()[:2]): int(l.split()[2]) for l in s.splitlines() if l.strip()}
before, after = parse(sys.argv[1]), parse(sys.argv[2])
bad = False
for key in sorted(set(after) | set(before)):
    d = after.get(key, 0) - before.get(key, 0)
    if d:
        print("step", *key, "x", d)
    bad |= d > 1
sys.exit(1 if bad else 0)
EOF
  waitfor 120 shards_agree 3
  shards_agree 3
  ips=$(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}')
  # shellcheck disable=SC2086 # one argument per pod IP
  python3 "$ROOT"/e2e/fullstack/py/history_check.py "$RUN/s11.history" $ips
}

check 11.1 "operator leader SIGKILLed mid scale-up and mid scale-down: the standby takes the Lease and finishes, quorum always kept, no step done twice, every replica matches the history" s11_failover
