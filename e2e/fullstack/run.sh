#!/usr/bin/env bash
# The full-stack Kubernetes tier: kube-apiserver + etcd + kube-controller-manager
# + kube-scheduler (kindex-testenv), a node agent serving 3 Nodes whose pods run
# as real processes (e2e/agent), the Helm chart's operator pod and the
# VectorIndex's kindex-node pods — all inside ONE pid + network + mount
# namespace created here, with no uplink: the pod network 10.244.0.0/24 exists
# only in there, and everything in it dies with it (success, failure, Ctrl-C).
#
# Usage: bash e2e/fullstack/run.sh [SCENARIO...]     (default: all; e.g. `0 1`)
# Needs root (namespaces, veth, mounts), go, cargo. Prints one line per check,
# each with its duration, and closes with "N passed, M failed".
# Env: KINDEX_FULLSTACK_KEEP=1 keeps the run directory (logs) after the run;
#      KINDEX_BIN_DIR=DIR takes kindex-node, kindex-operator, kindex and
#      kubectl-kindex from DIR instead of `cargo build` (debug profile).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
log() { echo "fullstack: $*" >&2; }

[[ $(id -u) == 0 ]] || { log "ERROR: needs root (network and mount namespaces)"; exit 1; }
# kube-proxy's nftables mode drives the `nft` command (Debian's nftables).
if ! command -v nft >/dev/null && command -v apt-get >/dev/null; then
  log "installing nftables (for kube-proxy) from Debian's packages ..."
  apt-get install -y -q nftables >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q nftables >/dev/null; } ||
    { log "ERROR: apt-get install nftables failed"; exit 1; }
fi
for c in unshare nsenter ip python3 curl nft; do
  command -v "$c" >/dev/null || { log "ERROR: '$c' not found"; exit 1; }
done

t0=$SECONDS
eval "$(bash e2e/scripts/tools.sh)"
eval "$(bash e2e/scripts/agent.sh)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kindex/target}"
export PATH="$HOME/.cargo/bin:$PATH"
# Scenario 0 runs shell pods only; every other one needs the kindex binaries.
need_kindex=1
[[ "$*" == "0" ]] && need_kindex=0
bindir="$CARGO_TARGET_DIR/debug"
if [[ -n "${KINDEX_BIN_DIR:-}" ]]; then
  bindir=$KINDEX_BIN_DIR # prebuilt binaries: no cargo build
elif ((need_kindex)); then
  # The same command as scripts/test.sh's build step, so that after it this
  # is a no-op (a -p subset could unify features differently and rebuild).
  log "cargo build --workspace --bins ..."
  cargo build --workspace --bins --locked >&2
fi
log "build steps done in $((SECONDS - t0))s"

# The run directory: on disk (PVs live here), outside /tmp (the namespace
# gets its own /tmp bound from here). World-readable so pods running as a
# non-root user can execute the binaries copied into it.
RUN=$(mktemp -d /var/tmp/kindex-fullstack.XXXXXX)
chmod 755 "$RUN"
cleanup() {
  local rc=$?
  # The namespace is gone once unshare has returned: no process, mount or
  # link of the tier is left, only this directory.
  if [[ -n "${KINDEX_FULLSTACK_KEEP:-}" ]]; then
    log "kept $RUN"
  else
    # A process of the namespace may still be dying (SIGKILL is async).
    rm -rf "$RUN" 2>/dev/null || { sleep 1; rm -rf "$RUN"; }
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # until the namespace exists (see below)

mkdir -p "$RUN/bin"
if ((need_kindex)); then
  for b in kindex-node kindex-operator kindex kubectl-kindex; do
    install -m 755 "$bindir/$b" "$RUN/bin/$b"
  done
fi
# Scenario 13 (rolling upgrade) starts from release v0.1.0's kindex-node: the agent runs it
# for the image tag kindex/kindex-node:v0.1.0 (built once per machine by
# scripts/compat-node.sh, cached under ~/.cache/kindex/compat).
if [[ $# == 0 || " $* " == *" 13 "* ]]; then
  log "kindex-node v0.1.0 (scripts/compat-node.sh) ..."
  v010=$(bash scripts/compat-node.sh v0.1.0)
  mkdir -p "$RUN/bin/v0.1.0"
  install -m 755 "$v010" "$RUN/bin/v0.1.0/kindex-node"
  chmod 755 "$RUN/bin/v0.1.0"
fi
install -m 755 "$KINDEX_AGENT" "$RUN/bin/kindex-agent"

export RUN KUBECTL HELM KINDEX_TESTENV ROOT="$root"
# --kill-child: when unshare dies, the namespace's first process gets SIGKILL
# and with it every process in the pid namespace. unshare ignores SIGINT and
# SIGTERM while it waits, so on Ctrl-C (or TERM) this script kills it: the
# whole tier goes at once, then cleanup removes the run directory.
unshare --pid --fork --kill-child --mount-proc --net --mount --propagation private \
  bash e2e/fullstack/inside.sh "$@" &
ns_pid=$!
trap 'kill -KILL "$ns_pid" 2>/dev/null; wait "$ns_pid" 2>/dev/null; exit 130' INT TERM
wait "$ns_pid"
