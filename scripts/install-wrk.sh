#!/usr/bin/env bash
# Installs `wrk`, the HTTP load generator of the control-plane benchmarks' whole-path figure
# (`cargo bench -p turnpike-cluster --bench scale`), from Debian's packages (seconds).
# Idempotent: does nothing when wrk is already there.
set -euo pipefail
if command -v wrk >/dev/null; then
  echo "wrk is installed: $(command -v wrk)"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  apt-get install -y wrk
else
  sudo apt-get install -y wrk
fi
echo "installed: $(command -v wrk)"
