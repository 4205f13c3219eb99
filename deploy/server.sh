#!/usr/bin/env bash
# Start/stop the local Prefect server on 127.0.0.1. Stopped by PID. Its database:
#   MRIFOUNDRY_PREFECT_DB=sqlite (default, the demo)  SQLite under MRIFOUNDRY_HOME/prefect
#   MRIFOUNDRY_PREFECT_DB=postgres                     our own PostgreSQL (deploy/postgres.sh), started
#                                                      first and stopped with the server
#   MRIFOUNDRY_PREFECT_DB=postgresql+asyncpg://…       a site's PostgreSQL server (docs/scale-out.md)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
PY="${PY:-$MRIFOUNDRY_REPO/.venv/bin/python}"
PIDF="$MRIFOUNDRY_HOME/run/server.pid"
LOG="$MRIFOUNDRY_HOME/logs/server.log"
DBF="$MRIFOUNDRY_HOME/run/server.backend"
PREFECT_DB="${MRIFOUNDRY_PREFECT_DB:-sqlite}"

healthy() { "$PY" - <<PYEOF 2>/dev/null
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen("$PREFECT_API_URL/health", timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
PYEOF
}

case "${1:-start}" in
  start)
    if [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null && healthy; then
      echo "prefect server already running (pid $(cat "$PIDF")) at $PREFECT_API_URL"; exit 0
    fi
    case "$PREFECT_DB" in
      sqlite) rm -f "$DBF" ;;
      postgres)
        "$here/postgres.sh" start
        PREFECT_API_DATABASE_CONNECTION_URL="$("$here/postgres.sh" url)"
        echo postgres >"$DBF" ;;
      postgresql+asyncpg://*) PREFECT_API_DATABASE_CONNECTION_URL="$PREFECT_DB"; rm -f "$DBF" ;;
      *) echo "MRIFOUNDRY_PREFECT_DB must be sqlite, postgres or a postgresql+asyncpg:// URL"; exit 2 ;;
    esac
    export PREFECT_API_DATABASE_CONNECTION_URL
    shown="$(printf '%s' "$PREFECT_DB" | sed -E 's#^([a-z0-9+]+://[^:/@]*):[^@]*@#\1:***@#')"  # no password on screen
    echo "starting prefect server at $PREFECT_API_URL on $shown (log: $LOG)"
    setsid "$PY" -m prefect server start --host 127.0.0.1 --port "$MRIFOUNDRY_PREFECT_PORT" >"$LOG" 2>&1 &
    echo $! >"$PIDF"
    for _ in $(seq 1 120); do
      if healthy; then echo "prefect server healthy (pid $(cat "$PIDF"))"; exit 0; fi
      kill -0 "$(cat "$PIDF")" 2>/dev/null || { echo "server died; see $LOG"; tail -20 "$LOG"; exit 1; }
      sleep 1
    done
    echo "server not healthy after 120 s; see $LOG"; exit 1 ;;
  stop)
    stop_by_pid "$PIDF" "prefect server"
    if [ "$(cat "$DBF" 2>/dev/null)" = postgres ]; then "$here/postgres.sh" stop; rm -f "$DBF"; fi ;;
  status)
    healthy && echo "healthy at $PREFECT_API_URL" || { echo "not running"; exit 1; } ;;
  *) echo "usage: $0 start|stop|status"; exit 2 ;;
esac
