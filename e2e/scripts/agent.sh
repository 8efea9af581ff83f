#!/usr/bin/env bash
# Builds the full-stack tier's node agent (e2e/agent, virtual-kubelet with a
# process provider) into a cache directory keyed by its sources, and prints
# `export KINDEX_AGENT=...` on stdout. Up to date: ~0.1 s; after an edit:
# a relink (~20 s); cold, with tools.sh's module and build caches warm: ~4 min.
set -euo pipefail
log() { echo "agent.sh: $*" >&2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod=$(cd "$here/../agent" && pwd)
command -v go >/dev/null 2>&1 || { log "ERROR: 'go' is not on PATH"; exit 1; }
key=$(
  cd "$mod"
  {
    find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) ! -name '*_test.go' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
    sha256sum <"$here/agent.sh"
    go env GOVERSION GOOS GOARCH
  } | sha256sum | cut -c1-12
)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/kindex/tools/agent-$key"
if [[ -x "$dir/kindex-agent" ]]; then
  log "up to date: $dir"
else
  log "building kindex-agent into $dir"
  mkdir -p "$dir"
  start=$SECONDS
  (cd "$mod" && CGO_ENABLED=0 go build -buildvcs=false -ldflags "-s -w" -o "$dir/.kindex-agent.tmp" .) ||
    { log "ERROR: building e2e/agent failed"; exit 1; }
  mv -f "$dir/.kindex-agent.tmp" "$dir/kindex-agent"
  log "built in $((SECONDS - start))s"
fi
printf "export KINDEX_AGENT='%s'\n" "$dir/kindex-agent"
