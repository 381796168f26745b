#!/usr/bin/env bash
# Installs Chromium from Debian's packages, for the dashboard's browser test
# (crates/turnpike/tests/dashboard.rs drives it headless over the DevTools protocol).
# Idempotent: does nothing when it is already there. Prints the browser's path.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null; then
    command -v "$name"
    exit 0
  fi
done
if [ "$(id -u)" -eq 0 ]; then
  apt-get install -y chromium >&2 || { apt-get update >&2 && apt-get install -y chromium >&2; }
else
  sudo apt-get install -y chromium >&2 || { sudo apt-get update >&2 && sudo apt-get install -y chromium >&2; }
fi
command -v chromium
