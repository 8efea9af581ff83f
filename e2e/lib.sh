# Shared helpers of the Kubernetes tier (sourced by e2e/run.sh).
# Every wait is bounded; everything started is stopped on exit.

PASSED=0
FAILED=0
FAILURES=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kindex-e2e.XXXXXX")
KC="$WORK/admin.kubeconfig"
ENV_PID=""
PIDS=()
READY_TIMEOUT=${READY_TIMEOUT:-180}

log() { echo "e2e: $*" >&2; }
step() { printf '\n--- %s\n' "$*" >&2; }
k() { "$KUBECTL" --kubeconfig "$KC" "$@"; }

cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  if [[ -n "$ENV_PID" ]] && kill -0 "$ENV_PID" 2>/dev/null; then
    kill -TERM "$ENV_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$ENV_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$ENV_PID" 2>/dev/null || true
  fi
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [[ $rc != 0 ]]; then
    for f in "$WORK"/*.log; do
      [ -f "$f" ] || continue
      log "last lines of $f:"
      tail -n 30 "$f" >&2
    done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

testenv_start() {
  local start=$SECONDS
  "$KINDEX_TESTENV" --controller-manager --kubeconfig-out "$KC" --max-lifetime 30m \
    --extra-token "e2e-operator-token,system:serviceaccount:kindex-system:kindex-operator,op-uid,system:serviceaccounts" \
    >"$WORK/testenv.out" 2>"$WORK/testenv.log" &
  ENV_PID=$!
  local deadline=$((SECONDS + READY_TIMEOUT))
  until grep -q '^READY ' "$WORK/testenv.out" 2>/dev/null; do
    kill -0 "$ENV_PID" 2>/dev/null || { log "kindex-testenv exited before READY"; exit 1; }
    ((SECONDS < deadline)) || { log "kindex-testenv not READY after ${READY_TIMEOUT}s"; exit 1; }
    sleep 0.2
  done
  log "kube-apiserver ready in $((SECONDS - start))s"
}

# retry N SLEEP CMD...: run CMD until it succeeds, at most N times.
retry() {
  local n=$1 s=$2
  shift 2
  for i in $(seq 1 "$n"); do
    "$@" && return 0
    ((i < n)) && sleep "$s"
  done
  return 1
}

# check NAME CMD...: one test case.
check() {
  local name=$1
  shift
  if "$@" >"$WORK/out" 2>&1; then
    PASSED=$((PASSED + 1))
    echo "  ok   $name"
  else
    FAILED=$((FAILED + 1))
    FAILURES+=("$name")
    echo "  FAIL $name"
    sed 's/^/       /' "$WORK/out" | tail -n 15
  fi
}

# check_rejected NAME PATTERN CMD...: CMD must fail, its error matching PATTERN.
check_rejected() {
  local name=$1 pattern=$2
  shift 2
  if "$@" >"$WORK/out" 2>&1; then
    FAILED=$((FAILED + 1))
    FAILURES+=("$name")
    echo "  FAIL $name (was accepted)"
  elif [[ -n "$pattern" ]] && ! grep -q "$pattern" "$WORK/out"; then
    FAILED=$((FAILED + 1))
    FAILURES+=("$name")
    echo "  FAIL $name (rejected without '$pattern'):"
    sed 's/^/       /' "$WORK/out" | tail -n 5
  else
    PASSED=$((PASSED + 1))
    echo "  ok   $name: $(grep -o 'Invalid value.*\|is invalid.*\|Unsupported value.*\|should be.*' "$WORK/out" | head -1 | cut -c1-140)"
  fi
}

# wait_for NAME TIMEOUT CMD...: CMD must succeed within TIMEOUT seconds.
wait_for() {
  local name=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >"$WORK/out" 2>&1; do
    if ((SECONDS >= deadline)); then
      FAILED=$((FAILED + 1))
      FAILURES+=("$name")
      echo "  FAIL $name (not within ${timeout}s)"
      sed 's/^/       /' "$WORK/out" | tail -n 10
      return 0
    fi
    sleep 0.5
  done
  PASSED=$((PASSED + 1))
  echo "  ok   $name"
}

summary() {
  echo
  if ((FAILED > 0)); then
    printf 'failed: %s\n' "${FAILURES[@]}"
  fi
  echo "$PASSED passed, $FAILED failed"
  ((FAILED == 0))
}
