# Scenario 5 (builds on scenarios 1-2): SIGKILL of the kindex-node process
# inside a pod. The agent restarts the container (restartCount 1, last state
# exit 137), the node recovers from its volume, and every replica of the shard
# ends with the same live count and content checksum as before the kill.

# shard_state SHARD: "pod live checksum" per replica, from kubectl kindex status.
shard_state() {
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex status -n "$NS1" --index demo -o json |
    python3 -c '
import json, sys
shard = int(sys.argv[1])
doc = json.load(sys.stdin)
rows = sorted("%s %s %s" % (n["addr"], n["status"]["vectorsLive"], n["status"]["contentChecksum"])
              for n in doc["nodes"] if "status" in n and n["status"]["shard"] == shard)
print("\n".join(rows))' "$1"
}

# replicas_agree SHARD LIVE CHECKSUM: 3 replicas, each with LIVE and CHECKSUM.
replicas_agree() {
  local st
  st=$(shard_state "$1")
  echo "$st"
  [[ $(wc -l <<<"$st") == 3 ]] && ! grep -qv " $2 $3\$" <<<"$st"
}

s5_sigkill() {
  local pod=demo-s0-1
  before=$(shard_state 0)
  echo "before:"
  echo "$before"
  read -r _ live sum <<<"$(head -1 <<<"$before")"
  replicas_agree 0 "$live" "$sum" >/dev/null || fail "replicas disagree before the kill"
  pid=""
  for p in /proc/[0-9]*; do
    if [[ $(cat "$p/comm" 2>/dev/null) == kindex-node ]] && tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -cx "KINDEX_POD_NAME=$pod" >/dev/null; then
      pid=${p#/proc/}
    fi
  done
  [[ -n $pid ]] || fail "no kindex-node process for $pod"
  kill -KILL "$pid"
  echo "SIGKILL to pid $pid ($pod)"
  t=$(now)
  waitfor 60 bash -c "[[ \$($KUBECTL -n $NS1 get pod $pod -o jsonpath='{.status.containerStatuses[0].restartCount}') == 1 ]]"
  code=$(k -n "$NS1" get pod $pod -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}')
  [[ $code == 137 ]] || fail "last state exit code $code, want 137"
  waitfor 180 pod_ready "$NS1" $pod
  echo "restarted and Ready again after $(since "$t")s"
  waitfor 120 replicas_agree 0 "$live" "$sum"
  echo "after:"
  shard_state 0
}

check 5.1 "SIGKILL of a node process: restart, recovery from the volume, replicas agree" s5_sigkill
