#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the workspace.
# Installs what a fresh machine lacks (the rustfmt and clippy components, the wasm32-wasip2
# target for the example guests).
set -euo pipefail
cd "$(dirname "$0")/.."

for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    rustup component add "$component"
  fi
done

# The worker's tests and benchmarks run the example guests (wasm32-wasip2 components).
scripts/build-examples.sh
# The guests' own unit tests (argument parsing), on the host.
cargo test --manifest-path examples/functions/Cargo.toml --workspace --locked --quiet

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
