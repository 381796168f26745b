#!/usr/bin/env bash
# Builds the example functions (examples/functions/*, a Cargo workspace of its own) as
# WebAssembly components for wasm32-wasip2 and copies them to examples/functions/dist/<name>.wasm.
# Installs the wasm32-wasip2 target if it is missing. Idempotent: rerunning rebuilds what changed
# and overwrites dist/. Fails if an output is a core module rather than a component.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=wasm32-wasip2
FUNCTIONS_DIR=examples/functions
TARGET_DIR="$FUNCTIONS_DIR/target"
DIST_DIR="$FUNCTIONS_DIR/dist"

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "installing the $TARGET target"
  rustup target add "$TARGET"
fi

# The functions are the workspace members that build a cdylib (guest-util is a plain library).
functions=()
for manifest in "$FUNCTIONS_DIR"/*/Cargo.toml; do
  if grep -q 'crate-type *= *\["cdylib"\]' "$manifest"; then
    functions+=("$(basename "$(dirname "$manifest")")")
  fi
done
if [ "${#functions[@]}" -eq 0 ]; then
  echo "no functions found under $FUNCTIONS_DIR" >&2
  exit 1
fi

# Release profile (lto, opt-level, strip, panic=abort) lives in examples/functions/Cargo.toml.
# --locked: build exactly the dependencies of examples/functions/Cargo.lock.
cargo build \
  --manifest-path "$FUNCTIONS_DIR/Cargo.toml" \
  --target-dir "$TARGET_DIR" \
  --target "$TARGET" \
  --release \
  --locked \
  --workspace

# A component starts with the magic `\0asm` and then version 0x0d 0x00 layer 0x01 0x00;
# a core module would have version 0x01 0x00 layer 0x00 0x00.
COMPONENT_HEADER="00 61 73 6d 0d 00 01 00"

mkdir -p "$DIST_DIR"
echo
echo "components in $(pwd)/$DIST_DIR:"
for name in "${functions[@]}"; do
  built="$TARGET_DIR/$TARGET/release/${name//-/_}.wasm"
  if [ ! -f "$built" ]; then
    echo "error: $built was not produced" >&2
    exit 1
  fi
  header="$(head -c 8 "$built" | od -An -tx1 | tr -s ' ' | sed 's/^ //; s/ $//')"
  if [ "$header" != "$COMPONENT_HEADER" ]; then
    echo "error: $built is not a WebAssembly component (header: $header)" >&2
    exit 1
  fi
  cp -f "$built" "$DIST_DIR/$name.wasm"
  printf '  %-8s %8d bytes  %s\n' "$name" "$(wc -c <"$DIST_DIR/$name.wasm")" "$DIST_DIR/$name.wasm"
done

# The Python and JavaScript examples (examples/functions-python/<name>/app.py with
# componentize-py, examples/functions-js/<name>/app.js with ComponentizeJS), each to its
# directory's dist/<name>.wasm. Rebuilt only when its source, the WIT or the tool changed (a
# stamp beside the output). If the tools cannot be installed, says so and goes on: the tests
# that need these components then skip, naming this script.
if ! scripts/install-component-tools.sh; then
  echo "warning: componentize-py/ComponentizeJS could not be installed: the Python and JavaScript examples are not built" >&2
  exit 0
fi

# build_component LANG_DIR NAME SOURCE COMMAND...: runs COMMAND (which writes OUT) in the
# example's directory when the stamp of its inputs changed.
build_component() {
  local dir=$1 name=$2 source=$3
  shift 3
  local out="$dir/dist/$name.wasm" stamp="$dir/dist/$name.stamp"
  local inputs
  inputs=$({ cat "$dir/$name/$source" "$WIT"/*.wit "$WIT"/deps/*.wit; echo "$*"; } | sha256sum | cut -d' ' -f1)
  if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
    printf '  %-8s %8d bytes  %s (up to date)\n' "$name" "$(wc -c <"$out")" "$out"
    return
  fi
  mkdir -p "$dir/dist"
  (cd "$dir/$name" && "$@" -o "../dist/$name.wasm.tmp")
  header="$(head -c 8 "$out.tmp" | od -An -tx1 | tr -s ' ' | sed 's/^ //; s/ $//')"
  if [ "$header" != "$COMPONENT_HEADER" ]; then
    echo "error: $out.tmp is not a WebAssembly component (header: $header)" >&2
    exit 1
  fi
  mv -f "$out.tmp" "$out"
  echo "$inputs" >"$stamp"
  printf '  %-8s %8d bytes  %s\n' "$name" "$(wc -c <"$out")" "$out"
}

TOOLS=$(pwd)/.tools
# Both languages build against the same world: wasi:http/proxy 0.2.12 (the WIT vendored from
# wasmtime-wasi-http 48, the worker's own).
WIT=$(pwd)/examples/functions-python/wit
echo
echo "Python components (componentize-py):"
for app in examples/functions-python/*/app.py; do
  name=$(basename "$(dirname "$app")")
  build_component examples/functions-python "$name" app.py \
    "$TOOLS/componentize-py/bin/componentize-py" --quiet -d "$WIT" -w function componentize app
done
echo "JavaScript components (ComponentizeJS):"
for app in examples/functions-js/*/app.js; do
  name=$(basename "$(dirname "$app")")
  build_component examples/functions-js "$name" app.js \
    "$TOOLS/componentize-js/node_modules/.bin/componentize-js" app.js --wit "$WIT" --world-name function
done
