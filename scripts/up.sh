#!/usr/bin/env bash
# Starts a whole Turnpike cluster on this machine (`turnpike up`): builds the example functions
# the demo app uses (installing the wasm32-wasip2 target if missing), then the binary, then
# runs it. Arguments go to `turnpike up` (try --help). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-examples.sh
exec cargo run --release -- up "$@"
