#!/usr/bin/env bash
# Fuzzing, longer than CI runs it. Each target is a proptest-driven fuzz test that CI runs
# with a few hundred to a few thousand cases (`TURNPIKE_FUZZ_CASES` unset); this runs them
# with many more and prints how long each took:
#
#   wire decoding     crates/wire/tests/fuzz_decode.rs     every RPC message from random and
#                                                          changed bytes, then converted
#   manifest          crates/turnpike/src/manifest.rs      random text and changed manifests
#   gateway requests  crates/turnpike/tests/fuzz.rs        random requests and bytes at
#                                                          `turnpike up`'s gateway over TCP
#   link frames       crates/cluster/tests/cluster/fuzz.rs random frame sequences on a
#                                                          worker's Run stream
#   policy core       crates/policy/tests/properties.rs    random operation sequences on
#                                                          machines, queues, shards, idle lists
#
#   scripts/fuzz.sh                 # 20,000 cases a target (link frames: 2,000; ~15 minutes)
#   scripts/fuzz.sh --cases N       # N a target (link frames: N/10)
#   scripts/fuzz.sh --only NAME     # one target: wire, manifest, gateway, link or policy
#
# A failure prints its input, shrunk; each input found becomes a regression test next to
# its target (see docs/failures.md, "Fuzzing"). Exits non-zero if any target failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cases=20000
only=
while (($#)); do
  case $1 in
    --cases) cases=${2:?--cases needs a number}; shift ;;
    --only) only=${2:?--only needs a target name}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

[[ -f examples/functions/dist/hello.wasm ]] || bash scripts/build-examples.sh
cargo build --release -p turnpike >/dev/null 2>&1 || { echo "fuzz.sh: cargo build --release -p turnpike failed" >&2; exit 1; }

failed=0
run() {
  local name=$1 n=$2
  shift 2
  [[ -z $only || $only == "$name" ]] || return 0
  local start=$SECONDS status=0
  TURNPIKE_FUZZ_CASES=$n cargo test --release "$@" >"target/fuzz-$name.log" 2>&1 || status=$?
  local took=$((SECONDS - start))
  if ((status == 0)); then
    printf '%-10s %8d cases a test  %5d s  passed\n' "$name" "$n" "$took"
  else
    printf '%-10s %8d cases a test  %5d s  FAILED (target/fuzz-%s.log)\n' "$name" "$n" "$took" "$name"
    grep -E -A20 'minimal failing input|Test failed' "target/fuzz-$name.log" | head -40 || true
    failed=$((failed + 1))
  fi
}

mkdir -p target
run wire "$cases" -p turnpike-wire --test fuzz_decode
run manifest "$cases" -p turnpike --bin turnpike manifest::tests::fuzz
run gateway "$cases" -p turnpike --test fuzz
run link "$((cases / 10))" -p turnpike-cluster --test cluster fuzz::
run policy "$cases" -p turnpike-policy --test properties
echo "$failed failed"
((failed == 0))
