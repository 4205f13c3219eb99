#!/usr/bin/env bash
# Start/stop the local Prefect server on 127.0.0.1 (SQLite under MRIFOUNDRY_HOME). Stopped by PID.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
PY="${PY:-$MRIFOUNDRY_REPO/.venv/bin/python}"
PIDF="$MRIFOUNDRY_HOME/run/server.pid"
LOG="$MRIFOUNDRY_HOME/logs/server.log"

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
    echo "starting prefect server at $PREFECT_API_URL (log: $LOG)"
    setsid "$PY" -m prefect server start --host 127.0.0.1 --port "$MRIFOUNDRY_PREFECT_PORT" >"$LOG" 2>&1 &
    echo $! >"$PIDF"
    for _ in $(seq 1 120); do
      if healthy; then echo "prefect server healthy (pid $(cat "$PIDF"))"; exit 0; fi
      kill -0 "$(cat "$PIDF")" 2>/dev/null || { echo "server died; see $LOG"; tail -20 "$LOG"; exit 1; }
      sleep 1
    done
    echo "server not healthy after 120 s; see $LOG"; exit 1 ;;
  stop)
    stop_by_pid "$PIDF" "prefect server" ;;
  status)
    healthy && echo "healthy at $PREFECT_API_URL" || { echo "not running"; exit 1; } ;;
  *) echo "usage: $0 start|stop|status"; exit 2 ;;
esac
