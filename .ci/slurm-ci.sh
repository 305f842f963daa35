#!/usr/bin/env bash
# A real single-node SLURM cluster for CI (Debian 12, slurm 22.05), without systemd.
#
#   bash .ci/slurm-ci.sh up              # install if needed, start munged, slurmctld, slurmd
#   WITH_DBD=1 bash .ci/slurm-ci.sh up   # ... plus MariaDB and slurmdbd, so `sacct` works
#   bash .ci/slurm-ci.sh down            # stop every daemon this script started, by PID
#
# Must run as root. The daemons listen on 127.0.0.1 only: munged on its Unix socket, slurmctld
# and slurmd bound to localhost's address (CommunicationParameters=NoCtldInAddrAny,NoInAddrAny),
# MariaDB with --bind-address=127.0.0.1. The exception is slurmdbd (WITH_DBD=1 only): slurm
# 22.05 has no bind option for it, so it listens on port 6819 of every interface, where each
# request still needs a credential signed with this machine's munge key. One partition, `debug`,
# holds the node `localhost`, whose hardware line comes from `slurmd -C`.
#
# Without slurmdbd, `sacct` fails ("accounting storage is disabled"): snakemake's SLURM plugin
# must then poll with `--slurm-status-command squeue`, which works because MinJobAge=3600 keeps
# finished jobs visible to squeue for an hour. tests/e2e/test_slurm.py picks the right mode itself.
set -euo pipefail

ACTION=${1:-}
WITH_DBD=${WITH_DBD:-0}
CLUSTER=${SLURM_CI_CLUSTER:-ci}
PIDS=/run/slurm-ci              # pid files of the daemons this script started
LOGD=/var/log/slurm             # daemon logs and jobcomp.txt (one line per finished job)

say() { echo "[slurm-ci $(date +%T)] $*"; }

wait_for() {  # wait_for SECONDS command...: poll every 0.2 s until the command succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then say "timed out waiting for: $*"; return 1; fi
    sleep 0.2
  done
}

node_idle() { sinfo -h -n localhost -o %t | grep -qx idle; }

record_pid() {  # record_pid NAME PIDFILE: wait for a forking daemon's pid file, keep a copy
  wait_for 10 test -s "$2"
  cp "$2" "$PIDS/$1.pid"
  say "started $1 ($(cat "$2"))"
}

install_packages() {
  local pkgs="munge slurmctld slurmd slurm-client"
  [[ $WITH_DBD == 1 ]] && pkgs+=" slurmdbd mariadb-server"
  local have
  have=$(dpkg-query -W -f='${Status}\n' $pkgs 2>/dev/null \
    | grep -c '^install ok installed$' || true)
  if [[ $have -ne $(wc -w <<<"$pkgs") ]]; then
    say "apt-get install $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
}

start_munge() {
  mkdir -p /run/munge
  [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key /run/munge
  chmod 600 /etc/munge/munge.key
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  record_pid munged /run/munge/munged.pid
  wait_for 10 sh -c 'munge -n | unmunge'
}

write_slurm_conf() {
  local hw accounting
  hw=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
  if [[ $WITH_DBD == 1 ]]; then
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
  else
    accounting="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  cat >/etc/slurm/slurm.conf <<EOF
# Written by .ci/slurm-ci.sh: a single-node CI cluster, reachable on localhost only.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd.log
$accounting
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGD/jobcomp.txt
# Finished jobs stay visible to squeue/scontrol for an hour: --slurm-status-command squeue needs
# them for a while (>= 120 s), and tests/e2e/test_slurm.py reads each job's request back afterwards.
MinJobAge=3600
KillWait=5
InactiveLimit=0
# One fake GPU (a GRES count, no device behind it): jobs that ask for --gpus=1 get scheduled, so
# CI can check which jobs request a GPU. A job sees no CUDA device; device: auto falls back to CPU.
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 $hw Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmd drops a GPU without a File; /dev/null is never opened (TaskPlugin=task/none)
  echo "NodeName=localhost Name=gpu Count=1 File=/dev/null" >/etc/slurm/gres.conf
}

start_slurmdbd() {
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
    --pid-file=/run/mysqld/mysqld.pid >"$LOGD/mariadbd.log" 2>&1 </dev/null &
  echo $! >"$PIDS/mariadbd.pid"
  say "started mariadbd ($!)"
  wait_for 60 mariadb -e 'select 1'
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  install -m 600 /dev/stdin /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOGD/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmci
EOF
  rm -f /run/slurm/slurmdbd.pid
  slurmdbd
  record_pid slurmdbd /run/slurm/slurmdbd.pid
  wait_for 30 sacctmgr -n show cluster
  sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" \
    || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

up() {
  [[ $(id -u) == 0 ]] || { echo "slurm-ci.sh must run as root" >&2; exit 1; }
  if compgen -G "$PIDS/*.pid" >/dev/null; then
    say "daemons from an earlier 'up' are recorded: stopping them first"
    down
  fi
  install_packages
  mkdir -p "$PIDS" /run/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGD" /etc/slurm
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*   # fresh state: job ids restart at 1,
  : >"$LOGD/jobcomp.txt"                               # so old job records must go too
  start_munge
  write_slurm_conf
  [[ $WITH_DBD == 1 ]] && start_slurmdbd
  # slurmctld and slurmd fork; their pid files appear a moment after the command returns.
  rm -f /run/slurm/slurmctld.pid /run/slurm/slurmd.pid
  slurmctld
  record_pid slurmctld /run/slurm/slurmctld.pid
  slurmd -N localhost
  record_pid slurmd /run/slurm/slurmd.pid
  wait_for 60 node_idle
  say "cluster up: $(sinfo -h -o '%P %a %D %t %N %c CPUs %m MB')"
}

down() {
  local name pid
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    [[ -f $PIDS/$name.pid ]] || continue
    pid=$(cat "$PIDS/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      wait_for 30 sh -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDS/$name.pid"
    say "stopped $name ($pid)"
  done
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
}

case $ACTION in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down   (WITH_DBD=1 for accounting via slurmdbd + MariaDB)" >&2; exit 2 ;;
esac
