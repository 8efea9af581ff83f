#!/usr/bin/env bash
# Runs every test tier of kindex on a fresh machine. This is the README's test
# command and what CI runs (.ci/run). It installs what it needs itself:
# cargo-nextest (from crates.io), and for the Kubernetes tier a kube-apiserver,
# kubectl and helm built from Go modules (e2e/scripts/tools.sh), and for the
# Python tier a cached venv with pinned packages from PyPI (scripts/python-tests.sh).
#
#   scripts/test.sh            all tiers
#   KINDEX_TIERS="unit" ...    a subset: any of lint unit cluster fuzz python k8s fullstack
set -euo pipefail
cd "$(dirname "$0")/.."

tiers="${KINDEX_TIERS:-lint unit cluster fuzz python k8s fullstack}"
has() { [[ " $tiers " == *" $1 "* ]]; }
step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
started=$(date +%s)

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Builds are cached under the machine's normal cache dir, so a fresh clone
# (as CI uses) does not rebuild every dependency.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kindex/target}"
export RUST_BACKTRACE=1

step "toolchain"
bash scripts/install-tools.sh
export PATH="$HOME/.cargo/bin:$PATH"

if has lint; then
  step "cargo fmt --check"
  cargo fmt --all --check
  step "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

if has unit || has cluster; then
  step "build (all binaries, test profile)"
  cargo build --workspace --bins --locked
  # Unit tests, property tests and the process-level cluster tests (real
  # kindex-node processes on 127.0.0.1) all run under nextest, in parallel.
  # The release v0.1.0 of kindex-node, for the mixed-version tests (pinned in scripts/releases, cached; the first
  # run on a machine builds it, about 10 minutes on 2 cores).
  step "kindex-node v0.1.0 (mixed-version tests)"
  KINDEX_NODE_V010_BIN="$(bash scripts/compat-node.sh v0.1.0)"
  export KINDEX_NODE_V010_BIN
  step "cargo nextest (unit + cluster tiers)"
  cargo nextest run --workspace --locked --no-fail-fast --profile ci
  # No crate has doc tests (nextest does not run them); add
  # `cargo test --workspace --doc` here when one does.
elif has python || has fuzz; then
  step "build kindex-node (test profile)"
  cargo build -p kindex-node --locked
fi

if has python; then
  # The Python client and LangChain store against real kindex-node processes.
  step "Python client (clients/python)"
  KINDEX_NODE_BIN="$CARGO_TARGET_DIR/debug/kindex-node" bash scripts/python-tests.sh
fi

# fuzz: OpenAPI-driven property tests (schemathesis, cached venv) against a standalone
# node on 127.0.0.1 (scripts/api-fuzz.sh).
if has fuzz; then
  step "API fuzzing (schemathesis against a standalone node)"
  bash scripts/api-fuzz.sh
fi

if has k8s; then
  if [ -f e2e/run.sh ]; then
    step "Kubernetes tier (real kube-apiserver)"
    bash e2e/run.sh
  else
    echo "e2e/run.sh missing: the Kubernetes tier is not set up" >&2
    exit 1
  fi
fi

if has fullstack; then
  # Pods as real processes in their own namespaces, inside one namespace the
  # run creates (needs root); see e2e/fullstack/README.md.
  step "full-stack tier: node agent gofmt, vet, unit tests"
  # CGO_ENABLED=0 as in agent.sh, so vet and test reuse its compiled packages.
  (cd e2e/agent && export CGO_ENABLED=0 && test -z "$(gofmt -l .)" && go vet ./... && go test ./...) ||
    { echo "e2e/agent: gofmt/vet/tests failed (gofmt -l: $(cd e2e/agent && gofmt -l .))" >&2; exit 1; }
  step "full-stack tier (operator and index pods as processes)"
  bash e2e/fullstack/run.sh
fi

step "all tiers passed in $(( $(date +%s) - started ))s"
