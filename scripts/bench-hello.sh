#!/usr/bin/env bash
# Hello throughput of whole processes, measured with wrk against a baseline in the same run.
#
#   bash scripts/bench-hello.sh                 # every setup below, 3 alternating rounds
#   SETUPS="wasmtime up roles-tls" ROUNDS=5 DURATION=10 CONNECTIONS=1 bash scripts/bench-hello.sh
#   BEFORE=/path/to/older/turnpike bash scripts/bench-hello.sh   # adds `up-before`: an A/B of builds
#   FUNCTION=examples/functions-python/dist/hello.wasm bash scripts/bench-hello.sh
#                                               # another component (any wasi:http handler)
#
# Setups (each serving $FUNCTION, by default examples/functions/dist/hello.wasm, on loopback;
# `turnpike up` serves it as the only function of an app `bench`, deployed with the admin key
# it prints, at the top class, requested with `Host: bench.localhost`):
#   wasmtime        `wasmtime serve -Scli` (scripts/install-wasmtime.sh; skipped if absent)
#   up              `turnpike up` (roles in one process)
#   up-before       `turnpike up` of the binary in $BEFORE
#   up-rpc          `turnpike up --loopback-rpc` (roles over loopback gRPC, mutual TLS)
#   up-rpc-plain    the same with --insecure-internal
#   roles-tls       shard, gateway and worker as separate processes, mutual TLS; the gateway and
#                   the shard with `--threads 1` (three roles and wrk share 2 cores; THREADS=""
#                   for each role's default)
#   roles-plain     the same with --insecure-internal
#
# Each round runs every setup once, in order (A B C A B C ...): a 2 s warm-up, then
# `wrk -t1 -cCONNECTIONS -dDURATION --latency`. Printed per run: req/s, p50, p99 and, for
# separate processes, each role's CPU per request (utime+stime from /proc over the run).
# At the end, per setup: the median req/s and its ratio to the first setup's median.
# Servers use loopback ports only and are stopped when each run ends.
set -euo pipefail
cd "$(dirname "$0")/.."

TURNPIKE=${TURNPIKE:-target/release/turnpike}
WASMTIME=${WASMTIME:-.tools/wasmtime/bin/wasmtime}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS-1}
FUNCTIONS=examples/functions/dist
FUNCTION=${FUNCTION:-$FUNCTIONS/hello.wasm}
FUNCTION=$(realpath "$FUNCTION")
DEFAULT_SETUPS="wasmtime up up-rpc up-rpc-plain roles-tls roles-plain"
[ -n "${BEFORE:-}" ] && DEFAULT_SETUPS="wasmtime up up-before up-rpc up-rpc-plain roles-tls roles-plain"
SETUPS=${SETUPS:-$DEFAULT_SETUPS}

command -v wrk >/dev/null || bash scripts/install-wrk.sh
[ -x "$TURNPIKE" ] || cargo build --release -p turnpike --bin turnpike
[ -f "$FUNCTION" ] || bash scripts/build-examples.sh
[ -f "$FUNCTION" ] || { echo "no component at $FUNCTION" >&2; exit 2; }

WORK=$(mktemp -d /tmp/turnpike-bench-hello.XXXXXX)
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

# A free loopback port (bound and released by python; the race is harmless here).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits for `URL` to answer 200 (with `Host: HOST` if given), at most 30 s.
wait_ok() {
  local host=()
  [ -n "${2:-}" ] && host=(-H "Host: $2")
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "${host[@]}" "$1" || true)" = 200 ] && return 0
    sleep 0.1
  done
  echo "no 200 from $1 in 30 s" >&2
  return 1
}

# Starts a process in the background, its output in $WORK/NAME.log; sets LAST_PID.
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# The address after PREFIX on the first line of LOG that has it, waiting up to 30 s.
address_in() {
  for _ in $(seq 300); do
    local line
    line=$(grep -m1 "$2" "$1" 2>/dev/null || true)
    [ -n "$line" ] && { echo "${line#*$2}" | awk '{print $1}'; return 0; }
    sleep 0.1
  done
  echo "no '$2' in $1" >&2; cat "$1" >&2
  return 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

hash_of() { sha256sum "$1" | awk '{print $1}'; }

# Deploys $FUNCTION as app `bench` on the `turnpike up` whose output is LOG, at GATEWAY.
deploy_bench() {
  local key
  key=$(address_in "$1" "admin key: ")
  mkdir -p "$WORK/bench-app"
  cat >"$WORK/bench-app/turnpike.toml" <<TOML
app = "bench"
[functions]
f = "$FUNCTION"
[[routes]]
path = "/"
function = "f"
class = "critical"
TOML
  TURNPIKE_GATEWAY="$2" TURNPIKE_KEY="$key" "$TURNPIKE" deploy --manifest "$WORK/bench-app/turnpike.toml" >/dev/null
}

# Starts SETUP; sets URL, HOST (the Host header to send) and ROLES ("name:pid ..." of
# processes whose CPU is reported).
start_setup() {
  local setup=$1 port
  port=$(free_port)
  ROLES=""
  HOST="127.0.0.1:$port"
  case $setup in
    wasmtime)
      start wasmtime "$WASMTIME" serve -Scli --addr "127.0.0.1:$port" "$FUNCTION"
      URL="http://127.0.0.1:$port/" ;;
    up | up-rpc | up-rpc-plain | up-before)
      local bin=$TURNPIKE extra=()
      [ "$setup" = up-before ] && bin=$BEFORE
      [ "$setup" = up-rpc ] && extra=(--loopback-rpc)
      [ "$setup" = up-rpc-plain ] && extra=(--loopback-rpc --insecure-internal)
      rm -rf "$WORK/up-$setup"
      start up "$bin" up --listen "127.0.0.1:$port" --data-dir "$WORK/up-$setup" "${extra[@]}"
      wait_ok "http://127.0.0.1:$port/v1/classes"
      deploy_bench "$WORK/up.log" "http://127.0.0.1:$port"
      HOST="bench.localhost:$port"
      URL="http://127.0.0.1:$port/" ;;
    roles-tls | roles-plain)
      local internal=(--insecure-internal)
      if [ "$setup" = roles-tls ]; then
        if [ ! -f "$WORK/tls/ca.pem" ]; then
          "$TURNPIKE" certs init --dir "$WORK/tls" >/dev/null
          for r in gateway shard worker; do "$TURNPIKE" certs issue --role $r $r --dir "$WORK/tls" >/dev/null; done
        fi
        internal=(--tls-dir "$WORK/tls")
      fi
      local threads=()
      [ -n "$THREADS" ] && threads=(--threads "$THREADS")
      start shard "$TURNPIKE" shard "${internal[@]}" "${threads[@]}"
      local shard_pid=$LAST_PID shard
      shard=$(address_in "$WORK/shard.log" "shard listening on ")
      start gateway "$TURNPIKE" gateway "${internal[@]}" "${threads[@]}" --listen "127.0.0.1:$port" --data-dir "$WORK/gw-$setup" \
        --shard "$shard" --route "/hello=$(hash_of "$FUNCTION")@critical"
      local gateway_pid=$LAST_PID
      start worker "$TURNPIKE" worker "${internal[@]}" --cores 2 --data-dir "$WORK/wk-$setup" \
        --shard "$shard" --load "$FUNCTION"
      ROLES="gateway:$gateway_pid shard:$shard_pid worker:$LAST_PID"
      URL="http://127.0.0.1:$port/hello" ;;
    *) echo "unknown setup $setup" >&2; exit 2 ;;
  esac
  wait_ok "$URL" "$HOST"
}

RESULTS=$WORK/results
: >"$RESULTS"
TICK_US=$((1000000 / $(getconf CLK_TCK)))
echo "$(basename "$FUNCTION"), wrk -t1 -c$CONNECTIONS -d${DURATION}s, $ROUNDS rounds; setups: $SETUPS"
for round in $(seq "$ROUNDS"); do
  for setup in $SETUPS; do
    if [ "$setup" = wasmtime ] && [ ! -x "$WASMTIME" ]; then
      [ "$round" = 1 ] && echo "wasmtime: no binary at $WASMTIME (scripts/install-wasmtime.sh); skipped"
      continue
    fi
    start_setup "$setup"
    wrk -t1 -c"$CONNECTIONS" -d2s -H "Host: $HOST" "$URL" >/dev/null
    declare -A before=()
    for role in $ROLES; do before[${role%%:*}]=$(cpu_ticks "${role#*:}"); done
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Host: $HOST" "$URL")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/' | tr '\n' ' ')
    cpu=""
    for role in $ROLES; do
      name=${role%%:*}
      ticks=$(( $(cpu_ticks "${role#*:}") - before[$name] ))
      cpu+=" $name $(( ticks * TICK_US / (requests > 0 ? requests : 1) )) us/req"
    done
    unset before
    stop_all
    printf 'round %s %-13s %9s req/s  p50 %8s  p99 %8s%s %s\n' "$round" "$setup" "$rate" "$p50" "$p99" "${cpu:+  cpu:$cpu}" "$errors"
    echo "$setup $rate" >>"$RESULTS"
  done
done

echo "medians (ratio to the first setup's median):"
python3 - "$RESULTS" "$SETUPS" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
order = [s for s in sys.argv[2].split() if any(r[0] == s for r in rows)]
med = {s: statistics.median(float(r[1]) for r in rows if r[0] == s) for s in order}
base = order[0]
for s in order:
    runs = sorted(float(r[1]) for r in rows if r[0] == s)
    print(f"  {s:<13} {med[s]:>9.0f} req/s  (runs {runs[0]:.0f}-{runs[-1]:.0f})  {med[s] / med[base]:.2f}x {base}")
EOF
