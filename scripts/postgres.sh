#!/usr/bin/env bash
# A throwaway local PostgreSQL server for the store's tests (PostgreSQL 15's binaries are
# installed on these machines; on another, `apt-get install postgresql` provides them).
#
#   scripts/postgres.sh start DIR   # initdb in DIR, start on a free loopback port, print its URL
#                                   # (started again in the same DIR: the same port and URL)
#   scripts/postgres.sh start DIR ADDRESS CIDR
#                                   # listen on ADDRESS, port 5432, instead, and trust
#                                   # connections from CIDR too (scripts/netns-cluster.sh's
#                                   # store host, whose address exists only in its namespace)
#   scripts/postgres.sh stop DIR    # stop it (DIR may then be deleted)
#
# The server trusts local connections, listens on 127.0.0.1 only (or ADDRESS) and keeps
# everything in DIR.
# PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
set -euo pipefail

command=${1:-}
dir=${2:-}
address=${3:-127.0.0.1}
allow=${4:-}
if [[ -z "$command" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

bin=""
for candidate in /usr/lib/postgresql/*/bin; do
  [[ -x "$candidate/pg_ctl" ]] && bin=$candidate
done
if [[ -z "$bin" ]]; then
  if command -v pg_ctl >/dev/null; then
    bin=$(dirname "$(command -v pg_ctl)")
  else
    echo "error: PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 1
  fi
fi

as_owner() {
  if [[ $(id -u) == 0 ]]; then
    su postgres -s /bin/bash -c "$(printf '%q ' "$@")"
  else
    "$@"
  fi
}

case "$command" in
  start)
    mkdir -p "$dir"
    [[ $(id -u) == 0 ]] && chown postgres "$dir"
    data="$dir/data"
    if [[ ! -d "$data" ]]; then
      as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    if [[ -n "$allow" ]] && ! grep -q "^host all all $allow trust" "$data/pg_hba.conf"; then
      echo "host all all $allow trust" >>"$data/pg_hba.conf"
    fi
    if [[ -f "$dir/port" ]]; then
      port=$(cat "$dir/port")
    elif [[ "$address" != 127.0.0.1 ]]; then
      port=5432
      echo "$port" >"$dir/port"
    else
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      echo "$port" >"$dir/port"
    fi
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=$address -p $port -k $dir -c fsync=off" start >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgres://postgres@$address:$port/postgres"
    ;;
  stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
