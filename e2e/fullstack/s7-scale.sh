# Scenario 7 (builds on scenarios 1-2; day-2 scenario 1 of the day-2 issue): scale
# the 2 x 3 index to 5 replicas and back to 3 while a writer (upserts, re-upserts,
# deletes through the client Service) and a reader (searches and gets through the
# client Service and two pods) run the whole time, and an observer fails the
# scenario if any shard ever has fewer ready voters than a quorum (py/quorum_observer.py).
# New pods join as learners, catch up by snapshot (the check first grows the logs
# past --raft-log-keep and snapshots, so the leaders purge) and are promoted to voters; the scale-down takes
# them out of Raft before the StatefulSets shrink. At the end every replica of
# every shard is checked against the writer's history (py/history_check.py).

# s7_leaders: each shard's leader pod, from status.
s7_leaders() {
  k -n "$NS1" get vidx demo -o jsonpath='{range .status.shards[*]}{.leader}{" "}{end}'
}

# s7_report: on a timeout, the status and why each pod that is not Ready says so.
s7_report() {
  local p ip
  k -n "$NS1" get vidx demo -o yaml | sed -n '/^status:/,$p'
  for p in $(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo -o name); do
    ip=$(k -n "$NS1" get "$p" -o jsonpath='{.status.podIP}')
    echo "$p ($ip): $(curl -s -m 2 "http://$ip:7080/readyz")"
    curl -s -m 2 "http://$ip:7080/metrics" | grep -E '^kindex_raft_(snapshot_index|applied_index|state|diverged)' | tr '\n' ' '
    echo
  done
}

s7_scale() {
  local cip t ips p0 p1
  cip=$(k -n "$NS1" get svc demo -o jsonpath='{.spec.clusterIP}')
  p0=$(k -n "$NS1" get pod demo-s0-0 -o jsonpath='{.status.podIP}')
  p1=$(k -n "$NS1" get pod demo-s1-1 -o jsonpath='{.status.podIP}')
  waitfor 60 vidx_shape 3
  rm -f "$RUN/s7.stop"
  # Whatever ends this check (it runs in a subshell), the load stops with it.
  trap 'touch "$RUN/s7.stop"' EXIT
  python3 "$ROOT"/e2e/fullstack/py/quorum_observer.py "$KUBECTL" "$NS1" demo "$RUN/s7.stop" 900 \
    >"$RUN/s7.observer" 2>&1 &
  local observer=$!
  python3 "$ROOT"/e2e/fullstack/py/history_writer.py "$RUN/s7.history" "$RUN/s7.stop" \
    "http://$cip:7080" s7k 20000 900 >"$RUN/s7.writer" 2>&1 &
  local writer=$!
  python3 "$ROOT"/e2e/fullstack/py/reader.py "$RUN/s7.stop" demo 16 900 \
    "http://$cip:7080" "http://$p0:7080" "http://$p1:7080" >"$RUN/s7.reader" 2>&1 &
  local reader=$!
  sleep 3
  # The window that matters: a new replica whose leader no longer has the log from
  # index 0 must be sent a snapshot. Grow each shard's log past --raft-log-keep
  # (1000; scenario 2's bulk load is only ~800 entries), snapshot every pod (the
  # leaders then purge all but the last 1000 entries), and check the leaders did
  # purge: the new replicas can only start from an installed snapshot (checked
  # after the scale-up).
  python3 "$ROOT"/e2e/fullstack/py/log_filler.py "http://$cip:7080" 2600 8 180
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex snapshot -n "$NS1" --index demo >/dev/null
  for p in $(s7_leaders); do
    waitfor 30 log_purged "$p" ||
      fail "leader $p did not purge its log: new replicas would catch up by log"
    echo "leader $p: $(log_purged "$p")"
  done

  t=$(now)
  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"replicas":5}}' >/dev/null
  waitfor 480 vidx_shape 5 || { s7_report; return 1; }
  echo "3 -> 5: every shard 5 voters, 10/10 ready after $(since "$t")s"
  local m si
  for p in demo-s0-3 demo-s0-4 demo-s1-3 demo-s1-4; do
    ip=$(k -n "$NS1" get pod "$p" -o jsonpath='{.status.podIP}')
    m=$(curl -s "http://$ip:7080/metrics" | grep -E '^kindex_raft_(snapshot_index|applied_index)' | tr '\n' ' ')
    echo "  $p: $m"
    si=$(sed -n 's/.*kindex_raft_snapshot_index \([0-9]*\).*/\1/p' <<<"$m")
    ((${si:-0} > 0)) || fail "$p did not start from a snapshot (snapshot_index ${si:-?}): the window this check is for was missed"
  done
  sleep 5

  t=$(now)
  k -n "$NS1" patch vidx demo --type merge -p '{"spec":{"replicas":3}}' >/dev/null
  waitfor 480 vidx_shape 3 || { s7_report; return 1; }
  waitfor 180 bash -c "[[ \$($KUBECTL -n $NS1 get pods -l app.kubernetes.io/instance=demo -o name | wc -l) == 6 ]]"
  echo "5 -> 3: every shard 3 voters, 6/6 ready, 4 pods gone after $(since "$t")s"
  sleep 3

  touch "$RUN/s7.stop"
  wait "$writer" || true
  wait "$reader" || true
  local obs_rc=0
  wait "$observer" || obs_rc=$?
  cat "$RUN/s7.writer" "$RUN/s7.reader" "$RUN/s7.observer"
  ((obs_rc == 0)) || fail "the observer saw a shard below quorum"
  grep -q '"outcome": "ok"' "$RUN/s7.history" || fail "no write was acknowledged"
  local rok rall
  read -r rall rok < <(sed -n 's/^reader: \([0-9]*\) reads: \([0-9]*\) ok.*/\1 \2/p' "$RUN/s7.reader")
  ((rall > 0 && rok * 100 >= rall * 99)) || fail "reads: only $rok of $rall ok (want >= 99%)"
  waitfor 120 shards_agree 3
  shards_agree 3
  ips=$(k -n "$NS1" get pods -l app.kubernetes.io/instance=demo \
    -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}')
  # shellcheck disable=SC2086 # one argument per pod IP
  python3 "$ROOT"/e2e/fullstack/py/history_check.py "$RUN/s7.history" $ips
}

check 7.1 "scale 3 -> 5 -> 3 under writes and reads: quorum always kept, every replica matches the history" s7_scale
