#!/usr/bin/env bash
# API fuzzing: property-based tests generated from the node's /openapi.json
# (schemathesis, scripts/api-fuzz/test_api.py) against a standalone kindex-node on
# 127.0.0.1. Asserts no 5xx, only JSON error bodies, conformance to the document, and no
# content change after a refused request. Bounded: KINDEX_FUZZ_EXAMPLES cases per
# operation and generation mode (default 40), and KINDEX_FUZZ_TIMEOUT seconds (default 900).
#
# The Python tools live in a venv cached under ~/.cache/kindex/venv-fuzz-<hash of the
# pinned requirements and the Python version>, created on first use from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

req=scripts/api-fuzz/requirements.txt
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "api-fuzz: $python is missing" >&2; exit 1; }
hash=$( { cat "$req"; "$python" --version; } | sha256sum | cut -c1-12)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/kindex/venv-fuzz-$hash"
# A venv cannot be moved (its scripts name its path), so it is built in place and marked
# complete at the end; an interrupted one is rebuilt.
if [ ! -f "$venv/.complete" ]; then
  echo "api-fuzz: creating $venv (once)" >&2
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian splits venv support out of python3.
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get install -y -q python3-venv >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
      rm -rf "$venv"
      "$python" -m venv "$venv"
    else
      echo "api-fuzz: cannot create a venv (install python3-venv)" >&2; exit 1
    fi
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  touch "$venv/.complete"
fi

# KINDEX_NODE_BIN: a kindex-node binary to test; else it is built (the same selection as
# scripts/test.sh builds, so nothing is rebuilt there).
bin=${KINDEX_NODE_BIN:-}
if [ -z "$bin" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kindex/target}"
  cargo build -q --workspace --bins --locked
  bin="$CARGO_TARGET_DIR/debug/kindex-node"
fi

work=$(mktemp -d)
node_pid=
cleanup() {
  if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(port)
grpc_port=$(port)
"$bin" --data-dir "$work/data" --dimension 4 --metric l2 --listen 127.0.0.1 \
  --http-port "$http_port" --grpc-port "$grpc_port" --raft-port "$(port)" --admin-port "$(port)" \
  >"$work/node.log" 2>&1 &
node_pid=$!
url="http://127.0.0.1:$http_port"
for _ in $(seq 1 300); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$url/readyz" >/dev/null || { echo "api-fuzz: node not ready" >&2; tail -20 "$work/node.log" >&2; exit 1; }
# Some content, so searches, gets and deletes have something to find.
curl -fsS -X POST "$url/v1/indexes/default/points" -H 'content-type: application/json' -d '{"points": [
  {"id": "a", "vector": [1, 0, 0, 0], "payload": {"lang": "en", "year": 2001}},
  {"id": "b", "vector": [0, 1, 0, 0], "payload": {"lang": "de", "year": 2011}},
  {"id": "c", "vector": [0, 0, 1, 0]}]}' >/dev/null

started=$(date +%s)
status=0
KINDEX_URL="$url" KINDEX_FUZZ_STATS="$work/stats.json" \
  timeout "${KINDEX_FUZZ_TIMEOUT:-900}" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  scripts/api-fuzz/test_api.py || status=$?
took=$(( $(date +%s) - started ))
if ! kill -0 "$node_pid" 2>/dev/null; then
  echo "api-fuzz: the node died during the run" >&2; tail -30 "$work/node.log" >&2; status=1
fi
echo "api-fuzz: $(cat "$work/stats.json" 2>/dev/null || echo '{}') cases in ${took}s (exit $status)"
[ "$status" = 0 ] || { echo "api-fuzz: node log tail:" >&2; tail -30 "$work/node.log" >&2; }
exit "$status"
