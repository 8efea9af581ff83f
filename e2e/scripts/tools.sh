#!/usr/bin/env bash
# Builds the Kubernetes test-tier tools from pinned Go modules:
#   kindex-testenv  kube-apiserver + embedded etcd (+ kube-controller-manager)
#   kubectl         k8s.io/kubernetes/cmd/kubectl, same release as the server
#   helm            helm.sh/helm/v3/cmd/helm, from its own module
# into a cache directory whose name changes whenever the pins or the sources
# change, and skips the build when that directory is already complete.
#
# Usage:  eval "$(bash e2e/scripts/tools.sh)"
# stdout: only `export KINDEX_TOOLS_DIR=... KINDEX_TESTENV=... KUBECTL=... HELM=...`
#         (also written to $KINDEX_TOOLS_DIR/env.sh); progress goes to stderr.
# Env:    KINDEX_TOOLS_DIR  install here instead of ~/.cache/kindex/tools/<key>
#         (rebuilt there when the key changes). Go's own caches (GOCACHE,
#         GOMODCACHE) are used as they are set.
# A cold build (module download + compile) takes 15-20 minutes on 2 cores and
# ~2 GiB of memory; a rebuild after a source change ~20 s; an up-to-date run 0.05 s.
set -euo pipefail

log() { echo "tools.sh: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod=$(cd "$here/../apiserver" && pwd)
helm_mod="$mod/helm"

command -v go >/dev/null 2>&1 || die "'go' is not on PATH; Go >= 1.25 is needed to build the Kubernetes test tools"
[[ -f "$mod/go.mod" && -f "$helm_mod/go.mod" ]] || die "missing $mod/go.mod or $helm_mod/go.mod"

# Pinned versions, read from the go.mod files (the single source of truth).
modver() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$2"; }
k8s_version=$(modver k8s.io/kubernetes "$mod/go.mod")
helm_version=$(modver helm.sh/helm/v3 "$helm_mod/go.mod")
helm_k8s=$(modver k8s.io/client-go "$helm_mod/go.mod") # v0.34.2 -> Kubernetes 1.34
[[ -n "$k8s_version" && -n "$helm_version" && -n "$helm_k8s" ]] ||
	die "could not read the pinned versions from the go.mod files"

# Cache key: every input of the build. Any edit to a go.mod/go.sum, a Go
# source file or this script, or another Go release, gives a new directory.
key=$(
	cd "$mod"
	{
		find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum
		sha256sum <"$here/tools.sh"
		go env GOVERSION GOOS GOARCH
	} | sha256sum | cut -c1-12
)
dir=${KINDEX_TOOLS_DIR:-"${XDG_CACHE_HOME:-$HOME/.cache}/kindex/tools/k8s-$k8s_version-helm-$helm_version-$key"}
bins=(kindex-testenv kubectl helm)

emit_env() {
	printf "export KINDEX_TOOLS_DIR='%s'\n" "$dir"
	printf "export KINDEX_TESTENV='%s'\n" "$dir/kindex-testenv"
	printf "export KUBECTL='%s'\n" "$dir/kubectl"
	printf "export HELM='%s'\n" "$dir/helm"
}

complete=1
for b in "${bins[@]}"; do [[ -x "$dir/$b" ]] || complete=0; done
if [[ $complete == 1 && "$(cat "$dir/.key" 2>/dev/null)" == "$key" ]]; then
	log "up to date: $dir (Kubernetes $k8s_version, helm $helm_version)"
	emit_env
	exit 0
fi

log "building Kubernetes $k8s_version tools and helm $helm_version into $dir"
log "(a cold build downloads ~1 GiB of modules and compiles for 15-20 minutes; later builds reuse Go's caches)"
mkdir -p "$dir" || die "cannot create $dir"
tmp=$(mktemp -d "$dir/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Static binaries (like the official Kubernetes builds): no C toolchain needed.
export CGO_ENABLED=0
# The version strings a Kubernetes release build stamps in; without them
# /version reports v0.0.0-master and `kubectl version` fails to parse it.
minor=${k8s_version#v1.}
minor=${minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
helm_minor=${helm_k8s#v0.}
helm_minor=${helm_minor%%.*}
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
	helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_minor"
done

build() { # build NAME MODULE_DIR LDFLAGS PACKAGE
	local name=$1 moddir=$2 ldflags=$3 pkg=$4 start=$SECONDS
	log "go build $pkg ..."
	(cd "$moddir" && go build -buildvcs=false -ldflags "$ldflags" -o "$tmp/$name" "$pkg") ||
		die "building $name ($pkg in $moddir) failed; see the Go errors above (module proxy unreachable? go.sum out of date?)"
	log "built $name in $((SECONDS - start))s"
}
total=$SECONDS
# go build downloads only the modules it needs. go.sum must already hold
# every checksum (-mod=readonly is the default): a build never edits the pins.
build kindex-testenv "$mod" "$k8s_ldflags" ./cmd/kindex-testenv
build kubectl "$mod" "$k8s_ldflags" k8s.io/kubernetes/cmd/kubectl
build helm "$helm_mod" "$helm_ldflags" helm.sh/helm/v3/cmd/helm

for b in "${bins[@]}"; do mv -f "$tmp/$b" "$dir/$b"; done
printf '%s\n' "$key" >"$dir/.key"
emit_env >"$dir/env.sh"
log "done in $((SECONDS - total))s: $dir"
emit_env
