#!/usr/bin/env bash
# A throw-away one-node SLURM cluster for tests and demos: install | start | stop | status | env.
# Debian's slurm-wlm (slurmctld + slurmd) and munge, with a config of our own under
# SLURM_HOME: its own munge key and munged socket, its own ports, state, spool, logs and PID
# files; every daemon started with setsid in the foreground and stopped by PID. Never the
# Debian services (no systemd in a container; policy-rc.d denies them anyway).
#
#   SLURM_HOME        state folder (slurm.conf, munge key/socket, state, spool, logs, PIDs)
#                     default $MRIFOUNDRY_HOME/slurm
#   SLURM_CTLD_PORT   slurmctld port (or 1st argument of start)   default 6917 (Debian's 6817 + 100)
#   SLURMD_PORT       slurmd port    (or 2nd argument of start)   default 6918
#   SLURM_PARTITION   the one partition                           default mrifoundry
#
# Clients (sinfo, squeue, sbatch, scancel, dask-jobqueue) find this cluster through
# SLURM_CONF=$SLURM_HOME/etc/slurm.conf: `eval "$(deploy/slurm.sh env)"` sets it, and
# MRIFOUNDRY_SLURM_CLUSTER=deploy/dask/slurm-local.yaml so that `runner=slurm` runs on it.
# The node is this machine (its hostname, address 127.0.0.1) with the CPUs and memory that
# `slurmd -C` reports. Traps met on the way: docs/scale-out.md, "A local SLURM cluster".
set -euo pipefail
# callers may pass a bare environment (the test session does): the daemons and apt live in sbin
export PATH="${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}:/usr/sbin:/sbin"
here="$(cd "$(dirname "$0")" && pwd)"
: "${MRIFOUNDRY_REPO:=$(cd "$here/.." && pwd)}"
: "${MRIFOUNDRY_HOME:=$MRIFOUNDRY_REPO/var}"
: "${SLURM_HOME:=$MRIFOUNDRY_HOME/slurm}"
: "${SLURM_PARTITION:=mrifoundry}"
CONF="$SLURM_HOME/etc/slurm.conf"
MUNGE_SOCKET="$SLURM_HOME/munge/munge.socket"
RUN="$SLURM_HOME/run"
LOGS="$SLURM_HOME/log"
PACKAGES="slurmctld slurmd slurm-client munge"

have_all() { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged && command -v mungekey; } >/dev/null 2>&1

install() {
  if have_all; then echo "slurm present: $(slurmctld -V) ($(command -v slurmctld)), $(munged -V 2>&1 | awk '{print $1}')"; return 0; fi
  if [ "$(id -u)" != 0 ]; then echo "slurm missing; run as root or: apt-get install -y slurm-wlm munge"; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  # the packages' own services are never started here (policy-rc.d / no systemd); we run our own daemons
  local apt=(apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends slurm-wlm munge)
  "${apt[@]}" || { apt-get -o DPkg::Lock::Timeout=600 update && "${apt[@]}"; }
  have_all || { echo "slurm not installed ($PACKAGES)"; exit 1; }
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
client_env() { export SLURM_CONF="$CONF"; }

# the controller answers and the node is usable (idle, mixed or allocated; not down/unknown)
healthy() {
  client_env
  scontrol ping 2>/dev/null | grep -q "is UP" || return 1
  sinfo -h -N -o "%T" 2>/dev/null | grep -Eqx "idle|mixed|allocated|completing" || return 1
}

write_conf() {
  local ctld_port="$1" slurmd_port="$2" host node
  host="$(hostname -s)"
  # the node's real CPUs, sockets, cores and memory; a slurm.conf claiming more makes the node INVALID
  node="$(slurmd -C | head -1 | sed -e "s/^NodeName=[^ ]*//")"
  mkdir -p "$SLURM_HOME/etc" "$SLURM_HOME/state/ctld" "$SLURM_HOME/state/spool" "$RUN" "$LOGS"
  cat >"$CONF.tmp" <<EOF
# written by deploy/slurm.sh start: a one-node cluster on this machine (127.0.0.1)
ClusterName=mrifoundry
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$SLURM_HOME/state/ctld
SlurmdSpoolDir=$SLURM_HOME/state/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container without systemd: processes tracked through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# no slurmdbd, so no sacct: one line per finished job in a text file instead
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets 1 GB per CPU, not the whole node
DefMemPerCPU=1024
# bind to the node's address (127.0.0.1), not to every interface
CommunicationParameters=NoInAddrAny
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=600
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host $node State=UNKNOWN
PartitionName=$SLURM_PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

start_munge() {
  mkdir -p "$SLURM_HOME/munge"
  chmod 0700 "$SLURM_HOME/munge"
  [ -f "$SLURM_HOME/munge/munge.key" ] || mungekey --create --keyfile="$SLURM_HOME/munge/munge.key"
  chmod 0600 "$SLURM_HOME/munge/munge.key"
  if pid_alive "$RUN/munged.pid" && munge -n -S "$MUNGE_SOCKET" </dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
    return 0
  fi
  # --force: munged refuses a socket whose folders are not executable for all (the key's folder
  # is 0700, and so is a test's mkdtemp home); in the foreground it logs to stderr
  setsid munged --foreground --force --socket="$MUNGE_SOCKET" --key-file="$SLURM_HOME/munge/munge.key" \
    --pid-file="$SLURM_HOME/munge/munged.pid" --seed-file="$SLURM_HOME/munge/munged.seed" \
    >>"$LOGS/munged.log" 2>&1 </dev/null &
  echo $! >"$RUN/munged.pid"
  for _ in $(seq 1 40); do
    if munge -n -S "$MUNGE_SOCKET" </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; then return 0; fi
    kill -0 "$(cat "$RUN/munged.pid")" 2>/dev/null || { echo "munged died; see $LOGS/munged.log"; tail -n 20 "$LOGS/munged.log"; exit 1; }
    sleep 0.25
  done
  echo "munged not answering after 10 s; see $LOGS/munged.log"; exit 1
}

start() {
  local ctld_port="${1:-${SLURM_CTLD_PORT:-6917}}" slurmd_port="${2:-${SLURMD_PORT:-6918}}" host
  have_all || install
  mkdir -p "$RUN" "$LOGS"
  if pid_alive "$RUN/slurmctld.pid.setsid" && pid_alive "$RUN/slurmd.pid.setsid" && healthy; then
    echo "slurm already running (slurmctld pid $(cat "$RUN/slurmctld.pid.setsid"), SLURM_CONF=$CONF)"; return 0
  fi
  stop >/dev/null
  write_conf "$ctld_port" "$slurmd_port"
  start_munge
  host="$(hostname -s)"
  echo "starting slurm: slurmctld 127.0.0.1:$ctld_port, slurmd $host:$slurmd_port, partition $SLURM_PARTITION (logs: $LOGS)"
  client_env
  # -D: foreground (the setsid process is the daemon: its PID is the one we stop); -c: cold start,
  # no jobs from an earlier run; -i: ignore state files it cannot read
  setsid slurmctld -D -c -i -f "$CONF" >>"$LOGS/slurmctld.out" 2>&1 </dev/null &
  echo $! >"$RUN/slurmctld.pid.setsid"
  setsid slurmd -D -f "$CONF" -N "$host" >>"$LOGS/slurmd.out" 2>&1 </dev/null &
  echo $! >"$RUN/slurmd.pid.setsid"
  for _ in $(seq 1 240); do
    if healthy; then echo "slurm healthy: $(sinfo -h -o '%P %D %c %m %T' | head -1) (SLURM_CONF=$CONF)"; return 0; fi
    for d in slurmctld slurmd; do
      kill -0 "$(cat "$RUN/$d.pid.setsid")" 2>/dev/null || { echo "$d died; see $LOGS/$d.log"; tail -n 20 "$LOGS/$d.out" "$LOGS/$d.log" 2>/dev/null; stop >/dev/null; exit 1; }
    done
    sleep 0.25
  done
  echo "slurm not healthy after 60 s; see $LOGS"; scontrol ping || true; sinfo -N -l || true; exit 1
}

stop_one() {  # PIDFILE NAME
  local pidf="$1" name="$2" pid
  [ -f "$pidf" ] || return 0
  pid="$(cat "$pidf")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidf"; echo "$name stopped"
}

# the jobs' own processes (slurmstepd and the job scripts) are in process groups of their own,
# not slurmd's: cancel every job first, while slurmctld still answers, then stop the daemons
stop() {
  if [ -f "$CONF" ] && pid_alive "$RUN/slurmctld.pid.setsid"; then
    client_env
    scancel --partition="$SLURM_PARTITION" 2>/dev/null || true
    for _ in $(seq 1 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
  fi
  stop_one "$RUN/slurmd.pid.setsid" slurmd
  stop_one "$RUN/slurmctld.pid.setsid" slurmctld
  # any slurmstepd left (a job that did not end in time): those of this cluster only, by PID
  local p
  for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$CONF" && kill -KILL "$p" 2>/dev/null || true
  done
  stop_one "$RUN/munged.pid" munged
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  status) if healthy; then echo "healthy: $(sinfo -h -o '%P %D %c %m %T' | head -1) (SLURM_CONF=$CONF)"; else echo "not running"; exit 1; fi ;;
  # for `-p runner=slurm` on this cluster (a Prefect worker started after this eval has both)
  env) echo "export SLURM_CONF=$CONF MRIFOUNDRY_SLURM_CLUSTER=$here/dask/slurm-local.yaml" ;;
  *) echo "usage: $0 install | start [CTLD_PORT [SLURMD_PORT]] | stop | status | env"; exit 2 ;;
esac
