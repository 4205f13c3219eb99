# Environment of the local Prefect server, worker and flow runs. Sourced by the Makefile's
# recipes and deploy/*.sh. Everything lives under MRIFOUNDRY_HOME (default: ./var).
: "${MRIFOUNDRY_REPO:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${MRIFOUNDRY_HOME:=$MRIFOUNDRY_REPO/var}"
: "${MRIFOUNDRY_PREFECT_PORT:=4287}"
export MRIFOUNDRY_REPO MRIFOUNDRY_HOME MRIFOUNDRY_PREFECT_PORT
export PREFECT_HOME="$MRIFOUNDRY_HOME/prefect"
export PREFECT_API_URL="http://127.0.0.1:$MRIFOUNDRY_PREFECT_PORT/api"
export PREFECT_SERVER_API_HOST=127.0.0.1
export PREFECT_SERVER_API_PORT="$MRIFOUNDRY_PREFECT_PORT"
export PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///$PREFECT_HOME/prefect.db"
export PREFECT_LOCAL_STORAGE_PATH="$PREFECT_HOME/storage"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
export PREFECT_LOGGING_LEVEL="${PREFECT_LOGGING_LEVEL:-INFO}"
mkdir -p "$PREFECT_HOME" "$MRIFOUNDRY_HOME/run" "$MRIFOUNDRY_HOME/logs"

# stop_by_pid PIDFILE NAME: stop a process started with setsid (its whole group), by PID file
stop_by_pid() {
  local pidf="$1" name="$2" pid
  if [ ! -f "$pidf" ]; then echo "no $name pid file"; return 0; fi
  pid="$(cat "$pidf")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidf"; echo "$name stopped"
}
