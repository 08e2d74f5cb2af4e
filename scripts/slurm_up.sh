#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (munge, slurmctld, slurmd) for tests and CI.
# Idempotent: installs Debian's packages when missing, writes the config once per host, starts only
# the daemons that are not running, then waits until the node accepts jobs. Needs root.
# Usage: bash scripts/slurm_up.sh        (prints the partition name when the cluster is up)
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "slurm_up.sh: must run as root (it installs packages and starts daemons)" >&2
  exit 2
fi

missing=0
for bin in munged slurmctld slurmd sbatch squeue scontrol; do
  command -v "$bin" >/dev/null 2>&1 || missing=1
done
if [[ $missing -eq 1 ]]; then
  echo "slurm_up.sh: installing slurmd slurmctld munge slurm-client" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmd slurmctld munge slurm-client >/dev/null
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
PARTITION=debug

# munge: a key owned by munge, and the daemon running.
if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  su -s /bin/sh munge -c "/usr/sbin/munged --force"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf: rewritten only when the host or its size changed (the marker line records them).
MARKER="# us3l-bench single-node cluster: host=$HOST cpus=$CPUS"
if ! grep -qxF "$MARKER" "$CONF" 2>/dev/null; then
  mkdir -p "$CONF_DIR"
  tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
  cat >"$tmp" <<CONFEOF
$MARKER
ClusterName=us3l
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONFEOF
  chmod 0644 "$tmp"
  mv "$tmp" "$CONF"
  # A changed config needs fresh daemons.
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then kill "$(cat "$pidfile")"; fi
  done
  sleep 1
fi
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
running /run/slurmctld.pid || /usr/sbin/slurmctld
running /run/slurmd.pid || /usr/sbin/slurmd

# Wait until the controller answers and the node is idle (or already running jobs).
for _ in $(seq 60); do
  state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1 || true)
  case $state in
    idle*|mix*|alloc*|comp*) echo "$PARTITION"; exit 0 ;;
    drain*|down*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
echo "slurm_up.sh: Slurm did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
