#!/usr/bin/env bash
# Installs the `wasmtime` CLI (the same version as the worker's wasmtime) into .tools/wasmtime,
# for the control-plane benchmark that compares Turnpike with `wasmtime serve`
# (`cargo bench -p turnpike-cluster --bench cluster`). Builds from crates.io: about 20 minutes
# on 2 cores. Idempotent: does nothing when that version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=48.0.8
ROOT=.tools/wasmtime
if [ -x "$ROOT/bin/wasmtime" ] && "$ROOT/bin/wasmtime" --version | grep -q " $VERSION"; then
  echo "wasmtime $VERSION is installed: $ROOT/bin/wasmtime"
  exit 0
fi
echo "building wasmtime-cli $VERSION into $ROOT (about 20 minutes on 2 cores)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-.tools/wasmtime-target}" \
  cargo install wasmtime-cli --version "$VERSION" --locked --root "$ROOT"
echo "installed: $ROOT/bin/wasmtime"
