#!/usr/bin/env bash
# Builds kindex-node as released (default v0.1.0) for the mixed-version tests (rolling
# upgrades: a replica of the older build next to current ones), and prints the binary's
# path. Releases are pinned to commits in scripts/releases, not looked up as git tags: a
# clone (CI's included) need not carry tags, but every release commit is on main. Cached per tag commit under ~/.cache/kindex/compat/, so only the first run
# on a machine builds (about 10 minutes on 2 cores); the build dir is removed afterwards.
#
#   KINDEX_NODE_V010_BIN="$(bash scripts/compat-node.sh v0.1.0)"
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-v0.1.0}"
pinned="$(awk -v t="$tag" '$1 == t { print $2 }' scripts/releases)"
[ -n "$pinned" ] || { echo "compat-node: release $tag is not listed in scripts/releases" >&2; exit 1; }
commit="$(git rev-parse --verify --quiet "$pinned^{commit}")" ||
  { echo "compat-node: commit $pinned of $tag is not in this clone (a shallow clone? git fetch --unshallow)" >&2; exit 1; }
cache="${XDG_CACHE_HOME:-$HOME/.cache}/kindex/compat"
out="$cache/$tag-${commit:0:12}/kindex-node"
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi

src="$(mktemp -d)"
trap 'rm -rf "$src" "$cache/target-$tag"' EXIT
git archive "$commit" | tar -x -C "$src"
echo "compat-node: building kindex-node at $tag ($commit) into $out" >&2
(cd "$src" && CARGO_TARGET_DIR="$cache/target-$tag" cargo build -q -p kindex-node --locked >&2)
mkdir -p "$(dirname "$out")"
cp "$cache/target-$tag/debug/kindex-node" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
