#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster on loopback for the test suite.
#   tests/peers/postgres.sh start DIR PORT   -> prints DATABASE_URL=... and PG_PID=...
#   tests/peers/postgres.sh stop DIR         -> stops exactly that cluster, by its PID
# Needs Debian's postgresql server binaries (/usr/lib/postgresql/*/bin). initdb refuses root,
# so as root the cluster runs as the 'postgres' OS user.
set -euo pipefail
action=${1:?start|stop}; dir=${2:?directory}; port=${3:-55432}
pgbin=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$pgbin/initdb" ] || { echo "no PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 2; }
run=(); if [ "$(id -u)" = 0 ]; then run=(runuser -u postgres --); fi

case "$action" in
start)
  mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${run[@]}" "$pgbin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
      --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
  fi
  "${run[@]}" mkdir -p "$dir/run"
  # fsync off: a throwaway test cluster; durability is the application's logic, not the disk's.
  # autovacuum_naptime=1: each test's database is new, and a table without statistics gets
  # sequential-scan plans; a backend keeps them until autovacuum first analyses the table (every
  # minute by default). The foreign-key checks of the simulated day then cost 81 us instead of 4 us,
  # depending on when autovacuum happened to look: its time varied by ~8 s with the same code. A
  # production database has its statistics; so do the test databases, within a second.
  "${run[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir/run -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c autovacuum_naptime=1" \
    start >/dev/null
  "${run[@]}" "$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt \
    -c "SELECT 1 FROM pg_database WHERE datname='paidan_test'" | grep -q 1 || \
    "${run[@]}" "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U postgres paidan_test
  echo "PG_PID=$(head -1 "$dir/data/postmaster.pid")"
  echo "DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:$port/paidan_test"
  ;;
stop)
  [ -f "$dir/data/postmaster.pid" ] || exit 0
  kill -INT "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null || true
  for _ in $(seq 50); do [ -f "$dir/data/postmaster.pid" ] || break; sleep 0.2; done
  ;;
*) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
