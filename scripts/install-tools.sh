#!/usr/bin/env bash
# Installs the project's build/test tools from crates.io into ~/.cargo/bin,
# pinned, skipping what is already there. No system protoc is needed: the
# proto crate compiles .proto files with protox (pure Rust).
set -euo pipefail
NEXTEST_VERSION=0.9.151

need() { echo "missing: $1 — $2" >&2; exit 1; }
command -v cargo >/dev/null || need cargo "install Rust (rustup) first"
rustup component list --installed 2>/dev/null | grep -c '^rustfmt' >/dev/null || rustup component add rustfmt clippy

if ! cargo nextest --version 2>/dev/null | grep -cF "$NEXTEST_VERSION" >/dev/null; then
  echo "installing cargo-nextest $NEXTEST_VERSION (once; takes a few minutes)" >&2
  cargo install cargo-nextest --version "$NEXTEST_VERSION" --locked
fi
cargo nextest --version | sed -n 1p
