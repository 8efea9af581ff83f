#!/usr/bin/env bash
# The Python client's tier (clients/python): a cached venv with the pinned
# requirements and a wheel built from this checkout (gRPC stubs generated from
# proto/ by grpcio-tools; scripts/python-env.sh), mypy --strict on the
# installed package, and pytest against real kindex-node processes on loopback.
#
#   scripts/python-tests.sh [pytest args...]
#
# KINDEX_NODE_BIN: the node binary (default: $CARGO_TARGET_DIR/debug/kindex-node,
# built with `cargo build -p kindex-node` when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
started=$(date +%s)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kindex/target}"
export KINDEX_NODE_BIN="${KINDEX_NODE_BIN:-$CARGO_TARGET_DIR/debug/kindex-node}"
if [ ! -x "$KINDEX_NODE_BIN" ]; then
  echo "python-tests: building kindex-node ($KINDEX_NODE_BIN)"
  cargo build -p kindex-node --locked
fi

# shellcheck source=scripts/python-env.sh
. scripts/python-env.sh
trap 'rm -rf "${kindex_work:-}"' EXIT
kindex_python_env
echo "python-tests: venv and wheel ready after $(( $(date +%s) - started ))s"

# Typed: the installed package with its generated .pyi stubs, strict.
(cd "$kindex_work" && "$vpy" -m mypy --config-file "$root/clients/python/pyproject.toml" \
  --cache-dir "${XDG_CACHE_HOME:-$HOME/.cache}/kindex/mypy-cache" -p kindex)

# Run from outside the source tree so `import kindex` is the installed wheel.
cd "$kindex_work"
set +e
"$vpy" -m pytest -p no:cacheprovider -rs --rootdir "$root/clients/python" \
  -c "$root/clients/python/pyproject.toml" "$root/clients/python/tests" "$@"
rc=$?
set -e
echo "python-tests: exit $rc after $(( $(date +%s) - started ))s"
exit $rc
