# Helpers of the full-stack tier's scenarios (sourced by inside.sh).
# Every wait is bounded.

PASSED=0
FAILED=0
# The full form (e2e/fullstack/full.sh): adds the long checks (e.g. 14.2) to the short ones.
FULL=${KINDEX_FULLSTACK_FULL:-0}
FAILURES=()
KC="$RUN/admin.kubeconfig"
export KUBECONFIG="$KC"

k() { "$KUBECTL" --kubeconfig "$KC" "$@"; }
info() { echo "fullstack: $*" >&2; }
fatal() {
  info "FATAL: $*"
  for f in "$RUN"/testenv.log "$RUN"/agent.log; do
    [[ -f "$f" ]] && { info "last lines of $f:"; tail -n 25 "$f" >&2; }
  done
  exit 1
}
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# wait_line FILE PATTERN TIMEOUT: until FILE has a line starting with PATTERN.
wait_line() {
  local deadline=$((SECONDS + $3))
  until grep -q "^$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# waitfor TIMEOUT CMD...: CMD succeeds within TIMEOUT seconds (else its last
# output and a non-zero status).
waitfor() {
  local deadline=$((SECONDS + $1))
  shift
  local out
  until out=$("$@" 2>&1); do
    if ((SECONDS >= deadline)); then
      echo "timed out waiting for: $*" >&2
      echo "$out" | tail -n 5 >&2
      return 1
    fi
    sleep 0.5
  done
}

# fail MSG: end the current check with a message.
fail() {
  echo "$*" >&2
  return 1
}

# check ID NAME FUNC [ARGS]: one scenario line, "ok|FAIL ID NAME (Ts)".
# FUNC runs in a subshell with errexit, its output kept for the failure report.
check() {
  local id=$1 name=$2
  shift 2
  local t rc out="$RUN/check-$id.out"
  t=$(now)
  set +e
  (
    set -e
    "$@"
  ) >"$out" 2>&1
  rc=$?
  set -e
  if ((rc == 0)); then
    PASSED=$((PASSED + 1))
    printf 'ok   %-5s %s (%ss)\n' "$id" "$name" "$(since "$t")"
  else
    FAILED=$((FAILED + 1))
    FAILURES+=("$id $name")
    printf 'FAIL %-5s %s (%ss)\n' "$id" "$name" "$(since "$t")"
    sed 's/^/       /' "$out" | tail -n 20
  fi
}

# jp OBJ PATH: kubectl get -o jsonpath.
jp() { k get "$1" -o "jsonpath=$2"; }

# pod_metric NS POD METRIC: the integer value of METRIC on POD's /metrics (empty if absent).
pod_metric() {
  curl -s -m 5 "http://$(k -n "$1" get pod "$2" -o jsonpath='{.status.podIP}'):7080/metrics" |
    sed -n "s/^$3 \([0-9]*\).*/\1/p"
}

# log_purged POD: POD's (namespace $NS1) Raft log is purged past index 0 (prints how far).
log_purged() {
  local purged
  purged=$(pod_metric "$NS1" "$1" kindex_raft_purged_index)
  echo "log purged up to ${purged:-none}"
  ((${purged:-0} > 0))
}

pod_ready() { [[ $(k -n "$1" get pod "$2" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
pod_unready() { [[ $(k -n "$1" get pod "$2" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == False ]]; }
restarts() { k -n "$1" get pod "$2" -o 'jsonpath={.status.containerStatuses[0].restartCount}'; }

summary() {
  echo
  if ((FAILED > 0)); then
    printf 'failed: %s\n' "${FAILURES[@]}"
  fi
  echo "$PASSED passed, $FAILED failed"
  ((FAILED == 0))
}

# shards_agree N: index demo of scenario 1 (2 shards): each shard has N replicas
# answering status, all with equal live count and content checksum.
shards_agree() {
  PATH="$RUN/bin:$PATH" "$KUBECTL" kindex status -n "$NS1" --index demo -o json |
    python3 -c '
import json, sys
n = int(sys.argv[1])
doc = json.load(sys.stdin)
ok = True
for shard in (0, 1):
    rows = {(m["status"]["vectorsLive"], m["status"]["contentChecksum"])
            for m in doc["nodes"] if "status" in m and m["status"]["shard"] == shard}
    count = sum(1 for m in doc["nodes"] if "status" in m and m["status"]["shard"] == shard)
    print("shard", shard, "replicas", count, "states", sorted(rows))
    ok = ok and count == n and len(rows) == 1
sys.exit(0 if ok else 1)' "$1"
}

# vidx_shape N: each shard has N voters in status, all N pods Ready.
vidx_shape() {
  k -n "$NS1" get vidx demo -o json | python3 -c '
import json, sys
n = int(sys.argv[1])
st = json.load(sys.stdin).get("status") or {}
shards = st.get("shards") or []
ok = len(shards) == 2 and all(len(s.get("members") or []) == n and s.get("readyReplicas") == n
                              for s in shards)
ok = ok and st.get("phase") == "Ready" and st.get("ready") == f"{2 * n}/{2 * n}"
sys.exit(0 if ok else 1)' "$1"
}
