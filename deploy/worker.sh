#!/usr/bin/env bash
# Create the work pool, register the deployments of deploy/prefect.yaml, start/stop a process worker.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
PY="${PY:-$MRIFOUNDRY_REPO/.venv/bin/python}"
PREFECT="$MRIFOUNDRY_REPO/.venv/bin/prefect"
POOL="${MRIFOUNDRY_POOL:-mrifoundry-local}"
PIDF="$MRIFOUNDRY_HOME/run/worker.pid"
LOG="$MRIFOUNDRY_HOME/logs/worker.log"

case "${1:-start}" in
  deploy)
    "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 || "$PREFECT" work-pool create "$POOL" --type process
    cd "$MRIFOUNDRY_REPO"
    "$PREFECT" --no-prompt deploy --all --prefect-file deploy/prefect.yaml ;;
  start)
    if [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; then echo "worker already running"; exit 0; fi
    cd "$MRIFOUNDRY_REPO"
    setsid "$PREFECT" worker start --pool "$POOL" --type process >"$LOG" 2>&1 &
    echo $! >"$PIDF"
    sleep 3
    kill -0 "$(cat "$PIDF")" 2>/dev/null || { echo "worker died; see $LOG"; tail -20 "$LOG"; exit 1; }
    echo "worker started (pid $(cat "$PIDF"), pool $POOL, log $LOG)" ;;
  stop)
    stop_by_pid "$PIDF" "worker" ;;
  *) echo "usage: $0 deploy|start|stop"; exit 2 ;;
esac
