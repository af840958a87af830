#!/usr/bin/env bash
# The whole test suite: formatting, lints (Linux and the Windows type-check),
# unit, replay, privileged BPF and systemd tests. Installs what it needs.
# Privileged tests skip with a reason unless CUSTOS_REQUIRE_BPF=1, where a
# machine that cannot run them fails the suite instead.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy (linux)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== type-check and clippy (windows code, cfg custos_windows_typecheck)"
RUSTFLAGS="--cfg custos_windows_typecheck" CARGO_TARGET_DIR=target/wincheck \
  cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build (the end-to-end tests run the custos binary itself)"
cargo build --workspace --locked --bins
echo "== tests"
cargo nextest run --workspace --locked --no-fail-fast
