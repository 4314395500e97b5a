#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server for the tests of shared Optuna studies.
#
#   .ci/postgres.sh COMMAND [ARGS...]   start it, run COMMAND with SCA2LSTM_TEST_POSTGRES_URL set,
#                                       stop it and delete its files (exit code: COMMAND's)
#   source .ci/postgres.sh              start it and export the URL in this shell; it stops when
#                                       the shell exits (what .ci/run does)
#
# The cluster lives in a new temporary folder, listens on 127.0.0.1 and a free port only, and
# trusts local connections (no password). PostgreSQL refuses to run as root, so under root the
# server runs as the `postgres` system user. PG_BIN names the binaries' folder (default: Debian's
# /usr/lib/postgresql/15/bin); missing, and run as root, the script installs postgresql-15.

_pg_main() {
  local bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
  if [ ! -x "$bin/initdb" ]; then
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
      bin="$(dirname "$(command -v initdb)")"
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
    else
      echo "postgres.sh: PostgreSQL 15 is not installed (apt-get install postgresql-15)" >&2
      return 1
    fi
  fi
  local as=()
  if [ "$(id -u)" = 0 ]; then
    as=(runuser -u postgres --)
  fi
  _PG_DIR="$(mktemp -d /tmp/sca2lstm-pg.XXXXXX)"
  [ "$(id -u)" = 0 ] && chown postgres: "$_PG_DIR"
  local port
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  _PG_CTL=("${as[@]}" "$bin/pg_ctl" -D "$_PG_DIR/data")
  "${as[@]}" "$bin/initdb" -D "$_PG_DIR/data" -U postgres -A trust --no-sync >"$_PG_DIR/initdb.log" ||
    { cat "$_PG_DIR/initdb.log" >&2; return 1; }
  "${_PG_CTL[@]}" -w -l "$_PG_DIR/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $_PG_DIR -c fsync=off" start >/dev/null ||
    { cat "$_PG_DIR/server.log" >&2; return 1; }
  "${as[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres optuna_test
  export SCA2LSTM_TEST_POSTGRES_URL="postgresql+psycopg2://postgres@127.0.0.1:$port/optuna_test"
  echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at $SCA2LSTM_TEST_POSTGRES_URL" >&2
}

_pg_stop() {
  if [ -n "${_PG_DIR:-}" ] && [ -d "$_PG_DIR" ]; then
    "${_PG_CTL[@]}" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$_PG_DIR"
  fi
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # Sourced: leave the server running for this shell.
  _pg_main || return 1
  trap _pg_stop EXIT
else
  set -euo pipefail
  if [ "$#" = 0 ]; then
    echo "usage: .ci/postgres.sh COMMAND [ARGS...]  (or: source .ci/postgres.sh)" >&2
    exit 2
  fi
  trap _pg_stop EXIT
  _pg_main
  "$@"
fi
