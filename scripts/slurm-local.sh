#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for sdflow's Slurm tests and for trying sweeps by hand:
#   bash scripts/slurm-local.sh start    # munge, MariaDB + slurmdbd (accounting: sacct), slurmctld, slurmd; partition "debug"
#   bash scripts/slurm-local.sh status   # sinfo
#   bash scripts/slurm-local.sh stop
# Needs root and Debian's packages (apt-get install slurm-wlm slurmdbd munge mariadb-server; .ci/run installs them).
# Accounting is there because submitit (sdflow's Slurm client) reads job states with sacct, as on real clusters.
# Everything it writes lives under $SDFLOW_SLURM_DIR (default /tmp/sdflow-slurm): configs, state, database, logs,
# the daemons' pid files. Every daemon listens on 127.0.0.1 only. No cgroups are needed (process tracking by
# /proc), so it runs in a container. A requeued job waits cred_expire seconds before it starts again (then the next backfill pass, every bf_interval): 5 and 1 here, not
# Slurm's 120 and 30, so a test of requeueing takes seconds.
set -euo pipefail
DIR=${SDFLOW_SLURM_DIR:-/tmp/sdflow-slurm}
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds, for SECONDS of wall time at most (or it exits 99)
  local deadline=$((SECONDS + $1)) status; shift
  while true; do
    status=0; "$@" >/dev/null 2>&1 || status=$?
    [ "$status" = 0 ] && return 0
    [ "$status" = 99 ] || [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.25
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

fail() {  # fail MESSAGE: say it, with the last lines of every daemon's log, and exit 1
  echo "slurm-local: $1" >&2
  for log in "$DIR"/log/*.log; do
    [ -f "$log" ] && { echo "--- $log" >&2; tail -n 8 "$log" >&2; }
  done
  exit 1
}

start_munge() {
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  local socket=/run/munge/munge.socket.2
  if ! [ -S "$socket" ] || ! munge -n >/dev/null 2>&1; then  # (a munged still stopping counts as none)
    wait_for 10 sh -c "! pgrep -x munged" || pkill -9 -x munged || true
    su -s /bin/sh munge -c "munged --force" 2>>"$DIR/log/munged-start.log" ||
      munged --force 2>>"$DIR/log/munged-start.log" || true
  fi
  wait_for 20 sh -c "munge -n | unmunge" || fail "munged did not start (every daemon authenticates through it)"
}

start_accounting() {
  local socket=/run/mysqld/mysqld.sock  # where the MySQL client library slurmdbd uses looks for it
  mkdir -p /run/mysqld
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mkdir -p "$DIR/mysql"
    mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket >/dev/null
  fi
  if ! mariadb-admin --socket="$socket" ping >/dev/null 2>&1; then
    rm -f "$socket"  # (one left by a MariaDB that is gone, e.g. the machine restarted: it answers nothing)
    mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$socket" --bind-address=127.0.0.1 --port=3306 \
      --pid-file="$DIR/run/mysqld.pid" --log-error="$DIR/log/mysqld.log" >/dev/null 2>&1 &
    wait_for 60 test -S "$socket" || fail "MariaDB did not start"
  fi
  mariadb --socket="$socket" -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'sdflow';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat > "$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=sdflow
EOF
  chmod 600 "$DIR/slurmdbd.conf"
  pgrep -x slurmdbd >/dev/null || slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
  wait_for 60 port_open 6819 || fail "slurmdbd did not start"
}

write_slurm_conf() {
  local host cpus memory
  host=$(hostname -s)
  cpus=$(nproc)
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat > "$CONF" <<EOF
ClusterName=sdflow
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MaxArraySize=1001
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  echo "$host"
}

start() {
  local tool
  for tool in slurmctld slurmd slurmdbd munged mariadbd pgrep; do
    command -v $tool >/dev/null || fail "$tool is not installed (apt-get install slurm-wlm slurmdbd munge mariadb-server procps)"
  done
  mkdir -p "$DIR"/{state,spool,log,run}
  start_munge
  start_accounting
  local host
  host=$(write_slurm_conf)
  # The commands find this config through SLURM_CONF; a link at the default path lets plain `sbatch` find it too.
  mkdir -p /etc/slurm
  [ -e /etc/slurm/slurm.conf ] || ln -s "$CONF" /etc/slurm/slurm.conf
  sacctmgr -i add cluster sdflow >/dev/null 2>&1 || true
  pgrep -x slurmctld >/dev/null || slurmctld -f "$CONF"
  pgrep -x slurmd >/dev/null || slurmd -f "$CONF"
  node_up() { pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null || return 99  # a daemon gave up: no wait
              timeout 10 scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
              timeout 10 sinfo -h -o "%t" | grep -qE "^(idle|mix|alloc)"; }
  wait_for 60 node_up || fail "the node did not come up: $(sinfo 2>&1 | tr '\n' ' ')"
  echo "slurm-local: up ($host, partition debug, accounting on; SLURM_CONF=$CONF)"
}

stop() {
  for daemon in slurmd slurmctld slurmdbd mariadbd; do
    pkill -x "$daemon" 2>/dev/null || true
  done
  for daemon in slurmd slurmctld slurmdbd mariadbd; do
    wait_for 20 sh -c "! pgrep -x $daemon" || pkill -9 -x "$daemon" 2>/dev/null || true
  done
  if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    rm -f /etc/slurm/slurm.conf
  fi
  echo "slurm-local: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: bash scripts/slurm-local.sh start|status|stop" >&2; exit 2 ;;
esac
