#!/usr/bin/env bash
# A Turnpike cluster of several hosts on this one machine: every host is its own network
# namespace with its own address on a bridge, and the roles run as they would on separate
# machines (deploy/config's files, the internal plane on mutual TLS, one PostgreSQL store).
#
#   scripts/netns-cluster.sh up             # build it, start everything, print the gateways' URLs
#   scripts/netns-cluster.sh urls           # the gateways' URLs, one a line
#   scripts/netns-cluster.sh status         # each host: address, role, running or not
#   scripts/netns-cluster.sh exec HOST CMD  # run CMD on HOST (e.g. `exec client curl URL`)
#   scripts/netns-cluster.sh stop HOST [SIG]  # stop HOST's role (SIGTERM, or e.g. KILL) and wait
#   scripts/netns-cluster.sh start HOST [FLAG...]  # start it again; FLAGs win over its config
#   scripts/netns-cluster.sh cut HOST       # unplug HOST from the bridge: all its packets lost
#   scripts/netns-cluster.sh heal HOST      # plug it back in
#   scripts/netns-cluster.sh down           # stop every process, remove the namespaces and DIR
#
# Hosts (addresses SUBNET.N/24 that exist only inside the namespaces; nothing is added to
# this machine's own network):
#
#   pg .2 (PostgreSQL 15, the store)   gw1 .11, gw2 .12 (gateways, HTTP on :8080)
#   sh1 .21, sh2 .22 (shards, :7000)   w1 .31, w2 .32, w3 .33 (workers, :7100, 1 core each)
#   client .100 (no role: where tests and `exec client ...` send requests from)
#
# Every role also serves /metrics on :9100. Each host's files are in DIR/hosts/HOST: its
# config (DIR/hosts/HOST/etc/ROLE.toml, deploy/config/ROLE.toml with this cluster's
# addresses), its certificate (tls/), its data and its log (log). The gateways share the
# chain key in DIR/hosts/gwN/etc/gateway.env; the admin key the first gateway printed is in
# DIR/admin-key.
#
# Latency between hosts is `tc netem` delay on every host's interface (one way, host to
# host). A kernel built without netem (CONFIG_NET_SCH_NETEM) gets none: `up` says so and goes
# on.
#
# Settings, from the environment:
#   TURNPIKE_NETNS_NAME      namespace prefix (default tpc: namespaces tpc-gw1, ..., tpc-sw)
#   TURNPIKE_NETNS_DIR       state directory (default /tmp/turnpike-netns-NAME)
#   TURNPIKE_NETNS_SUBNET    the first three octets (default 10.213.7)
#   TURNPIKE_NETNS_DELAY_MS  one-way latency between hosts, ms (default 0.2)
#   TURNPIKE_BIN             the turnpike binary (default target/release/turnpike; build it
#                            with `cargo build --release`)
#
# Needs root (namespaces) and iproute2. `up` stops and removes everything it made when it
# fails or is interrupted; `down` does the same for a running cluster.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

name=${TURNPIKE_NETNS_NAME:-tpc}
dir=${TURNPIKE_NETNS_DIR:-/tmp/turnpike-netns-$name}
subnet=${TURNPIKE_NETNS_SUBNET:-10.213.7}
delay_ms=${TURNPIKE_NETNS_DELAY_MS:-0.2}
bin=${TURNPIKE_BIN:-$root/target/release/turnpike}

hosts=(pg gw1 gw2 sh1 sh2 w1 w2 w3 client)
gateways=(gw1 gw2)
shards=(sh1 sh2)
workers=(w1 w2 w3)
gateway_port=8080
shard_port=7000
worker_port=7100
metrics_port=9100
# How long a role may take to print that it listens, and the workers to register.
ready_timeout_s=60

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

die() {
  echo "netns-cluster: $*" >&2
  exit 1
}

address_of() {
  case $1 in
    pg) echo "$subnet.2" ;;
    gw1) echo "$subnet.11" ;;
    gw2) echo "$subnet.12" ;;
    sh1) echo "$subnet.21" ;;
    sh2) echo "$subnet.22" ;;
    w1) echo "$subnet.31" ;;
    w2) echo "$subnet.32" ;;
    w3) echo "$subnet.33" ;;
    client) echo "$subnet.100" ;;
    *) die "no host $1; hosts: ${hosts[*]}" ;;
  esac
}

role_of() {
  case $1 in
    pg) echo postgres ;;
    gw*) echo gateway ;;
    sh*) echo shard ;;
    w*) echo worker ;;
    client) echo client ;;
    *) die "no host $1; hosts: ${hosts[*]}" ;;
  esac
}

ns() { echo "$name-$1"; }
switch_ns=$name-sw
store_url() { echo "postgres://postgres@$(address_of pg):5432/postgres"; }

# A TOML list of HOST:PORT for hosts $2.. at port $1.
toml_list() {
  local port=$1 out="" h
  shift
  for h in "$@"; do out+="${out:+, }\"$(address_of "$h"):$port\""; done
  echo "[$out]"
}

# deploy/config/ROLE.toml with KEY=VALUE pairs replacing its lines `KEY = ...` (as an operator
# edits them), each key required to be there, and the other pairs appended.
render_config() {
  local role=$1 out=$2 pair key value
  shift 2
  cp "$root/deploy/config/$role.toml" "$out"
  for pair in "$@"; do
    key=${pair%%=*}
    value=${pair#*=}
    if grep -q "^$key = " "$out"; then
      local escaped=${value//\\/\\\\}
      escaped=${escaped//|/\\|}
      escaped=${escaped//&/\\&}
      sed -i "s|^$key = .*|$key = $escaped|" "$out"
    else
      echo "$key = $value" >>"$out"
    fi
  done
}

make_network() {
  ip netns add "$switch_ns"
  ip -n "$switch_ns" link set lo up
  ip -n "$switch_ns" link add name br0 type bridge
  ip -n "$switch_ns" link set br0 up
  local host netem=yes
  for host in "${hosts[@]}"; do
    ip netns add "$(ns "$host")"
    ip -n "$(ns "$host")" link set lo up
    ip -n "$switch_ns" link add name "v-$host" type veth peer name eth0 netns "$(ns "$host")"
    ip -n "$switch_ns" link set "v-$host" master br0 up
    ip -n "$(ns "$host")" addr add "$(address_of "$host")/24" dev eth0
    ip -n "$(ns "$host")" link set eth0 up
    if [[ $netem == yes && $delay_ms != 0 ]]; then
      if ! ip netns exec "$(ns "$host")" tc qdisc add dev eth0 root netem delay "${delay_ms}ms" 2>"$dir/netem.err"; then
        echo "netns-cluster: no latency added between hosts: $(cat "$dir/netem.err") (this kernel lacks netem, CONFIG_NET_SCH_NETEM)" >&2
        netem=no
      fi
    fi
  done
  echo "$netem" >"$dir/netem"
}

make_certificates() {
  "$bin" certs init --dir "$dir/ca" >/dev/null
  local host role
  for host in "${gateways[@]}" "${shards[@]}" "${workers[@]}"; do
    role=$(role_of "$host")
    "$bin" certs issue --role "$role" "$host" --dir "$dir/ca" >/dev/null
    mkdir -p "$dir/hosts/$host/tls"
    cp "$dir/ca/ca.pem" "$dir/hosts/$host/tls/ca.pem"
    cp "$dir/ca/$host.pem" "$dir/hosts/$host/tls/$role.pem"
    install -m 0600 "$dir/ca/$host.key" "$dir/hosts/$host/tls/$role.key"
  done
}

write_configs() {
  local host etc i=0 chain_key
  chain_key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  for host in "${shards[@]}"; do
    i=$((i + 1))
    etc=$dir/hosts/$host/etc
    mkdir -p "$etc"
    render_config shard "$etc/shard.toml" "id=$i" "seed=$i" "tls-dir=\"$dir/hosts/$host/tls\""
  done
  for host in "${gateways[@]}"; do
    etc=$dir/hosts/$host/etc
    mkdir -p "$etc" "$dir/hosts/$host/data"
    render_config gateway "$etc/gateway.toml" \
      "shard=$(toml_list $shard_port "${shards[@]}")" \
      "store=\"$(store_url)\"" \
      "data-dir=\"$dir/hosts/$host/data\"" \
      "tls-dir=\"$dir/hosts/$host/tls\""
    echo "TURNPIKE_CHAIN_TOKEN=$chain_key" >"$etc/gateway.env"
    chmod 0600 "$etc/gateway.env"
  done
  i=0
  for host in "${workers[@]}"; do
    # Guests' calls go to the gateways in turn.
    local gateway=${gateways[$((i % ${#gateways[@]}))]}
    i=$((i + 1))
    etc=$dir/hosts/$host/etc
    mkdir -p "$etc" "$dir/hosts/$host/data"
    render_config worker "$etc/worker.toml" \
      "shard=$(toml_list $shard_port "${shards[@]}")" \
      "store=\"$(store_url)\"" \
      "gateway=\"$(address_of "$gateway"):$gateway_port\"" \
      "data-dir=\"$dir/hosts/$host/data\"" \
      "tls-dir=\"$dir/hosts/$host/tls\""
  done
}

pid_alive() {
  local file=$dir/hosts/$1/pid
  [[ -f $file ]] && kill -0 "$(cat "$file")" 2>/dev/null
}

start_postgres() {
  mkdir -p "$dir/hosts/pg"
  ip netns exec "$(ns pg)" "$root/scripts/postgres.sh" start "$dir/hosts/pg/postgres" \
    "$(address_of pg)" "$subnet.0/24" >/dev/null
}

stop_postgres() {
  local mode=${1:-fast}
  [[ -d $dir/hosts/pg/postgres/data ]] || return 0
  local bin_dir
  for bin_dir in /usr/lib/postgresql/*/bin; do :; done
  su postgres -s /bin/bash -c "$(printf '%q ' "$bin_dir/pg_ctl" -D "$dir/hosts/pg/postgres/data" -m "$mode" -w stop)" \
    >/dev/null 2>&1 || true
}

# Starts HOST's role with its config and FLAGs; waits until it prints that it listens.
start_role() {
  local host=$1
  shift
  local role
  role=$(role_of "$host")
  case $role in
    postgres)
      start_postgres
      return
      ;;
    client) die "the client host runs no role" ;;
  esac
  pid_alive "$host" && die "$host already runs its $role (pid $(cat "$dir/hosts/$host/pid"))"
  local log=$dir/hosts/$host/log
  touch "$log"
  local before
  before=$(grep -c "^$role listening on" "$log" || true)
  local env=(RUST_LOG="${RUST_LOG:-info}")
  if [[ $role == gateway ]]; then
    env+=("$(cat "$dir/hosts/$host/etc/gateway.env")")
  fi
  ip netns exec "$(ns "$host")" env "${env[@]}" \
    "$bin" "$role" --config "$dir/hosts/$host/etc/$role.toml" "$@" \
    >>"$log" 2>&1 </dev/null &
  echo $! >"$dir/hosts/$host/pid"
  local waited=0
  while (($(grep -c "^$role listening on" "$log" || true) <= before)); do
    if ! pid_alive "$host"; then
      tail -n 20 "$log" >&2
      die "$host's $role exited at start (its log: $log)"
    fi
    ((waited++ < ready_timeout_s * 10)) || die "$host's $role did not start in ${ready_timeout_s}s (its log: $log)"
    sleep 0.1
  done
  if [[ $host == "${gateways[0]}" ]]; then
    local key
    key=$(sed -n 's/^ *admin key: \(tp_[A-Za-z0-9_]*\).*/\1/p' "$log" | tail -n 1)
    [[ -n $key ]] && echo "$key" >"$dir/admin-key"
  fi
  return 0
}

# Stops HOST's role with SIG (TERM by default) and waits for it to exit.
stop_role() {
  local host=$1 signal=${2:-TERM}
  if [[ $(role_of "$host") == postgres ]]; then
    if [[ $signal == KILL ]]; then stop_postgres immediate; else stop_postgres fast; fi
    return
  fi
  pid_alive "$host" || return 0
  local pid waited=0
  pid=$(cat "$dir/hosts/$host/pid")
  kill "-$signal" "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited++ == 100)); then
      echo "netns-cluster: $host did not stop in 10 s after SIG$signal; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
  rm -f "$dir/hosts/$host/pid"
}

# The value of metric NAME on HOST's /metrics, fetched from the client host, as awk prints
# the number (OpenMetrics writes gauges as `3.0`: this prints `3`).
metric() {
  ip netns exec "$(ns client)" curl -sf --max-time 2 \
    "http://$(address_of "$1"):$metrics_port/metrics" 2>/dev/null |
    awk -v name="$2" '$1 == name { print $2 + 0; found = 1 } END { if (!found) print 0 }'
}

wait_for_workers() {
  local host waited=0
  for host in "${shards[@]}"; do
    while [[ $(metric "$host" turnpike_shard_workers_live) != "${#workers[@]}" ]]; do
      ((waited++ < ready_timeout_s * 10)) ||
        die "$host has $(metric "$host" turnpike_shard_workers_live) of ${#workers[@]} workers after ${ready_timeout_s}s"
      sleep 0.1
    done
  done
}

urls() {
  local host
  for host in "${gateways[@]}"; do echo "http://$(address_of "$host"):$gateway_port"; done
}

# The processes in this cluster's namespaces, but this script and its caller (which may run
# on the client host: a test, or a shell from `exec client bash`).
namespace_pids() {
  local host
  for host in "${hosts[@]}"; do
    ip netns pids "$(ns "$host")" 2>/dev/null || true
  done | grep -vx -e "$$" -e "$PPID" || true
}

down() {
  local host
  for host in "${gateways[@]}" "${workers[@]}" "${shards[@]}"; do
    [[ -d $dir/hosts/$host ]] && stop_role "$host" TERM
  done
  stop_postgres fast
  # Whatever still runs in the namespaces (a cluster whose state directory is gone, a
  # process started by hand with `exec`): TERM, then KILL.
  local pids signal waited
  for signal in TERM KILL; do
    pids=$(namespace_pids)
    [[ -z $pids ]] && break
    # shellcheck disable=SC2086
    kill "-$signal" $pids 2>/dev/null || true
    waited=0
    while [[ -n $(namespace_pids) ]] && ((waited++ < 50)); do sleep 0.1; done
  done
  for host in "${hosts[@]}"; do
    ip netns del "$(ns "$host")" 2>/dev/null || true
  done
  ip netns del "$switch_ns" 2>/dev/null || true
  rm -rf "$dir"
}

up() {
  [[ $(id -u) == 0 ]] || die "needs root, for network namespaces"
  command -v ip >/dev/null || die "needs iproute2 (apt-get install iproute2)"
  [[ -x $bin ]] || die "no turnpike binary at $bin: build it with \`cargo build --release\` (or set TURNPIKE_BIN)"
  if [[ -e $dir ]] || ip netns list | grep -q "^$switch_ns\b"; then
    die "a cluster named $name is up (state in $dir): \`$0 down\` first"
  fi
  mkdir -p "$dir"
  # Whatever ends the script before the cluster is up (a failed command under `set -e`, a
  # `die`, Ctrl-C) takes down what was made.
  cluster_made=no
  trap 'status=$?; if [[ $cluster_made != yes ]]; then echo "netns-cluster: taking down what was made" >&2; down; fi; exit $status' EXIT
  trap 'exit 130' INT TERM
  make_network
  make_certificates
  write_configs
  start_postgres
  local host
  for host in "${shards[@]}" "${gateways[@]}" "${workers[@]}"; do start_role "$host"; done
  wait_for_workers
  cluster_made=yes
  trap - INT TERM
  echo "cluster $name is up: ${#gateways[@]} gateways, ${#shards[@]} shards, ${#workers[@]} workers, store $(store_url)"
  echo "latency between hosts: $([[ $(cat "$dir/netem") == yes ]] && echo "${delay_ms} ms" || echo "none (no netem)")"
  echo "admin key: $(cat "$dir/admin-key" 2>/dev/null || echo '(the store had one already)')"
  echo "send requests from the client host: $0 exec client curl URL/hello"
  urls
}

status() {
  [[ -d $dir ]] || die "no cluster named $name is up"
  local host role state
  for host in "${hosts[@]}"; do
    role=$(role_of "$host")
    case $role in
      client) state=- ;;
      postgres) state=$(ip netns exec "$(ns pg)" bash -c "exec 3<>/dev/tcp/$(address_of pg)/5432" 2>/dev/null && echo running || echo stopped) ;;
      *) state=$(pid_alive "$host" && echo "running (pid $(cat "$dir/hosts/$host/pid"))" || echo stopped) ;;
    esac
    printf '%-7s %-15s %-9s %s\n' "$host" "$(address_of "$host")" "$role" "$state"
  done
}

command=${1:-}
[[ -n $command ]] || usage
shift
case $command in
  up) up ;;
  down) down ;;
  urls) urls ;;
  status) status ;;
  exec)
    (($# >= 2)) || usage
    host=$1
    shift
    address_of "$host" >/dev/null
    exec ip netns exec "$(ns "$host")" "$@"
    ;;
  stop)
    (($# >= 1)) || usage
    stop_role "$1" "${2:-TERM}"
    ;;
  start)
    (($# >= 1)) || usage
    host=$1
    shift
    start_role "$host" "$@"
    ;;
  cut) ip -n "$switch_ns" link set "v-$1" down ;;
  heal) ip -n "$switch_ns" link set "v-$1" up ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
