#!/usr/bin/env bash
# Print a PostgreSQL URL the tests can use, starting one if none is reachable:
#   1. $CARELOOP_TEST_PG_URL if set;
#   2. the local server on 127.0.0.1:5432 (trust auth, database "test");
#   3. otherwise a throwaway cluster (initdb + pg_ctl) under .pg-test/ on port 55432,
#      installing Debian's postgresql package first if no server binaries exist.
set -euo pipefail
cd "$(dirname "$0")/.."

can_connect() {
  python3 - "$1" <<'PY' >/dev/null 2>&1
import sys, psycopg
url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://")
psycopg.connect(url, connect_timeout=3).close()
PY
}

if [[ -n "${CARELOOP_TEST_PG_URL:-}" ]]; then
  echo "$CARELOOP_TEST_PG_URL"; exit 0
fi
default_url="postgresql+psycopg://postgres@127.0.0.1:5432/test"
if can_connect "$default_url"; then
  echo "$default_url"; exit 0
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "$bindir" ]]; then
  echo "no PostgreSQL found; installing Debian's postgresql" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
data="$PWD/.pg-test/data"
port=55432
url="postgresql+psycopg://postgres@127.0.0.1:${port}/test"
run_as_pg() {
  # initdb refuses to run as root.
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [[ ! -f "$data/PG_VERSION" ]]; then
  mkdir -p "$data"
  [[ $(id -u) -eq 0 ]] && chown -R postgres "$PWD/.pg-test"
  run_as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust >&2
fi
if ! can_connect "postgresql://postgres@127.0.0.1:${port}/postgres"; then
  run_as_pg "$bindir/pg_ctl" -D "$data" -o "-p ${port} -k /tmp -c listen_addresses=127.0.0.1" \
    -l "$PWD/.pg-test/log" -w start >&2
fi
psql_cmd=("$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc)
if [[ "$("${psql_cmd[@]}" "SELECT 1 FROM pg_database WHERE datname='test'")" != "1" ]]; then
  "${psql_cmd[@]}" "CREATE DATABASE test" >&2
fi
echo "$url"
