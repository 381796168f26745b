#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the workspace.
# Installs what a fresh machine lacks (the rustfmt and clippy components, the wasm32-wasip2
# target for the example guests), and runs a throwaway PostgreSQL server for the store's
# tests, which run against both SQLite and PostgreSQL.
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

# The dashboard's test drives a real browser (headless Chromium).
TURNPIKE_BROWSER=$(scripts/install-browser.sh)
export TURNPIKE_BROWSER

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

postgres_dir=$(mktemp -d /tmp/turnpike-postgres.XXXXXX)
trap 'scripts/postgres.sh stop "$postgres_dir" 2>/dev/null || true; rm -rf "$postgres_dir"' EXIT
TURNPIKE_POSTGRES_URL=$(scripts/postgres.sh start "$postgres_dir")
export TURNPIKE_POSTGRES_URL TURNPIKE_REQUIRE_POSTGRES=1
# The cluster across hosts (crates/turnpike/tests/hosts.rs) needs root for its network
# namespaces: CI runs as root, so there it must run, not be skipped.
if [[ $(id -u) == 0 ]]; then
  export TURNPIKE_REQUIRE_NETNS=1
fi
cargo test --workspace --release
