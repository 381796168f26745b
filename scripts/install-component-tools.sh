#!/usr/bin/env bash
# Installs the tools that build the Python and JavaScript example functions into .tools/:
# componentize-py (from PyPI, in a virtualenv at .tools/componentize-py) and ComponentizeJS
# (from npm, at .tools/componentize-js). Pinned versions; about a minute on a fresh machine.
# Idempotent: does nothing for a tool already installed at its version. Exits non-zero if
# python3 -m venv or npm is missing or an install fails, saying which.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION=0.25.1
JS_VERSION=0.23.0
PY_ROOT=.tools/componentize-py
JS_ROOT=.tools/componentize-js

if [ -x "$PY_ROOT/bin/componentize-py" ] &&
  "$PY_ROOT/bin/componentize-py" --version | grep -qx "componentize-py $PY_VERSION"; then
  echo "componentize-py $PY_VERSION is installed: $PY_ROOT/bin/componentize-py"
else
  echo "installing componentize-py $PY_VERSION into $PY_ROOT"
  rm -rf "$PY_ROOT"
  python3 -m venv "$PY_ROOT"
  "$PY_ROOT/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$PY_VERSION"
fi

installed_js=$(cat "$JS_ROOT/.version" 2>/dev/null || true)
if [ -x "$JS_ROOT/node_modules/.bin/componentize-js" ] && [ "$installed_js" = "$JS_VERSION" ]; then
  echo "ComponentizeJS $JS_VERSION is installed: $JS_ROOT/node_modules/.bin/componentize-js"
else
  echo "installing ComponentizeJS $JS_VERSION into $JS_ROOT"
  rm -rf "$JS_ROOT"
  mkdir -p "$JS_ROOT"
  echo '{"name": "turnpike-component-tools", "private": true}' >"$JS_ROOT/package.json"
  npm install --prefix "$JS_ROOT" --save-exact --no-audit --no-fund --loglevel=error \
    "@bytecodealliance/componentize-js@$JS_VERSION"
  echo "$JS_VERSION" >"$JS_ROOT/.version"
fi
