#!/usr/bin/env bash
# A PostgreSQL cluster of our own for the Prefect server: install | start | stop | status | url | psql | backup.
# Debian's postgresql binaries, our own data folder under MRIFOUNDRY_HOME, 127.0.0.1 only, our own
# port, a database and role "prefect" with a generated password (0600 file); started with setsid,
# stopped by PID; health = pg_isready. Never the Debian service (its "main" cluster on 5432 is left alone).
#
#   MRIFOUNDRY_PG_HOME   state folder (data/, run/, log, PID, password)  default $MRIFOUNDRY_HOME/postgres
#   MRIFOUNDRY_PG_PORT   TCP port on 127.0.0.1 (or 1st argument of start) default 4290
#   MRIFOUNDRY_PG_OSUSER OS user the server runs as when started by root  default postgres
#   MRIFOUNDRY_PG_BIN    folder of initdb/postgres/pg_ctl                 default newest /usr/lib/postgresql/*/bin
#
# postgres refuses to run as root: started by root, the cluster (data/ and run/) belongs to
# MRIFOUNDRY_PG_OSUSER (Debian's "postgres", created by the package) and every server-side
# program runs as that user (setpriv: no extra process, so the PID we record is the postmaster's);
# started by anyone else, it runs as that user. The password file, log and PID file stay the caller's.
set -euo pipefail
export PATH="${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}:/usr/sbin:/sbin"
here="$(cd "$(dirname "$0")" && pwd)"
: "${MRIFOUNDRY_REPO:=$(cd "$here/.." && pwd)}"
: "${MRIFOUNDRY_HOME:=$MRIFOUNDRY_REPO/var}"
: "${MRIFOUNDRY_PG_HOME:=$MRIFOUNDRY_HOME/postgres}"
PGH="$MRIFOUNDRY_PG_HOME"
DATA="$PGH/data"
SOCK="$PGH/run"
PIDF="$PGH/postgres.pid"
LOG="$PGH/postgres.log"
PWF="$PGH/prefect.password"
DB=prefect
ROLE=prefect
if [ "$(id -u)" = 0 ]; then OSUSER="${MRIFOUNDRY_PG_OSUSER:-postgres}"; else OSUSER="$(id -un)"; fi

pgbin() {
  if [ -n "${MRIFOUNDRY_PG_BIN:-}" ]; then echo "$MRIFOUNDRY_PG_BIN"; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}
have_pg() { local b; b="$(pgbin)"; [ -n "$b" ] && [ -x "$b/postgres" ] && [ -x "$b/initdb" ] && command -v psql >/dev/null 2>&1; }

install() {
  if have_pg; then echo "postgresql present: $(pgbin)"; return 0; fi
  if [ "$(id -u)" != 0 ]; then
    echo "postgresql missing; as root: apt-get install -y postgresql (or set MRIFOUNDRY_PG_BIN)"; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends postgresql)
  # the package may create and start Debian's own "main" cluster (port 5432) where services may start;
  # it is not ours and is left alone
  "${apt[@]}" || { apt-get -o DPkg::Lock::Timeout=600 update && "${apt[@]}"; }
  have_pg || { echo "postgresql not installed"; exit 1; }
}

port() { cat "$PGH/port" 2>/dev/null || echo "${MRIFOUNDRY_PG_PORT:-4290}"; }
healthy() { "$(pgbin)/pg_isready" -q -h 127.0.0.1 -p "$(port)" -d "$DB" -U "$ROLE" -t 2 >/dev/null 2>&1; }
running() { [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; }

# as_pg CMD…: run CMD as the cluster's OS user, from a folder it can enter
as_pg() {
  if [ "$(id -u)" = 0 ] && [ "$OSUSER" != root ]; then
    (cd "$PGH" && setpriv --reuid="$OSUSER" --regid="$(id -g "$OSUSER")" --init-groups -- "$@")
  else
    (cd "$PGH" && "$@")
  fi
}

# superuser SQL over our own Unix socket (peer authentication: the OS user is the superuser)
su_psql() { PGOPTIONS='-c client_min_messages=warning' as_pg "$(pgbin)/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$(port)" -U "$OSUSER" "$@"; }

init() {
  [ -f "$DATA/PG_VERSION" ] && return 0
  if [ "$(id -u)" = 0 ] && ! id -u "$OSUSER" >/dev/null 2>&1; then
    echo "OS user $OSUSER missing (it comes with Debian's postgresql-common); set MRIFOUNDRY_PG_OSUSER"; exit 1
  fi
  mkdir -p "$PGH" "$DATA" "$SOCK"
  chmod 755 "$PGH"
  chmod 700 "$DATA"
  if [ "$(id -u)" = 0 ]; then chown "$OSUSER:" "$DATA" "$SOCK"; fi
  if ! as_pg test -w "$DATA"; then
    echo "user $OSUSER cannot reach $DATA (a parent folder is not searchable by others): chmod o+x the parents or set MRIFOUNDRY_PG_HOME"
    exit 1
  fi
  # a socket path longer than ~107 bytes cannot be bound
  if [ "${#SOCK}" -gt 90 ]; then echo "state folder path too long for a Unix socket ($SOCK): set a shorter MRIFOUNDRY_PG_HOME"; exit 1; fi
  echo "initdb $DATA (owner $OSUSER)"
  as_pg "$(pgbin)/initdb" -D "$DATA" -U "$OSUSER" -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >>"$LOG" 2>&1 || { tail -20 "$LOG"; exit 1; }
  # only our socket (superuser, peer) and 127.0.0.1 (the prefect role, password) get in
  as_pg tee "$DATA/pg_hba.conf" >/dev/null <<EOF
# written by deploy/postgres.sh
local   all      $OSUSER                 peer
host    $DB  $ROLE  127.0.0.1/32   scram-sha-256
EOF
  as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<'EOF'
# deploy/postgres.sh (listen_addresses, port and unix_socket_directories are set on the command line)
password_encryption = scram-sha-256
max_connections = 100
log_min_duration_statement = 5000
EOF
  if [ ! -s "$PWF" ]; then
    (umask 077; od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$PWF")
  fi
  chmod 600 "$PWF"
}

# the prefect role (password from the file, set again at every start) and database, pg_trgm in it
provision() {
  local pw; pw="$(cat "$PWF")"
  su_psql -d postgres <<EOF
SELECT 'CREATE ROLE $ROLE LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE')\gexec
ALTER ROLE $ROLE WITH LOGIN PASSWORD '$pw';
SELECT 'CREATE DATABASE $DB OWNER $ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB')\gexec
\c $DB
CREATE EXTENSION IF NOT EXISTS pg_trgm;
EOF
}

start() {
  local p="${1:-${MRIFOUNDRY_PG_PORT:-4290}}"
  have_pg || install
  if running && healthy; then echo "postgres already running (pid $(cat "$PIDF")) on 127.0.0.1:$(port)"; return 0; fi
  if [ -f "$PIDF" ]; then rm -f "$PIDF"; fi
  init
  echo "$p" >"$PGH/port"
  if healthy; then echo "127.0.0.1:$p already answers (another PostgreSQL?): set MRIFOUNDRY_PG_PORT"; exit 1; fi
  echo "starting postgres on 127.0.0.1:$p ($DATA, log: $LOG)"
  local cmd=("$(pgbin)/postgres" -D "$DATA" -c listen_addresses=127.0.0.1 -c "port=$p"
             -c "unix_socket_directories=$SOCK")
  if [ "$(id -u)" = 0 ] && [ "$OSUSER" != root ]; then
    cmd=(setpriv --reuid="$OSUSER" --regid="$(id -g "$OSUSER")" --init-groups -- "${cmd[@]}")
  fi
  (cd "$PGH" && exec setsid "${cmd[@]}" >>"$LOG" 2>&1 </dev/null) &
  echo $! >"$PIDF"
  for _ in $(seq 1 240); do
    if healthy; then
      provision
      echo "postgres healthy (pid $(cat "$PIDF")), database $DB on 127.0.0.1:$p"; return 0
    fi
    running || { echo "postgres died; see $LOG"; tail -20 "$LOG"; rm -f "$PIDF"; exit 1; }
    sleep 0.25
  done
  echo "postgres not healthy after 60 s; see $LOG"; exit 1
}

# fast shutdown (SIGINT: clients cut, clean checkpoint), then immediate (SIGQUIT), then SIGKILL.
# (The postmaster's children call setsid themselves: it is the postmaster that ends them.)
stop() {
  if [ ! -f "$PIDF" ]; then echo "no postgres pid file"; return 0; fi
  local pid sig; pid="$(cat "$PIDF")"
  # a stale PID file (host rebooted, PID reused): signal only our postmaster
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-D $DATA "; then
    rm -f "$PIDF"; echo "postgres not running (stale pid file removed)"; return 0
  fi
  for sig in INT QUIT; do
    kill -"$sig" "$pid" 2>/dev/null || break
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break 2; sleep 0.25; done
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PIDF"; echo "postgres stopped"
}

url() {
  [ -s "$PWF" ] || { echo "no cluster under $PGH yet: run $0 start" >&2; exit 1; }
  echo "postgresql+asyncpg://$ROLE:$(cat "$PWF")@127.0.0.1:$(port)/$DB"
}

# psql ARGS…: psql as the prefect role over TCP (the password from the file, never on a command line)
client() { PGPASSWORD="$(cat "$PWF")" "$(pgbin)/psql" -X -h 127.0.0.1 -p "$(port)" -U "$ROLE" -d "$DB" "$@"; }

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  status) if healthy; then echo "healthy at 127.0.0.1:$(port) (pid $(cat "$PIDF" 2>/dev/null || echo ?))"; else echo "not running"; exit 1; fi ;;
  url) url ;;
  psql) shift; client "$@" ;;
  # backup FILE: a consistent dump of the prefect database (pg_dump custom format; restore with pg_restore)
  backup) shift; f="${1:?usage: $0 backup FILE}"
          PGPASSWORD="$(cat "$PWF")" "$(pgbin)/pg_dump" -h 127.0.0.1 -p "$(port)" -U "$ROLE" -d "$DB" -Fc -f "$f"
          echo "dumped $DB to $f ($(stat -c %s "$f") bytes)" ;;
  *) echo "usage: $0 install | start [PORT] | stop | status | url | psql [ARGS] | backup FILE"; exit 2 ;;
esac
