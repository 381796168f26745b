#!/usr/bin/env bash
# Chaos under load across hosts: a cluster of network namespaces (scripts/netns-cluster.sh:
# PostgreSQL, 2 gateways, 2 shards, 3 workers, mutual TLS) under a mixed-class load through
# both gateways meets one fault at a time - SIGKILL a worker, a shard, a gateway; a worker cut
# off for 5 s; PostgreSQL stopped for 10 s; a worker restarted on another port - and each is
# checked: every request answered within its deadline, the ledger holding every invocation
# that ran and none twice, every process's RSS within its bound, normal service again within
# 5 s of the repair. The checks and bounds are in crates/turnpike/tests/chaos.rs.
#
#   scripts/chaos.sh                       # every fault, 60 s of load each (about 8 minutes)
#   scripts/chaos.sh --short               # CI's version (part of the test suite): the fault
#                                          # 3 s in, the load ending 8 s after the repair
#   scripts/chaos.sh --seconds N           # N s of load a fault, the fault at N/3
#   scripts/chaos.sh --faults "kill worker,stop store"   # some of them
#
# Prints a table (fault, requests, answered, results, errors by kind, lost, billed twice,
# recovery time, peak RSS by role) and ends with `N passed, N failed`; exits non-zero if any
# failed. Needs root (network namespaces); the whole log is in target/chaos.log.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

seconds=60
faults=
while (($#)); do
  case $1 in
    --short) seconds= ;;
    --seconds) seconds=${2:?--seconds needs a number}; shift ;;
    --faults) faults=${2:?--faults needs a comma list}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) == 0 ]] || { echo "chaos.sh: needs root, for network namespaces" >&2; exit 1; }

[[ -f examples/functions/dist/spin.wasm ]] ||
  bash scripts/build-examples.sh
export TURNPIKE_REQUIRE_NETNS=1
if [[ -n $seconds ]]; then export TURNPIKE_CHAOS_SECONDS=$seconds; else unset TURNPIKE_CHAOS_SECONDS; fi
if [[ -n $faults ]]; then export TURNPIKE_CHAOS_FAULTS=$faults; else unset TURNPIKE_CHAOS_FAULTS; fi
mkdir -p target
log=target/chaos.log
status=0
cargo test --release -p turnpike --test chaos -- --nocapture >"$log" 2>&1 || status=$?
if ! grep -q '^fault ' "$log"; then
  tail -n 40 "$log" >&2
  echo "chaos.sh: the run ended before its table (status $status; log: $log)" >&2
  exit 1
fi
sed -n '/^fault /,/ passed, [0-9]* failed$/p' "$log"
exit "$status"
