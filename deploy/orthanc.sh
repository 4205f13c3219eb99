#!/usr/bin/env bash
# A throw-away Orthanc PACS for tests and demos: install | start | upload | stop | status.
# Its own config (deploy/orthanc.json.template), its own storage folder, its own process
# group; health = REST /system answers; stopped by PID. Never the Debian service.
#
#   ORTHANC_HOME        state folder (config, storage, log, PID)   default $MRIFOUNDRY_HOME/orthanc
#   ORTHANC_DICOM_PORT  DICOM port (or 1st argument of start)       default 4242
#   ORTHANC_HTTP_PORT   REST port  (or 2nd argument of start)       default 8042
#   ORTHANC_AET         the PACS's AE title (called AE)             default ORTHANC
#   ORTHANC_CLIENT_AET  our AE title, allowed to C-FIND/C-GET/C-STORE from 127.0.0.1  default MRIFOUNDRY
#
# Orthanc 1.10 cannot bind to one address: its sockets listen on every interface. It is
# kept to loopback use by RemoteAccessAllowed=false (REST answers 127.0.0.1 only) and by
# DICOM accepting only the registered AE from host 127.0.0.1 (DicomCheckModalityHost).
set -euo pipefail
# callers may pass a bare environment (the test session does): Orthanc and apt live in sbin
export PATH="${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}:/usr/sbin:/sbin"
here="$(cd "$(dirname "$0")" && pwd)"
: "${MRIFOUNDRY_REPO:=$(cd "$here/.." && pwd)}"
: "${MRIFOUNDRY_HOME:=$MRIFOUNDRY_REPO/var}"
: "${ORTHANC_HOME:=$MRIFOUNDRY_HOME/orthanc}"
: "${ORTHANC_AET:=ORTHANC}"
: "${ORTHANC_CLIENT_AET:=MRIFOUNDRY}"
PIDF="$ORTHANC_HOME/orthanc.pid"
LOG="$ORTHANC_HOME/orthanc.log"
CONF="$ORTHANC_HOME/orthanc.json"

install() {
  if command -v Orthanc >/dev/null 2>&1; then echo "Orthanc present: $(command -v Orthanc)"; return 0; fi
  if [ "$(id -u)" != 0 ]; then echo "Orthanc missing; run as root or: apt-get install -y orthanc"; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  # the package's own service is never started here (policy-rc.d / no systemd); we run our own process
  apt-get install -y --no-install-recommends orthanc || { apt-get update && apt-get install -y --no-install-recommends orthanc; }
  command -v Orthanc >/dev/null 2>&1 || { echo "Orthanc not installed"; exit 1; }
}

port() { cat "$ORTHANC_HOME/http.port" 2>/dev/null || echo "${ORTHANC_HTTP_PORT:-8042}"; }
healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$(port)/system" >/dev/null 2>&1; }

start() {
  local dicom="${1:-${ORTHANC_DICOM_PORT:-4242}}" http="${2:-${ORTHANC_HTTP_PORT:-8042}}"
  command -v Orthanc >/dev/null 2>&1 || install
  mkdir -p "$ORTHANC_HOME/storage"
  if [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null && healthy; then
    echo "orthanc already running (pid $(cat "$PIDF"))"; return 0
  fi
  sed -e "s#@STORAGE@#$ORTHANC_HOME/storage#g" -e "s#@HTTP_PORT@#$http#g" -e "s#@DICOM_PORT@#$dicom#g" \
      -e "s#@AET@#$ORTHANC_AET#g" -e "s#@CLIENT_AET@#$ORTHANC_CLIENT_AET#g" \
      -e "s#@CLIENT_PORT@#${ORTHANC_CLIENT_PORT:-11112}#g" "$here/orthanc.json.template" >"$CONF"
  echo "$http" >"$ORTHANC_HOME/http.port"
  echo "starting orthanc: DICOM $ORTHANC_AET@127.0.0.1:$dicom, REST http://127.0.0.1:$http (log: $LOG)"
  # TCP_NODELAY=1: DCMTK turns Nagle off. With it on, each C-GET sub-operation waits for a
  # delayed ACK (~50 ms per instance on loopback: 3.1 s instead of 0.47 s for 60 instances)
  TCP_NODELAY=1 setsid "$(command -v Orthanc)" "$CONF" >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDF"
  for _ in $(seq 1 120); do
    if healthy; then echo "orthanc healthy (pid $(cat "$PIDF"))"; return 0; fi
    kill -0 "$(cat "$PIDF")" 2>/dev/null || { echo "orthanc died; see $LOG"; tail -20 "$LOG"; exit 1; }
    sleep 0.25
  done
  echo "orthanc not healthy after 30 s; see $LOG"; exit 1
}

stop() {
  if [ ! -f "$PIDF" ]; then echo "no orthanc pid file"; return 0; fi
  local pid; pid="$(cat "$PIDF")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PIDF"; echo "orthanc stopped"
}

# upload FOLDER: POST every file under FOLDER to REST /instances (files Orthanc refuses,
# e.g. cut or non-DICOM ones, are counted and skipped)
upload() {
  local dir="${1:?usage: $0 upload FOLDER}" ok=0 bad=0 f
  healthy || { echo "orthanc is not running"; exit 1; }
  while IFS= read -r -d '' f; do
    if curl -fsS --max-time 60 -o /dev/null -H "Content-Type: application/dicom" --data-binary "@$f" \
         "http://127.0.0.1:$(port)/instances" 2>/dev/null; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  done < <(find "$dir" -type f -print0)
  echo "uploaded $ok file(s), $bad refused"
}

case "${1:-}" in
  install) install ;;
  upload) shift; upload "$@" ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  status) if healthy; then echo "healthy at http://127.0.0.1:$(port)"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 install | start [DICOM_PORT [HTTP_PORT]] | upload FOLDER | stop | status"; exit 2 ;;
esac
